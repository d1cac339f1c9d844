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
    ],
    ids=["lora", "full-accum", "prompt-tuning", "token-budget"],
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
    assert plan.gradients_bytes == 4 * plan.trainable_params and plan.optimizer_bytes == 2 * plan.gradients_bytes
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
