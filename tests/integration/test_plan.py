"""tuner.plan(data): exact counts equal to what fit reports, sensible memory, printable, JSON-able."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunekit as tk
from tunekit.testing import first_task, reverse_task


@pytest.mark.parametrize(
    ("method", "training"),
    [
        (tk.LoRA(r=8), {"batch_size": 4, "epochs": 1}),
        (tk.Full(), {"batch_size": 3, "grad_accum": 2, "epochs": 2}),
        (tk.PromptTuning(num_virtual_tokens=4), {"batch_size": 4, "max_steps": 3}),
        (tk.LoRA(r=4), {"tokens_per_batch": 96, "max_length": 64, "epochs": 1}),
        (tk.AdaLoRA(init_r=4, target_r=2), {"batch_size": 4, "max_steps": 2}),
        (tk.LoHa(r=2), {"batch_size": 4, "max_steps": 2}),
        (tk.IA3(), {"batch_size": 4, "max_steps": 2}),
    ],
    ids=["lora", "full-accum", "prompt-tuning", "token-budget", "adalora", "loha", "ia3"],
)
def test_plan_matches_fit(tiny_llama: Path, method: tk.Method, training: dict) -> None:
    rows = reverse_task(22, seed=7)
    tuner = tk.Tuner(str(tiny_llama), method=method, training=tk.Training(device="cpu", **training))
    plan = tuner.plan(rows)
    assert tuner._loaded is None  # planned on the meta device: no weights loaded
    result = tuner.fit(rows)
    assert (plan.trainable_params, plan.total_params) == (result.trainable_params, result.total_params)
    assert (plan.examples, plan.tokens, plan.steps) == (result.num_examples, result.num_tokens, result.steps)
    assert plan.packing is (method.family != "prompt")
    # Memory: the parts add up, weights are the parameters in fp32, and it is not a device.
    assert plan.weights_bytes == 4 * plan.total_params
    tensors = sum(1 for p in tuner.model.parameters() if p.requires_grad)
    # AdamW: two fp32 moments a trainable parameter, and a fp32 step counter a trainable tensor
    assert plan.gradients_bytes == 4 * plan.trainable_params
    assert plan.optimizer_bytes == 2 * plan.gradients_bytes + 4 * tensors
    # Under 40 MiB: trl's chunked loss alone holds a (tokens x 32768) fp32 tile, here about 13 MiB (and more
    # fp32 temporaries on the CPU); its accuracy is tested in test_plan_accuracy.py.
    assert 0 < plan.activations_bytes < 40 * 2**20
    # On the CPU, fits compares with the RAM available now.
    import psutil

    assert plan.fits is True and 0 < plan.device_memory_bytes <= psutil.virtual_memory().total
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["memory"]["total"] == plan.total_bytes == sum(v for k, v in d["memory"].items() if k != "total")
    text = str(plan)
    assert f"{plan.trainable_params:,} trainable of {plan.total_params:,}" in text and "fits" in text


def test_plan_activations_grow_with_the_micro_batch_and_shrink_with_checkpointing(tiny_llama: Path) -> None:
    rows = first_task(40, seed=1)
    small = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu", batch_size=2)).plan(rows)
    big = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu", batch_size=16)).plan(rows)
    gc = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu", batch_size=16, gradient_checkpointing=True))
    assert big.micro_batch_tokens > small.micro_batch_tokens
    assert big.activations_bytes > small.activations_bytes
    assert gc.plan(rows).activations_bytes < big.activations_bytes


def test_plan_of_a_loaded_tuner_and_bad_data(tiny_llama: Path) -> None:
    tuner = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu"))
    _ = tuner.model  # loaded: the plan uses it as it is
    assert tuner.plan(first_task(5)).examples == 5
    with pytest.raises(tk.DatasetError, match="row 2"):
        tuner.plan([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 3}])


def test_plan_says_when_the_run_does_not_fit_in_ram(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunekit.backends.hf import planning

    monkeypatch.setattr(planning, "_device_memory", lambda device: 2**20)  # a machine with 1 MiB free
    plan = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu")).plan(first_task(8))
    assert plan.fits is False and plan.device_memory_bytes == 2**20
    assert "RAM available  1.00 MiB" in str(plan) and "fits           NO" in str(plan)
    # gradient_checkpointing="auto" turns checkpointing on for CUDA devices only, as fit does.
    assert plan.gradient_checkpointing is False


def _zero_markers(path: Path) -> Path:
    """Zero the ChatML markers' rows of both embeddings, as a base model that never trained its template (Llama 3)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    ids = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = 0
        model.get_output_embeddings().weight[ids] = 0
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("base", "extra_rows"),
    [("untrained-rows", 2), ("untrained-rows-tied", 2), ("new-tokens", 6), ("trained", 0)],
)
def test_plan_counts_the_token_rows_fit_trains(
    tmp_path: Path, task_texts: list[str], base: str, extra_rows: int, caplog: pytest.LogCaptureFixture
) -> None:
    """plan() builds the model as fit() does (models.build_model): template tokens the base never trained, and
    the template tokens tunekit adds to a base without a template, train under LoRA in both, so both count them."""
    from tunekit.testing import tiny_model

    tied = base.endswith("tied")
    path = tiny_model(
        tmp_path / base, texts=task_texts, chat_template=base != "new-tokens", tie_word_embeddings=tied, hidden_size=32
    )
    if base.startswith("untrained"):
        _zero_markers(path)
    rows = reverse_task(8, seed=2)
    training = tk.Training(device="cpu", batch_size=4, max_steps=2)
    plain = tk.Tuner(str(path), method=tk.LoRA(r=2, target_modules=["q_proj"]), training=training).plan(rows)
    tuner = tk.Tuner(str(path), method=tk.LoRA(r=2, target_modules=["q_proj"]), training=training)
    plan = tuner.plan(rows)
    assert tuner._loaded is None  # planned without loading the weights
    result = tuner.fit(rows)
    assert (plan.trainable_params, plan.total_params) == (result.trainable_params, result.total_params)
    # What those rows add: LoRA on q_proj alone trains 2 layers x r x (32 + 32); the rows train in each matrix.
    lora = 2 * 2 * (32 + 32)
    matrices = 1 if tied else 2
    assert plan.trainable_params == plain.trainable_params == lora + extra_rows * 32 * matrices


@pytest.mark.parametrize("method", [tk.Full(), tk.LoHa(r=2), tk.LoRA(r=2)], ids=["full", "loha", "lora"])
def test_plan_of_a_base_without_a_template(tmp_path: Path, task_texts: list[str], method: tk.Method) -> None:
    """tunekit adds its ChatML tokens to a base without a template: the plan grows the embeddings as fit does."""
    from tunekit.testing import tiny_model

    path = tiny_model(tmp_path / "no-template", texts=task_texts, chat_template=False, hidden_size=32)
    rows = reverse_task(8, seed=2)
    tuner = tk.Tuner(str(path), method=method, training=tk.Training(device="cpu", batch_size=4, max_steps=1))
    plan = tuner.plan(rows)
    result = tuner.fit(rows)
    assert (plan.trainable_params, plan.total_params) == (result.trainable_params, result.total_params)
