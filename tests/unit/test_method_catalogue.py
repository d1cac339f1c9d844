"""The method catalogue: every registered method has a translation, declares its capabilities, validates its
options in the user's words, and fails before loading anything when it cannot run."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import pytest

import tunekit as tk
from tunekit.methods import Method, registry
from tunekit.objectives import Objective

NAMES = list(registry())


# --- registry and translations ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_registered_method_has_a_backend_translation(name: str) -> None:
    from tunekit.backends.hf.peft_map import TRANSLATIONS

    assert registry()[name] in TRANSLATIONS, (
        f"{name} is registered in tunekit.methods but has no entry in TRANSLATIONS (tunekit/backends/hf/peft_map.py)"
    )


def test_translations_hold_only_registered_methods() -> None:
    from tunekit.backends.hf.peft_map import TRANSLATIONS

    assert set(TRANSLATIONS) == set(registry().values())


def test_a_method_without_translation_is_a_clear_error() -> None:
    from tunekit.backends.hf.peft_map import apply_method

    class Homemade(Method):
        pass

    with pytest.raises(tk.IncompatibleError, match="'hf' backend has no translation of the method Homemade"):
        apply_method(object(), Homemade(), [])


def test_the_catalogue_is_complete() -> None:
    assert set(NAMES) >= {
        "Full",
        "Freeze",
        "LoRA",
        "LoHa",
        "LoKr",
        "AdaLoRA",
        "VeRA",
        "OFT",
        "IA3",
        "PromptTuning",
        "PrefixTuning",
        "PTuning",
    }


# --- capabilities ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_declared(name: str) -> None:
    cls = registry()[name]
    assert isinstance(cls.mergeable, bool)
    assert isinstance(cls.supports_gradient_checkpointing, bool)
    assert isinstance(cls.needs_step_callback, bool)
    assert cls.objectives is None or (
        isinstance(cls.objectives, frozenset) and cls.objectives and all(isinstance(o, str) for o in cls.objectives)
    )
    assert cls.summary and cls.family != "other"
    if not cls.mergeable:
        assert cls.not_mergeable_because, f"{name} must say why it cannot be merged"
    assert cls.capabilities() == cls().describe()


def test_capabilities_of_the_families() -> None:
    assert [n for n in NAMES if registry()[n].needs_step_callback] == ["AdaLoRA"]
    assert not tk.PrefixTuning.supports_gradient_checkpointing
    for cls in (tk.PromptTuning, tk.PrefixTuning, tk.PTuning):
        assert not cls.mergeable and cls.is_adapter
        assert cls().supports("SFT") and cls().supports("CausalLM") and not cls().supports("DPO")
    for cls in (tk.LoRA, tk.LoHa, tk.LoKr, tk.AdaLoRA, tk.VeRA, tk.OFT, tk.IA3):
        assert cls.mergeable and cls.is_adapter and cls.objectives is None
    for cls in (tk.Full, tk.Freeze):
        assert not cls.mergeable and not cls.is_adapter


def test_training_for_turns_gradient_checkpointing_off_for_prefix_tuning(caplog: Any) -> None:
    from tunekit.backends.hf.peft_map import training_for

    training = tk.Training(gradient_checkpointing=True)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        adjusted = training_for(tk.PrefixTuning(), training)
    assert adjusted.gradient_checkpointing is False
    assert adjusted.model_copy(update={"gradient_checkpointing": True}) == training
    assert "PrefixTuning does not work with gradient checkpointing" in caplog.text
    assert training_for(tk.LoRA(), training) is training


class _FakeState:
    def __init__(self, max_steps: int, global_step: int = 0) -> None:
        self.max_steps = max_steps
        self.global_step = global_step


class _FakeAdaLoraModel:
    """The two things AdaLoraStep touches: the adapter's config and base_model.update_and_allocate."""

    active_adapter = "default"

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.peft_config = {"default": SimpleNamespace(total_step=1, tinit=0, tfinal=0)}
        self.steps: list[int] = []
        self.base_model = SimpleNamespace(update_and_allocate=self.steps.append)


