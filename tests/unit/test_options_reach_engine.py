"""Every option of every method and objective reaches the engine (issue #25, item 1).

Registry-driven: every method class in ``tunekit.methods.registry()`` and every objective in
``tunekit.objectives.OBJECTIVES``, and every field of its pydantic model, needs a row in
:data:`ROWS`. A row is either

- :class:`Reaches`: a non-default value, a probe of what the engine built (the peft model and its
  config for a method; the trl ``*Config`` and trainer arguments for an objective) and the
  observation the value must give. The same probe on the build with the option at its default
  must give something else, so a row whose probe cannot tell the option apart fails too; or
- :class:`Exempt`: the option does not reach peft or trl (tunekit applies it itself), with the
  reason and a check of where it does take effect.

An option added without a row fails :func:`test_every_option_has_a_row`.

Methods are applied to the tiny llama for real (``peft_map.apply_method``). Objectives go through
``trainers.build_trainer`` for real, with the trl trainer classes replaced by a recorder: the trl
``*Config`` is built and validated by trl itself; only the trainer (data preparation) is skipped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import tunekit as tk
from tunekit.methods import registry
from tunekit.objectives import OBJECTIVES

# --- the table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reaches:
    """``Class(**base, option=value)`` must build something on which ``probe`` gives ``expect``
    (and ``Class(**base)`` something on which it does not)."""

    value: Any
    probe: Callable[[Any], Any]
    expect: Any
    what: str
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exempt:
    """The option is applied by tunekit, not by peft or trl; ``check(env)`` asserts where it takes effect."""

    reason: str
    check: Callable[[Any], None] | None = None


Row = Reaches | tuple[Reaches, ...] | Exempt


# --- probes of a method: ``b`` has .model (the wrapped model), .original (the model before), .method --


def _cfg(attr: str) -> Callable[[Any], Any]:
    def probe(b: Any) -> Any:
        value = getattr(b.model.peft_config["default"], attr)
        return sorted(value) if isinstance(value, (set, list)) else value

    return probe


def _tuner_layers(b: Any) -> list[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in b.model.named_modules() if isinstance(m, BaseTunerLayer)]


def _adapted(b: Any) -> list[str]:
    """Last name parts of the modules peft adapted."""
    return sorted({n.split(".")[-1] for n, _ in _tuner_layers(b)})


def _wrapped_parameters(b: Any) -> list[str]:
    """The modules whose bare parameter peft adapts (its ParamWrapper), last two name parts."""
    from peft.tuners.lora import ParamWrapper

    return sorted({".".join(n.split(".")[-2:]) for n, m in b.model.named_modules() if isinstance(m, ParamWrapper)})


def _first_lora(b: Any) -> Any:
    return next(m for _, m in _tuner_layers(b) if hasattr(m, "lora_A"))


def _lora_rank(b: Any) -> int:
    return int(_first_lora(b).lora_A["default"].weight.shape[0])


def _lora_scaling(b: Any) -> float:
    return round(float(_first_lora(b).scaling["default"]), 6)


def _lora_dropout(b: Any) -> float:
    return float(getattr(_first_lora(b).lora_dropout["default"], "p", 0.0))


def _dora_magnitudes(b: Any) -> bool:
    """DoRA: peft adds a learned magnitude vector to every adapted layer."""
    return any(len(getattr(m, "lora_magnitude_vector", {})) for _, m in _tuner_layers(b))


def _lora_init(b: Any) -> str:
    """How the LoRA weights started: 'pissa' (B non-zero and the base weight replaced by its residual),
    'gaussian' (A drawn N(0, 1/r): beyond kaiming-uniform's bound) or 'default'."""
    import torch

    name, layer = next((n, m) for n, m in _tuner_layers(b) if hasattr(m, "lora_A"))
    original = dict(b.original.named_modules())[name.removeprefix("base_model.model.")]
    base_changed = not torch.equal(layer.base_layer.weight, original.weight)
    b_nonzero = bool(layer.lora_B["default"].weight.detach().abs().sum() > 0)
    if base_changed and b_nonzero:
        return "pissa"
    a = layer.lora_A["default"].weight.detach()
    bound = 1 / math.sqrt(a.shape[1])  # kaiming_uniform_(a=sqrt(5)) draws within +-1/sqrt(fan_in)
    return "gaussian" if float(a.abs().max()) > bound * 1.0001 else "default"


def _trainable_blocks(b: Any) -> list[str]:
    """Which parts of the model's own weights train (Freeze): the first three name parts."""
    return sorted({".".join(n.split(".")[:3]) for n, p in b.model.named_parameters() if p.requires_grad})


def _adalora_schedule(attr: str) -> Callable[[Any], Any]:
    """AdaLoRA's schedule is set on the peft config by tunekit's step callback when training starts."""

    def probe(b: Any) -> Any:
        from tunekit.backends.hf.method_callbacks import method_callbacks

        for cb in method_callbacks(b.method, b.model):
            cb.on_train_begin(None, SimpleNamespace(max_steps=100), None)
        return getattr(b.model.peft_config["default"], attr)

    return probe


def _virtual_tokens(b: Any) -> int:
    return int(b.model.peft_config["default"].num_virtual_tokens)


_INIT_TEXT = "reverse the digits"


def _prompt_from_text(b: Any) -> bool:
    """PromptTuning(init_text=...): the virtual tokens start as the text's token embeddings."""
    import torch

    ids = b.tokenizer(_INIT_TEXT, add_special_tokens=False)["input_ids"]
    weight = b.model.prompt_encoder["default"].embedding.weight
    emb = b.model.get_input_embeddings().weight
    n = weight.shape[0]
    ids = (ids * (n // len(ids) + 1))[:n]
    return bool(torch.equal(weight, emb[ids]))


def _ptuning_encoder(b: Any) -> str:
    encoder = b.model.prompt_encoder["default"]
    return "lstm" if hasattr(encoder, "lstm_head") else "mlp"


# --- probes of an objective: ``t`` is the recorded trainer (.args: the trl config; .kwargs) -----------


def _arg(attr: str) -> Callable[[Any], Any]:
    return lambda t: getattr(t.args, attr)


def _rewards_given(t: Any) -> list[list[float]]:
    """What each reward function handed to trl returns for one completion 'abc'."""
    return [[float(x) for x in f(["p"], ["abc"])] for f in t.kwargs["reward_funcs"]]


def _length(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def _shortness(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    return [-float(len(c)) for c in completions]


# --- checks of exempt options: ``env`` has .tiny_llama ------------------------------------------------


def _check_quantize(env: Any) -> None:
    """LoRA(quantize=...) takes effect when the base loads (bitsandbytes, CUDA only): on this CPU machine the
    check before loading refuses it, and lets the same LoRA without quantize through."""
    import torch

    from tunekit.backends.hf.quantization import bnb_config, check_before_load

    check_before_load(tk.LoRA(), str(env.tiny_llama), torch.device("cpu"))
    with pytest.raises(tk.IncompatibleError, match=r"quantize='nf4'.*CUDA"):
        check_before_load(tk.LoRA(quantize="nf4"), str(env.tiny_llama), torch.device("cpu"))
    assert bnb_config(tk.LoRA(quantize="nf4").quantization or "", torch.float32).load_in_4bit
    assert bnb_config(tk.LoRA(quantize="int8").quantization or "", torch.float32).load_in_8bit


def _check_vision_part(part: str) -> Callable[[Any], None]:
    """LoRA(vision_tower=..., projector=...) choose the peft targets of a vision-language model (tunekit builds the
    list of modules: peft's 'all-linear' would adapt the image encoder too): on a tiny Qwen2-VL, 'lora' adapts the
    part's linear modules, 'full' trains it whole (peft's modules_to_save); a text-only model refuses them."""

    def check(env: Any) -> None:
        import tempfile

        from transformers import AutoModelForImageTextToText

        from tunekit.backends.hf.peft_map import apply_method
        from tunekit.backends.hf.vision import part_of
        from tunekit.testing import tiny_model

        path = tiny_model(tempfile.mkdtemp(), arch="qwen2_vl")

        def trained(**options: str) -> set[str]:
            model = apply_method(AutoModelForImageTextToText.from_pretrained(path), tk.LoRA(**options), [])
            return {
                ("lora" if "lora_" in n else "whole") for n, p in model.named_parameters() if p.requires_grad and
                part_of(n) == part
            }  # fmt: skip

        assert trained() == set()
        assert trained(**{part: "lora"}) == {"lora"}
        assert trained(**{part: "full"}) == {"whole"}
        with pytest.raises(tk.IncompatibleError, match=rf"{part}='lora'.*text-only model"):
            _ = tk.Tuner(env.tiny_llama, method=tk.LoRA(**{part: "lora"}), progress=False).model

    return check


def _prepared(env: Any, objective: tk.Objective, rows: list[dict[str, Any]]) -> Any:
    tuner = tk.Tuner(env.tiny_llama, objective=objective, training=tk.Training(device="cpu", cache=False))
    return tuner.prepare(rows)


def _check_train_on_prompt(env: Any) -> None:
    """SFT(train_on_prompt=True): tunekit's labels keep the prompt tokens (none masked), not only the answer."""
    rows = [{"prompt": "reverse: 1 2 3", "completion": "3 2 1"}]
    masked = [sum(x == -100 for x in labels) for labels in _prepared(env, tk.SFT(), rows).labels]
    kept = [sum(x == -100 for x in labels) for labels in _prepared(env, tk.SFT(train_on_prompt=True), rows).labels]
    assert masked[0] > 0 and kept == [0], (masked, kept)


_TWO_TURNS = [
    {
        "messages": [
            {"role": "user", "content": "1 2"},
            {"role": "assistant", "content": "2 1", "reasoning_content": "flip"},
            {"role": "user", "content": "3 4"},
            {"role": "assistant", "content": "4 3"},
        ]
    }
]


# A template that writes every turn's reasoning, history included (tunekit's ChatML drops earlier turns').
_REASONING_EVERYWHERE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.get('reasoning_content') %}<think>"
    "{{ m['reasoning_content'] }}</think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _supervised(env: Any, objective: tk.Objective, template: str | None = None) -> list[str]:
    tuner = tk.Tuner(
        env.tiny_llama, objective=objective, training=tk.Training(device="cpu", cache=False), template=template
    )
    enc = tuner.prepare(_TWO_TURNS)
    return [tuner.tokenizer.decode([t for t in labels if t != -100]) for labels in enc.labels]


def _check_train_on(env: Any) -> None:
    """SFT(train_on="last_assistant"): only the last assistant turn is supervised (both by default)."""
    assert sorted(_supervised(env, tk.SFT())) == ["4 3<|im_end|>", "<think>\nflip\n</think>\n\n2 1<|im_end|>"]
    assert _supervised(env, tk.SFT(train_on="last_assistant")) == ["4 3<|im_end|>"]


def _check_reasoning(env: Any) -> None:
    """SFT(reasoning=...): "drop" trains the answers alone, in one sequence; "keep" trains the reasoning in place
    (one sequence, history included); the default "inference" trains each user turn's answers with the history a
    server shows (earlier reasoning dropped), so two sequences here."""
    assert _supervised(env, tk.SFT(reasoning="drop")) == ["2 1<|im_end|>4 3<|im_end|>"]
    everywhere = _REASONING_EVERYWHERE
    assert _supervised(env, tk.SFT(reasoning="keep"), everywhere) == ["<think>flip</think>2 1<|im_end|>4 3<|im_end|>"]
    assert sorted(_supervised(env, tk.SFT(), everywhere)) == ["4 3<|im_end|>", "<think>flip</think>2 1<|im_end|>"]


def _check_add_eos(env: Any) -> None:
    """CausalLM(add_eos=False): tunekit's token ids of a text do not end with EOS (they do by default)."""
    rows = [{"text": "1 2 3 4"}]
    with_eos = _prepared(env, tk.CausalLM(), rows)
    without = _prepared(env, tk.CausalLM(add_eos=False), rows)
    eos = tk.Tuner(env.tiny_llama).tokenizer.eos_token_id
    assert with_eos.input_ids[0][-1] == eos
    assert without.input_ids[0][-1] != eos


def _online_rows(cls: str, beta_value: float) -> dict[tuple[str, str], Row]:
    """Rows of the options GRPO and RLOO share (``tk.OnlineRL``)."""
    return {
        (cls, "reward"): Reaches([_length, _shortness], _rewards_given, [[3.0], [-3.0]], "reward_funcs"),
        (cls, "reward_weights"): Reaches(
            [1.0, 2.0], _arg("reward_weights"), [1.0, 2.0], "reward_weights", base={"reward": [_length, _shortness]}
        ),
        (cls, "num_generations"): Reaches(4, _arg("num_generations"), 4, "num_generations"),
        (cls, "max_completion_length"): Reaches(16, _arg("max_completion_length"), 16, "max_completion_length"),
        (cls, "temperature"): Reaches(0.7, _arg("temperature"), 0.7, "temperature"),
        (cls, "beta"): Reaches(beta_value, _arg("beta"), beta_value, "beta (KL weight)"),
        (cls, "epsilon"): Reaches(0.3, _arg("epsilon"), 0.3, "epsilon (clip range)"),
        (cls, "num_iterations"): Reaches(2, _arg("num_iterations"), 2, "num_iterations"),
    }


_DPO_ARGS = lambda t: (type(t.args).__name__, t.args.loss_type)  # noqa: E731

ROWS: dict[tuple[str, str], Row] = {
    # --- methods ---
    ("LoRA", "r"): Reaches(4, _lora_rank, 4, "rank of lora_A"),
    ("LoRA", "alpha"): Reaches(4, _lora_scaling, 0.5, "layer scaling alpha / r (4 / 8)"),
    ("LoRA", "dropout"): Reaches(0.1, _lora_dropout, 0.1, "lora_dropout module's p"),
    ("LoRA", "target_modules"): Reaches(["q_proj", "v_proj"], _adapted, ["q_proj", "v_proj"], "adapted modules"),
    ("LoRA", "target_parameters"): Reaches(
        ["mlp.down_proj.weight"],
        _wrapped_parameters,
        ["mlp.down_proj"],
        "the parameter adapted by peft's ParamWrapper",
        base={"target_modules": ["q_proj"]},
    ),
    ("LoRA", "dora"): Reaches(True, _dora_magnitudes, True, "lora_magnitude_vector present"),
    ("LoRA", "rslora"): Reaches(
        True, _lora_scaling, 4.0, "layer scaling alpha / sqrt(r) (8 / 2)", base={"r": 4, "alpha": 8}
    ),
    ("LoRA", "init"): (
        Reaches("pissa", _lora_init, "pissa", "PiSSA: base weight replaced by its residual, B non-zero"),
        Reaches("gaussian", _lora_init, "gaussian", "lora_A drawn N(0, 1/r)"),
    ),
    ("LoRA", "quantize"): Exempt(
        "applied when the base model loads (quantization.load_quantized, bitsandbytes on CUDA), not by the peft "
        "config; tests/gpu/test_qlora.py trains it",
        _check_quantize,
    ),
    ("LoRA", "vision_tower"): Exempt(
        "tunekit lists a vision-language model's modules to adapt (peft_map._vision_targets) and to train whole "
        "(modules_to_save); tests/unit/test_vision_engine.py checks every combination",
        _check_vision_part("vision_tower"),
    ),
    ("LoRA", "projector"): Exempt(
        "as vision_tower: tunekit lists the projector's modules for peft", _check_vision_part("projector")
    ),
    ("Freeze", "last_layers"): Reaches(1, _trainable_blocks, ["model.layers.1"], "trainable parameters"),
    ("Freeze", "modules"): Reaches(["lm_head"], _trainable_blocks, ["lm_head.weight"], "trainable parameters"),
    ("LoHa", "r"): Reaches(4, _cfg("r"), 4, "LoHaConfig.r"),
    ("LoHa", "alpha"): Reaches(4, _cfg("alpha"), 4, "LoHaConfig.alpha"),
    ("LoHa", "rank_dropout"): Reaches(0.1, _cfg("rank_dropout"), 0.1, "LoHaConfig.rank_dropout"),
    ("LoHa", "module_dropout"): Reaches(0.1, _cfg("module_dropout"), 0.1, "LoHaConfig.module_dropout"),
    ("LoHa", "target_modules"): Reaches(["q_proj"], _adapted, ["q_proj"], "adapted modules"),
    ("LoKr", "r"): Reaches(4, _cfg("r"), 4, "LoKrConfig.r"),
    ("LoKr", "alpha"): Reaches(4, _cfg("alpha"), 4, "LoKrConfig.alpha"),
    ("LoKr", "rank_dropout"): Reaches(0.1, _cfg("rank_dropout"), 0.1, "LoKrConfig.rank_dropout"),
    ("LoKr", "module_dropout"): Reaches(0.1, _cfg("module_dropout"), 0.1, "LoKrConfig.module_dropout"),
    ("LoKr", "target_modules"): Reaches(["q_proj"], _adapted, ["q_proj"], "adapted modules"),
    ("LoKr", "decompose_both"): Reaches(True, _cfg("decompose_both"), True, "LoKrConfig.decompose_both"),
    ("LoKr", "decompose_factor"): Reaches(4, _cfg("decompose_factor"), 4, "LoKrConfig.decompose_factor"),
    ("AdaLoRA", "init_r"): Reaches(16, _cfg("init_r"), 16, "AdaLoraConfig.init_r"),
    ("AdaLoRA", "target_r"): Reaches(4, _cfg("target_r"), 4, "AdaLoraConfig.target_r"),
    ("AdaLoRA", "alpha"): Reaches(4, _cfg("lora_alpha"), 4, "AdaLoraConfig.lora_alpha"),
    ("AdaLoRA", "dropout"): Reaches(0.1, _cfg("lora_dropout"), 0.1, "AdaLoraConfig.lora_dropout"),
    ("AdaLoRA", "target_modules"): Reaches(["q_proj"], _adapted, ["q_proj"], "adapted modules"),
    ("AdaLoRA", "warmup_share"): Reaches(0.3, _adalora_schedule("tinit"), 30, "tinit of 100 steps, set at train begin"),
    ("AdaLoRA", "final_share"): Reaches(
        0.4, _adalora_schedule("tfinal"), 40, "tfinal of 100 steps, set at train begin"
    ),
    ("AdaLoRA", "update_every"): Reaches(3, _cfg("deltaT"), 3, "AdaLoraConfig.deltaT"),
    ("AdaLoRA", "beta1"): Reaches(0.5, _cfg("beta1"), 0.5, "AdaLoraConfig.beta1"),
    ("AdaLoRA", "beta2"): Reaches(0.5, _cfg("beta2"), 0.5, "AdaLoraConfig.beta2"),
    ("AdaLoRA", "orth_reg_weight"): Reaches(0.1, _cfg("orth_reg_weight"), 0.1, "AdaLoraConfig.orth_reg_weight"),
    ("VeRA", "r"): Reaches(16, _cfg("r"), 16, "VeraConfig.r"),
    ("VeRA", "dropout"): Reaches(0.1, _cfg("vera_dropout"), 0.1, "VeraConfig.vera_dropout"),
    ("VeRA", "d_initial"): Reaches(0.5, _cfg("d_initial"), 0.5, "VeraConfig.d_initial"),
    ("VeRA", "target_modules"): Reaches(["q_proj"], _adapted, ["q_proj"], "adapted modules"),
    ("VeRA", "projection_seed"): Reaches(5, _cfg("projection_prng_key"), 5, "VeraConfig.projection_prng_key"),
    ("VeRA", "save_projection"): Reaches(False, _cfg("save_projection"), False, "VeraConfig.save_projection"),
    ("OFT", "block_size"): Reaches(16, _cfg("oft_block_size"), 16, "OFTConfig.oft_block_size"),
    ("OFT", "target_modules"): Reaches(["q_proj"], _adapted, ["q_proj"], "adapted modules"),
    ("OFT", "module_dropout"): Reaches(0.1, _cfg("module_dropout"), 0.1, "OFTConfig.module_dropout"),
    ("OFT", "constrained"): Reaches(True, _cfg("coft"), True, "OFTConfig.coft"),
    ("OFT", "eps"): Reaches(1e-3, _cfg("eps"), 1e-3, "OFTConfig.eps", base={"constrained": True}),
    ("OFT", "block_share"): Reaches(True, _cfg("block_share"), True, "OFTConfig.block_share"),
    ("IA3", "target_modules"): Reaches(
        ["q_proj", "down_proj"], _adapted, ["down_proj", "q_proj"], "adapted modules (default: k, v, down)"
    ),
    ("IA3", "feedforward_modules"): Reaches(
        ["up_proj", "down_proj"],
        _cfg("feedforward_modules"),
        ["down_proj", "up_proj"],
        "IA3Config.feedforward_modules (default for llama: down_proj)",
        base={"target_modules": ["k_proj", "v_proj", "down_proj", "up_proj"]},
    ),
    ("PromptTuning", "num_virtual_tokens"): Reaches(4, _virtual_tokens, 4, "PromptTuningConfig.num_virtual_tokens"),
    ("PromptTuning", "init_text"): Reaches(
        _INIT_TEXT, _prompt_from_text, True, "virtual tokens = the text's embeddings"
    ),
    ("PrefixTuning", "num_virtual_tokens"): Reaches(4, _virtual_tokens, 4, "PrefixTuningConfig.num_virtual_tokens"),
    ("PrefixTuning", "projection"): Reaches(
        True, _cfg("prefix_projection"), True, "PrefixTuningConfig.prefix_projection"
    ),
    ("PrefixTuning", "projection_hidden_size"): Reaches(
        32, _cfg("encoder_hidden_size"), 32, "PrefixTuningConfig.encoder_hidden_size", base={"projection": True}
    ),
    ("PTuning", "num_virtual_tokens"): Reaches(4, _virtual_tokens, 4, "PromptEncoderConfig.num_virtual_tokens"),
    ("PTuning", "encoder"): Reaches("lstm", _ptuning_encoder, "lstm", "the prompt encoder built (an LSTM head)"),
    ("PTuning", "encoder_hidden_size"): Reaches(32, _cfg("encoder_hidden_size"), 32, "encoder_hidden_size"),
    ("PTuning", "encoder_layers"): Reaches(
        3, _cfg("encoder_num_layers"), 3, "PromptEncoderConfig.encoder_num_layers", base={"encoder": "lstm"}
    ),
    ("PTuning", "encoder_dropout"): Reaches(
        0.2, _cfg("encoder_dropout"), 0.2, "PromptEncoderConfig.encoder_dropout", base={"encoder": "lstm"}
    ),
    # --- objectives ---
    ("SFT", "train_on_prompt"): Exempt(
        "tunekit tokenises and masks SFT data itself (trl gets skip_prepare_dataset)", _check_train_on_prompt
    ),
    ("SFT", "train_on"): Exempt("tunekit masks SFT data itself", _check_train_on),
    ("SFT", "reasoning"): Exempt("tunekit renders SFT data itself", _check_reasoning),
    ("CausalLM", "add_eos"): Exempt("tunekit tokenises CausalLM text itself", _check_add_eos),
    ("RewardModeling", "center_rewards"): Reaches(
        0.01, _arg("center_rewards_coefficient"), 0.01, "RewardConfig.center_rewards_coefficient"
    ),
    ("DPO", "beta"): Reaches(0.3, _arg("beta"), 0.3, "DPOConfig.beta"),
    ("DPO", "loss"): (
        Reaches("ipo", _DPO_ARGS, ("DPOConfig", ["ipo"]), "DPOConfig.loss_type"),
        Reaches("hinge", _DPO_ARGS, ("DPOConfig", ["hinge"]), "DPOConfig.loss_type"),
        Reaches("simpo", _DPO_ARGS, ("CPOConfig", "simpo"), "CPOConfig.loss_type (SimPO)"),
    ),
    ("DPO", "label_smoothing"): Reaches(
        0.1, _arg("label_smoothing"), 0.1, "DPOConfig.label_smoothing", base={"loss": "robust"}
    ),
    ("DPO", "simpo_gamma"): Reaches(1.0, _arg("simpo_gamma"), 1.0, "CPOConfig.simpo_gamma", base={"loss": "simpo"}),
    ("KTO", "beta"): Reaches(0.3, _arg("beta"), 0.3, "KTOConfig.beta"),
    ("KTO", "desirable_weight"): Reaches(1.5, _arg("desirable_weight"), 1.5, "KTOConfig.desirable_weight"),
    ("KTO", "undesirable_weight"): Reaches(1.5, _arg("undesirable_weight"), 1.5, "KTOConfig.undesirable_weight"),
    ("KTO", "loss"): Reaches("apo_zero_unpaired", _arg("loss_type"), "apo_zero_unpaired", "KTOConfig.loss_type"),
    ("ORPO", "beta"): Reaches(0.3, _arg("beta"), 0.3, "ORPOConfig.beta"),
    **_online_rows("GRPO", 0.1),
    ("GRPO", "loss"): (
        Reaches("grpo", _arg("loss_type"), "grpo", "GRPOConfig.loss_type"),
        Reaches("dr_grpo", _arg("loss_type"), "dr_grpo", "GRPOConfig.loss_type"),
        Reaches("bnpo", _arg("loss_type"), "bnpo", "GRPOConfig.loss_type"),
    ),
    ("GRPO", "scale_rewards"): (
        Reaches("batch", _arg("scale_rewards"), "batch", "GRPOConfig.scale_rewards"),
        Reaches("none", _arg("scale_rewards"), "none", "GRPOConfig.scale_rewards"),
    ),
    **_online_rows("RLOO", 0.2),
    ("RLOO", "normalize_advantages"): Reaches(
        True, _arg("normalize_advantages"), True, "RLOOConfig.normalize_advantages"
    ),
}

# Options every instance of a class needs to build at all (online RL needs a reward).
CLASS_BASE: dict[str, dict[str, Any]] = {"GRPO": {"reward": [_length]}, "RLOO": {"reward": [_length]}}

CLASSES: dict[str, type[Any]] = {**registry(), **OBJECTIVES}


def _shown(value: Any) -> str:
    """A test id's value, the same in every process (a function's repr holds its address; mutmut reruns by id)."""
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return repr(value)


def _cases(kind: type[Any]) -> list[Any]:
    out = []
    for (cls, option), row in ROWS.items():
        if not issubclass(CLASSES[cls], kind) or isinstance(row, Exempt):
            continue
        for r in row if isinstance(row, tuple) else (row,):
            out.append(pytest.param(cls, option, r, id=f"{cls}.{option}={_shown(r.value)}"[:60]))
    return out


# --- the completeness test ---------------------------------------------------------------------------


def test_every_option_has_a_row():
    """Every field of every registered method and objective has a row (or an exemption with a reason)."""
    assert len(registry()) >= 12 and len(OBJECTIVES) >= 8  # the registries are what this test walks
    missing = [
        f"add a row for {name}.{option} in ROWS (tests/unit/test_options_reach_engine.py)"
        for name, cls in CLASSES.items()
        for option in cls.model_fields
        if (name, option) not in ROWS
    ]
    assert not missing, "\n".join(missing)
    stale = [f"{cls}.{option}" for cls, option in ROWS if cls not in CLASSES or option not in CLASSES[cls].model_fields]
    assert not stale, f"rows for options that do not exist: {stale}"
    for key, row in ROWS.items():
        if isinstance(row, Exempt):
            assert row.reason.strip(), f"{key}: an exemption needs a reason"
        for r in row if isinstance(row, tuple) else (row,):
            if isinstance(r, Reaches):
                default = CLASSES[key[0]].model_fields[key[1]].get_default(call_default_factory=True)
                assert r.value != default, f"{key}: the row's value {r.value!r} is the default"


# --- methods: apply_method on the tiny llama ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype="float32")
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def _apply(llama: Any, method: tk.Method) -> Any:
    import torch

    from tunekit.backends.hf.peft_map import apply_method

    original, tokenizer = llama
    torch.manual_seed(0)
    wrapped = apply_method(copy.deepcopy(original), method, [], tokenizer=tokenizer)
    return SimpleNamespace(model=wrapped, original=original, method=method, tokenizer=tokenizer)


@pytest.mark.parametrize(("cls", "option", "row"), _cases(tk.Method))
def test_method_option_reaches_peft(llama, cls, option, row):
    method_cls = CLASSES[cls]
    built = _apply(llama, method_cls(**{**row.base, option: row.value}))
    got = row.probe(built)
    assert got == row.expect, f"{cls}({option}={row.value!r}) did not reach peft: {row.what} is {got!r}"
    at_default = row.probe(_apply(llama, method_cls(**row.base)))
    assert at_default != row.expect, f"{cls}.{option}: the probe ({row.what}) cannot tell the option from its default"


# --- objectives: build_trainer with the trl trainer classes recorded ----------------------------------


class _Recorded:
    """Stands in for a trl trainer: keeps what tunekit handed it (the trl config in ``args``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.args = kwargs["args"]

    def remove_callback(self, callback: Any) -> None:
        pass


_TRL_TRAINERS = (
    "trl.DPOTrainer",
    "trl.KTOTrainer",
    "trl.RewardTrainer",
    "trl.GRPOTrainer",
    "trl.RLOOTrainer",
    "trl.experimental.cpo.CPOTrainer",
    "trl.experimental.orpo.ORPOTrainer",
)


def _build(llama: Any, objective: tk.Objective, tmp_path: Any) -> Any:
    import torch

    from tunekit.backends.hf.trainers import build_trainer

    model, tokenizer = llama
    return build_trainer(
        objective,
        model=model,
        tokenizer=tokenizer,
        train_dataset=None,
        eval_dataset=None,
        training=tk.Training(device="cpu", max_steps=1, batch_size=8),
        output_dir=str(tmp_path),
        precision="fp32",
        device=torch.device("cpu"),
        learning_rate=1e-3,
        callbacks=[],
    )


@pytest.mark.parametrize(("cls", "option", "row"), _cases(tk.Objective))
def test_objective_option_reaches_trl(llama, tmp_path, monkeypatch, cls, option, row):
    for name in _TRL_TRAINERS:
        monkeypatch.setattr(name, _Recorded)
    objective_cls = CLASSES[cls]
    base = {**CLASS_BASE.get(cls, {}), **row.base}
    built = _build(llama, objective_cls(**{**base, option: row.value}), tmp_path)
    assert isinstance(built, _Recorded), f"{cls} built {type(built).__name__}, not a recorded trl trainer"
    got = row.probe(built)
    assert got == row.expect, f"{cls}({option}={row.value!r}) did not reach trl: {row.what} is {got!r}"
    at_default = row.probe(_build(llama, objective_cls(**base), tmp_path))
    assert at_default != row.expect, f"{cls}.{option}: the probe ({row.what}) cannot tell the option from its default"


# --- exemptions: where they take effect ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [k for k, r in ROWS.items() if isinstance(r, Exempt) and r.check is not None], ids=".".join
)
def test_exempt_option_takes_effect_in_tunekit(tiny_llama, key):
    row = ROWS[key]
    assert isinstance(row, Exempt) and row.check is not None
    row.check(SimpleNamespace(tiny_llama=tiny_llama))
