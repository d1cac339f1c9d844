"""The trainer table (backends/hf/trainers.py) beyond each objective's options: what every trl config gets from
Training, which reference model each preference trainer gets, the group-size check of online RL, and what is undone
after a run. Written against the mutants of `nox -s mutation` (tests/MUTATION.md) the options test lets live."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf import trainers
from tunekit.backends.hf.trainers import build_trainer, release_trainer, tokens_seen

from .test_options_reach_engine import _TRL_TRAINERS, _Recorded


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype="float32"), AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture
def recorded(monkeypatch):
    for name in _TRL_TRAINERS:
        monkeypatch.setattr(name, _Recorded)


def _build(model: Any, tokenizer: Any, objective: tk.Objective, tmp_path: Any, **training: Any) -> Any:
    return build_trainer(
        objective,
        model=model,
        tokenizer=tokenizer,
        train_dataset=None,
        eval_dataset=training.pop("eval_dataset", None),
        training=tk.Training(**{"device": "cpu", "max_steps": 1, "batch_size": 8, "max_length": 96, **training}),
        output_dir=str(tmp_path),
        precision="fp32",
        device=torch.device("cpu"),
        learning_rate=1e-3,
        callbacks=[],
    )


OFFLINE = [tk.RewardModeling(), tk.DPO(), tk.DPO(loss="simpo"), tk.KTO(), tk.ORPO()]


@pytest.mark.parametrize("objective", OFFLINE, ids=lambda o: f"{o.name}-{getattr(o, 'loss', '')}")
def test_every_offline_trainer_gets_max_length_and_the_training_arguments(llama, recorded, tmp_path, objective):
    model, tokenizer = llama
    built = _build(model, tokenizer, objective, tmp_path)
    assert built.args.max_length == 96
    assert built.args.output_dir == str(tmp_path) and built.args.learning_rate == 1e-3
    assert built.args.max_steps == 1 and built.args.per_device_train_batch_size == 8


@pytest.mark.parametrize("objective", [tk.DPO(), tk.KTO()], ids=lambda o: o.name)
def test_a_whole_model_gets_a_frozen_reference_and_an_adapter_none(llama, recorded, tmp_path, objective):
    from tunekit.backends.hf.peft_map import apply_method

    model, tokenizer = llama
    full = _build(model, tokenizer, objective, tmp_path)
    ref = full.kwargs["ref_model"]
    assert ref is not None and ref is not model
    assert not any(p.requires_grad for p in ref.parameters())
    for (name, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), name
    import copy

    adapter = apply_method(copy.deepcopy(model), tk.LoRA(r=4), [])
    assert _build(adapter, tokenizer, objective, tmp_path).kwargs["ref_model"] is None  # the adapter disabled


def test_simpo_is_cpo_without_behaviour_cloning(llama, recorded, tmp_path):
    model, tokenizer = llama
    built = _build(model, tokenizer, tk.DPO(loss="simpo", simpo_gamma=0.7, label_smoothing=0.1, beta=0.3), tmp_path)
    args = built.args
    assert (args.loss_type, args.cpo_alpha, args.simpo_gamma, args.label_smoothing, args.beta) == (
        "simpo",
        0.0,
        0.7,
        0.1,
        0.3,
    )
    assert "ref_model" not in built.kwargs


def test_a_group_that_does_not_divide_the_batch_is_refused_with_two_ways_out(llama, recorded, tmp_path):
    model, tokenizer = llama
    with pytest.raises(tk.IncompatibleError) as info:
        _build(model, tokenizer, tk.GRPO(reward=[len], num_generations=3), tmp_path, batch_size=8, grad_accum=1)
    assert str(info.value) == (
        "Training(batch_size=8, grad_accum=1) with GRPO(num_generations=3): batch_size counts completions and "
        "batch_size * grad_accum (8) must be a multiple of num_generations; use batch_size=9 or num_generations=2"
    )
    with pytest.raises(tk.IncompatibleError, match=r"use batch_size=10 or num_generations=4\b"):
        _build(model, tokenizer, tk.RLOO(reward=[len], num_generations=5), tmp_path, batch_size=12, grad_accum=1)
    with pytest.raises(tk.IncompatibleError, match="evaluation samples a whole group per prompt"):
        _build(model, tokenizer, tk.GRPO(reward=[len], num_generations=4), tmp_path, batch_size=2, grad_accum=2,
               eval_dataset=[{"prompt": "x"}])  # fmt: skip
    built = _build(model, tokenizer, tk.GRPO(reward=[len], num_generations=4), tmp_path, batch_size=2, grad_accum=2)
    assert built.args.num_generations == 4


@pytest.mark.parametrize(
    ("n", "near", "expected"), [(8, 3, 2), (12, 5, 4), (12, 5, 4), (9, 2, 3), (7, 3, 7), (1, 4, 2)]
)
def test_divisor_is_the_divisor_of_n_nearest_to_the_wish(n, near, expected):
    assert trainers._divisor(n, near) == expected


def test_tokens_seen_takes_the_larger_count():
    assert tokens_seen(SimpleNamespace(_total_train_tokens=10, state=SimpleNamespace(num_input_tokens_seen=4))) == 10
    assert tokens_seen(SimpleNamespace(state=SimpleNamespace(num_input_tokens_seen=7))) == 7
    assert (
        tokens_seen(SimpleNamespace(_total_train_tokens=None, state=SimpleNamespace(num_input_tokens_seen=None))) == 0
    )


def test_release_trainer_drops_the_reference_adapter_and_trls_forward(llama, monkeypatch):
    import copy

    from tunekit.backends.hf.peft_map import apply_method

    model, _ = llama
    wrapped = apply_method(copy.deepcopy(model), tk.LoRA(r=4), [])
    wrapped.add_adapter("ref", copy.deepcopy(wrapped.peft_config["default"]))
    base = wrapped.get_base_model()
    wrapped.forward = lambda *a, **k: "patched"
    base.forward = lambda *a, **k: "patched"
    released: list[Any] = []
    monkeypatch.setattr(trainers, "release", released.append)
    trainer = object()
    release_trainer(trainer, wrapped)
    assert released == [trainer]
    assert "ref" not in wrapped.peft_config and "default" in wrapped.peft_config
    assert "forward" not in wrapped.__dict__ and "forward" not in base.__dict__
    plain = copy.deepcopy(model)
    plain.forward = lambda *a, **k: "patched"
    release_trainer(trainer, plain)
    assert "forward" not in plain.__dict__


def test_the_lm_head_bias_is_visible_through_the_trainable_tokens_wrapper_and_released_after(
    llama, recorded, tmp_path, monkeypatch
):
    import copy

    from tunekit.backends.hf.peft_map import apply_method

    model, tokenizer = llama
    wrapped = apply_method(copy.deepcopy(model), tk.LoRA(r=4), [5, 7])  # new template tokens: lm_head rows train
    head = wrapped.get_output_embeddings()
    assert type(head).__name__ == "TrainableTokensWrapper" and "bias" not in head.__dict__
    monkeypatch.setattr(trainers, "release", lambda trainer: None)
    _build(wrapped, tokenizer, tk.DPO(), tmp_path)
    assert "bias" in head.__dict__ and head.__dict__["bias"] is None  # what trl's fused head reads
    release_trainer(object(), wrapped)
    assert "bias" not in head.__dict__


def test_online_rl_keeps_the_prompt_columns_and_gets_the_eval_data(llama, recorded, tmp_path):
    model, tokenizer = llama
    evaluation = [{"prompt": "x"}]
    for objective in (tk.GRPO(reward=[len], num_generations=2), tk.RLOO(reward=[len], num_generations=2)):
        built = _build(model, tokenizer, objective, tmp_path, batch_size=2, eval_dataset=evaluation)
        assert built.args.remove_unused_columns is False  # the rows' other columns go to the reward functions
        assert built.kwargs["eval_dataset"] is evaluation
    dpo = _build(model, tokenizer, tk.DPO(), tmp_path, eval_dataset=evaluation)
    assert dpo.kwargs["eval_dataset"] is evaluation and dpo.kwargs["model"] is model