@pytest.mark.parametrize(
    ("max_steps", "expected"),
    [(100, (100, 10, 20)), (1000, (1000, 100, 200)), (3, (3, 0, 0)), (1, (1, 0, 0))],
)
def test_adalora_schedule_is_placed_on_the_run(max_steps: int, expected: tuple[int, int, int]) -> None:
    from tunekit.backends.hf.method_callbacks import AdaLoraStep, method_callbacks

    model = _FakeAdaLoraModel()
    (callback,) = method_callbacks(tk.AdaLoRA(), model)
    assert isinstance(callback, AdaLoraStep)
    callback.on_train_begin(None, _FakeState(max_steps), None)
    config = model.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == expected
    assert config.tinit < config.total_step - config.tfinal or config.total_step == 1
    for step in range(3):
        callback.on_optimizer_step(None, _FakeState(max_steps, global_step=step), None)
    assert model.steps == [1, 2, 3]  # peft counts steps from 1


@pytest.mark.parametrize("name", [n for n in NAMES if n != "AdaLoRA"])
def test_other_methods_need_no_step_callback(name: str) -> None:
    from tunekit.backends.hf.method_callbacks import method_callbacks

    assert method_callbacks(registry()[name](), object()) == []


# --- validation in the user's words ------------------------------------------------------------------------
def message(cls: type[Method], **options: Any) -> str:
    with pytest.raises(tk.ConfigError) as info:
        cls(**options)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize(
    ("cls", "options", "expected"),
    [
        (
            tk.PromptTuning,
            {"num_virtual_tokens": 0},
            "PromptTuning(num_virtual_tokens=0): num_virtual_tokens must be at least 1 (typical values: 8 to 32)",
        ),
        (
            tk.PromptTuning,
            {"init_text": "  "},
            "PromptTuning(init_text='  '): init_text is empty; give a short description of the task, "
            "or None for a random start",
        ),
        (
            tk.PrefixTuning,
            {"num_virtual_tokens": -3},
            "PrefixTuning(num_virtual_tokens=-3): num_virtual_tokens must be at least 1 (typical values: 8 to 32)",
        ),
        (
            tk.PrefixTuning,
            {"projection_hidden_size": 64},
            "PrefixTuning(projection_hidden_size=64): projection_hidden_size is set but projection is False; "
            "set projection=True to train through the MLP, or leave projection_hidden_size out",
        ),
        (
            tk.PTuning,
            {"encoder": "gru"},
            "PTuning(encoder='gru'): encoder must be one of 'mlp' or 'lstm'",
        ),
        (
            tk.PTuning,
            {"encoder_layers": 1},
            "PTuning(encoder_layers=1): encoder_layers and encoder_dropout apply to the LSTM encoder only; "
            "set encoder='lstm', or leave them at their defaults with the MLP encoder",
        ),
        (tk.LoHa, {"r": 0}, "LoHa(r=0): r must be at least 1 (typical values: 4, 8, 16)"),
        (tk.LoHa, {"rank_dropout": 1.5}, "LoHa(rank_dropout=1.5): rank_dropout must be less than 1"),
        (
            tk.LoKr,
            {"decompose_factor": 0},
            "LoKr(decompose_factor=0): decompose_factor must be -1 (automatic) or a positive whole number, e.g. 4 or 8",
        ),
        (
            tk.LoKr,
            {"target_modules": "q_proj"},
            "LoKr(target_modules='q_proj'): target_modules must be 'all-linear' or a list of module names, "
            "e.g. ['q_proj']",
        ),
        (
            tk.AdaLoRA,
            {"init_r": 4, "target_r": 8},
            "AdaLoRA(init_r=4, target_r=8): target_r (8) must not exceed init_r (4): the budget only shrinks; "
            "e.g. init_r=12, target_r=8",
        ),
        (
            tk.AdaLoRA,
            {"warmup_share": 0.5, "final_share": 0.5},
            "AdaLoRA(warmup_share=0.5, final_share=0.5): warmup_share + final_share must leave steps for pruning "
            "(got 0.5 + 0.5); e.g. warmup_share=0.1, final_share=0.2",
        ),
        (tk.AdaLoRA, {"beta1": 1.0}, "AdaLoRA(beta1=1.0): beta1 must be less than 1"),
        (tk.VeRA, {"r": 0}, "VeRA(r=0): r must be at least 1 (VeRA wants a high rank, typically 256)"),
        (tk.VeRA, {"d_initial": 0}, "VeRA(d_initial=0): d_initial must be greater than 0"),
        (tk.OFT, {"block_size": 0}, "OFT(block_size=0): block_size must be at least 1"),
        (
            tk.OFT,
            {"eps": 1e-3},
            "OFT(eps=0.001): eps only applies to constrained OFT; set constrained=True, or leave eps out",
        ),
        (
            tk.IA3,
            {"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
            "IA3(target_modules=['k_proj'], feedforward_modules=['down_proj']): feedforward_modules ['down_proj'] "
            "are not in target_modules; every feed-forward module must also be a target, "
            "e.g. target_modules=['k_proj', 'down_proj']",
        ),
        (
            tk.IA3,
            {"target_modules": "all_linear"},
            "IA3(target_modules='all_linear'): target_modules must be 'all-linear' (with a hyphen) or a list of "
            "module names",
        ),
        (
            tk.Freeze,
            {"last_layers": 0},
            "Freeze(last_layers=0): last_layers must be at least 1; to train every weight use tk.Full()",
        ),
        (tk.Freeze, {"modules": []}, "Freeze(modules=[]): modules is empty; leave it out (None)"),
        (
            tk.Freeze,
            {"modules": "lm_head"},
            "Freeze(modules='lm_head'): modules must be a list of module names, e.g. ['lm_head']",
        ),
        (
            tk.LoRA,
            {"quantize": "4bit"},
            "LoRA(quantize='4bit'): quantize must be 'nf4' (4-bit QLoRA), 'int8' (8-bit) or None; did you mean 'nf4'?",
        ),
        (
            tk.LoRA,
            {"init": "pissa", "quantize": "nf4"},
            "LoRA(init='pissa', quantize='nf4'): PiSSA initialisation reads the full-precision base weights, "
            "which a quantized base does not have; use init='default' with quantize, or quantize=None with "
            "init='pissa'",
        ),
    ],
)
def test_invalid_options_name_the_value_and_the_fix(cls: type[Method], options: dict[str, Any], expected: str) -> None:
    assert message(cls, **options) == expected


@pytest.mark.parametrize(
    ("cls", "typed", "meant"),
    [
        (tk.PromptTuning, "prompt_tuning_init_text", "init_text"),
        (tk.PrefixTuning, "prefix_projection", "projection"),
        (tk.PTuning, "encoder_reparameterization_type", "encoder"),
        (tk.AdaLoRA, "tinit", "warmup_share"),
        (tk.AdaLoRA, "r", "init_r"),
        (tk.VeRA, "projection_prng_key", "projection_seed"),
        (tk.OFT, "oft_block_size", "block_size"),
        (tk.OFT, "coft", "constrained"),
        (tk.LoRA, "load_in_4bit", "quantize"),
        (tk.Freeze, "num_layers", "last_layers"),
    ],
)
def test_peft_option_names_suggest_the_tunekit_name(cls: type[Method], typed: str, meant: str) -> None:
    assert message(cls, **{typed: 1}).endswith(f"unknown option {typed!r}; did you mean {meant!r}?")


def test_derived_defaults() -> None:
    assert tk.LoHa(r=4).alpha == 4 and tk.LoKr(r=16).alpha == 16
    assert tk.AdaLoRA(init_r=6, target_r=2).alpha == 12
    assert tk.Freeze().last_layers == 2 and tk.Freeze(modules=["lm_head"]).last_layers is None
    assert tk.Freeze(last_layers=1, modules=["lm_head"]).modules == ["lm_head"]
    assert tk.PTuning(encoder="lstm", encoder_layers=1, encoder_dropout=0.1).encoder_layers == 1


# --- failing before anything loads -----------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to read model weights fails the test."""
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    for auto in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", refuse)


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_qlora_on_cpu_fails_before_loading(tiny_dirs: Any, no_loading: None, quantize: str) -> None:
    tuner = tk.Tuner(tiny_dirs["chat"], method=tk.LoRA(quantize=quantize), training=tk.Training(device="cpu"))
    with pytest.raises(tk.IncompatibleError) as info:
        tuner.model  # noqa: B018
    text = str(info.value)
    assert text.startswith(f"LoRA(quantize={quantize!r}) needs a CUDA GPU")
    assert "device is 'cpu'" in text and "without quantize" in text


def test_qlora_without_bitsandbytes_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    from tunekit.backends.hf.quantization import check_before_load

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(tk.MissingDependencyError, match=r"needs bitsandbytes, .*: pip install bitsandbytes"):
        check_before_load(tk.LoRA(quantize="nf4"), "some/model", torch.device("cuda"))
    check_before_load(tk.LoRA(), "some/model", torch.device("cpu"))  # nothing to check without quantize


def test_qlora_with_an_unquantized_model_object_is_incompatible(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tunekit.backends.hf import quantization

    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda n, *a: object())
    with pytest.raises(tk.IncompatibleError, match="model object that is not quantized"):
        quantization.check_before_load(tk.LoRA(quantize="int8"), torch.nn.Linear(2, 2), torch.device("cuda"))


@pytest.mark.parametrize(
    ("objective", "auto", "extra"),
    [
        (tk.SFT(), "AutoModelForCausalLM", {}),
        (tk.RewardModeling(), "AutoModelForSequenceClassification", {"num_labels": 1}),
    ],
)
def test_qlora_loads_the_objectives_head_and_keeps_a_score_head_unquantized(
    monkeypatch: pytest.MonkeyPatch, objective: Objective, auto: str, extra: dict[str, Any]
) -> None:
    """A QLoRA reward model is a sequence classifier with one label (it used to load as a causal LM), and its new
    score head stays in the compute dtype so that it can train. (The real load runs in tests/gpu/test_qlora.py.)"""
    import torch
    import transformers

    from tunekit.backends.hf.models import head_kwargs
    from tunekit.backends.hf.quantization import load_quantized

    calls: list[tuple[str, dict[str, Any]]] = []
    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        fake = classmethod(lambda cls, ref, name=name, **kw: calls.append((name, kw)) or "model")
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", fake)
    out = load_quantized(
        "some/model",
        tk.LoRA(quantize="nf4"),
        compute_dtype=torch.bfloat16,
        device=torch.device("cuda", 1),
        trust_remote_code=False,
        **head_kwargs(objective),
    )
    assert out == "model" and [c[0] for c in calls] == [auto]
    kwargs = calls[0][1]
    assert {k: kwargs[k] for k in extra} == extra and kwargs["device_map"] == {"": 1}
    skip = kwargs["quantization_config"].llm_int8_skip_modules
    assert skip == (["score", "classifier"] if extra else None)


class Pairs(Objective):
    """A stand-in for a pairwise objective (the prompt methods do not support it)."""

    data_formats: ClassVar[frozenset[str]] = frozenset({"preference"})


@pytest.mark.parametrize("cls", [tk.PromptTuning, tk.PrefixTuning, tk.PTuning])
def test_unsupported_objective_fails_at_construction(cls: type[Method], no_loading: None) -> None:
    with pytest.raises(tk.IncompatibleError, match=rf"^{cls.__name__} does not support the Pairs objective"):
        tk.Tuner("some/model", method=cls(), objective=Pairs())


@pytest.mark.parametrize("name", [n for n in NAMES if not registry()[n].mergeable])
def test_merge_of_a_non_mergeable_method_fails_before_loading(name: str, no_loading: None) -> None:
    tuner = tk.Tuner("some/model", method=registry()[name]())
    with pytest.raises(tk.IncompatibleError) as info:
        tuner.merge()
    assert str(info.value).startswith(f"{name} cannot be merged: ")
    assert str(info.value) == f"{name} cannot be merged: {registry()[name].not_mergeable_because}"
    assert tuner._loaded is None


# --- targets that match nothing name what the model has ----------------------------------------------------
@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (tk.LoRA(target_modules=["qproj"]), r"^LoRA\(target_modules=\['qproj'\]\): no module named \['qproj'\]"),
        (tk.LoHa(target_modules=["q_proj", "attn"]), r"^LoHa\(target_modules=\['q_proj', 'attn'\]\): no module named"),
        (tk.LoKr(target_modules=["mlp_up"]), r"^LoKr\(target_modules=\['mlp_up'\]\)"),
        (tk.AdaLoRA(target_modules=["query"]), r"^AdaLoRA\(target_modules=\['query'\]\)"),
        (tk.VeRA(target_modules=["value"]), r"^VeRA\(target_modules=\['value'\]\)"),
        (tk.OFT(target_modules=["dense"]), r"^OFT\(target_modules=\['dense'\]\)"),
        (tk.IA3(target_modules=["k_proj", "ffn"], feedforward_modules=["ffn"]), r"^IA3\(target_modules="),
    ],
)
def test_targets_matching_nothing_name_the_models_modules(tiny_dirs: Any, method: Method, expected: str) -> None:
    with pytest.raises(tk.ConfigError, match=expected) as info:
        tk.Tuner(tiny_dirs["chat"], method=method, training=tk.Training(device="cpu")).model  # noqa: B018
    assert str(info.value).endswith(
        "in this model; its linear modules are ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', "
        "'v_proj']"
    )


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            tk.Freeze(last_layers=3),
            "Freeze(last_layers=3): this model has 2 blocks (model.layers); use last_layers=2 or fewer, "
            "or tk.Full() to train every weight",
        ),
        (tk.Freeze(modules=["lm_head", "head"]), "Freeze(modules=['lm_head', 'head']): no module matches 'head'; "),
        (
            tk.IA3(target_modules=["k_proj", "v_proj"], feedforward_modules=["v_proj"]),
            None,  # valid: v_proj exists
        ),
    ],
)
def test_freeze_choices_that_match_nothing(tiny_dirs: Any, method: Method, expected: str | None) -> None:
    tuner = tk.Tuner(tiny_dirs["chat"], method=method, training=tk.Training(device="cpu"))
    if expected is None:
        assert tuner.model is not None
        return
    with pytest.raises(tk.ConfigError) as info:
        tuner.model  # noqa: B018
    assert str(info.value).startswith(expected)
    if "modules" in expected:
        assert "'lm_head'" in str(info.value) and "'q_proj'" in str(info.value)


def test_ia3_auto_targets_on_an_unknown_architecture(tiny_dirs: Any) -> None:
    from transformers import AutoModelForCausalLM

    from tunekit.backends.hf.peft_map import apply_method

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["chat"])
    model.config.model_type = "homegrown"
    with pytest.raises(tk.ConfigError, match=r"^IA3\(target_modules='auto'\): peft has no default IA3 targets for"):
        apply_method(model, tk.IA3(), [])


@pytest.mark.parametrize(
    ("method", "trained", "frozen"),
    [
        (tk.Freeze(), ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"], ["lm_head"]),
        (tk.Freeze(last_layers=1), ["model.layers.1.mlp.up_proj.weight"], ["model.layers.0.", "lm_head", "embed"]),
        (tk.Freeze(modules=["lm_head", "model.norm"]), ["lm_head.weight", "model.norm.weight"], ["layers", "embed"]),
        (tk.Freeze(modules=["model.layers.*.mlp"]), ["model.layers.0.mlp.down_proj.weight"], ["self_attn", "lm_head"]),
    ],
)
def test_freeze_trains_only_what_it_names(
    tiny_dirs: Any, method: Method, trained: list[str], frozen: list[str]
) -> None:
    model = tk.Tuner(tiny_dirs["chat"], method=method, training=tk.Training(device="cpu")).model
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    for name in trained:
        assert grads[name], name
    for part in frozen:
        assert not any(g for n, g in grads.items() if part in n), part


# --- the command line --------------------------------------------------------------------------------------
def test_cli_methods_lists_every_method_with_its_capabilities(capsys: pytest.CaptureFixture[str]) -> None:
    from tunekit.cli import main

    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == NAMES
    for r in rows:
        cls = registry()[r["method"]]
        assert {k: r[k] for k in cls.capabilities()} == cls.capabilities()
        assert r["summary"] == cls.summary and r["family"] == cls.family
    assert main(["methods"]) == 0
    table = capsys.readouterr().out
    for name in NAMES:
        assert name in table
    assert "mergeable" in table and "per-step call" in table and "CausalLM, SFT" in table


def test_prompt_tuning_starts_from_the_embeddings_of_its_init_text(tiny_dirs: Any) -> None:
    import torch

    tuner = tk.Tuner(
        tiny_dirs["chat"],
        method=tk.PromptTuning(num_virtual_tokens=7, init_text="Reverse the digits"),
        training=tk.Training(device="cpu"),
    )
    model = tuner.model
    ids = tuner.tokenizer("Reverse the digits", add_special_tokens=False)["input_ids"]
    assert 1 < len(ids) < 7
    expected = model.get_base_model().get_input_embeddings().weight[(ids * 7)[:7]]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected, rtol=0, atol=0)
    # The saved adapter says nothing about a tokenizer path (peft's TEXT init would need one to reload).
    assert model.peft_config["default"].prompt_tuning_init == "RANDOM"
