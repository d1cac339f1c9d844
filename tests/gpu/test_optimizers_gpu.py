"""Optimizers and activation offloading on a CUDA GPU (``pytest -m gpu``, ``nox -s gpu``).

- ``Training(activation_offload=True)``: trl's offloading moves the saved activations to CPU memory; the loss is the
  same as without it (offloading changes where tensors live, not what is computed) and the peak GPU memory of a
  long-sequence step is lower.
- ``paged_adamw_8bit`` and ``adamw_8bit`` (bitsandbytes) train the toy task and ``plan()`` counts their state.
"""

from __future__ import annotations

import gc

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

pytestmark = pytest.mark.gpu


def training(**kw):
    base = {"max_length": 384, "precision": "fp32", "device": "cuda", "learning_rate": 3e-3, "log_every": 1}
    return tk.Training(**{**base, **kw})


def losses(result):
    return [h["loss"] for h in result.history if "loss" in h]


def _peak(tuner, rows):
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = tuner.fit(rows)
    return result, torch.cuda.max_memory_allocated()


def test_activation_offload_same_losses_less_gpu_memory(tiny_llama):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    rows = reverse_task(32, seed=11, length=(120, 160))  # long rows: activations dominate the step's memory
    kw = {"max_steps": 4, "batch_size": 16, "gradient_checkpointing": False, "lr_scheduler": "constant"}
    plain, plain_peak = _peak(tk.Tuner(tiny_llama, method=tk.Full(), training=training(**kw)), rows)
    offloaded = tk.Tuner(tiny_llama, method=tk.Full(), training=training(activation_offload=True, **kw))
    plan = offloaded.plan(rows)
    assert plan.activation_offload is True
    head = offloaded.model.get_output_embeddings()
    hooks = (dict(head._forward_pre_hooks), dict(head._forward_hooks))
    result, offload_peak = _peak(offloaded, rows)
    assert losses(result) == pytest.approx(losses(plain), rel=1e-3)
    assert offload_peak < plain_peak
    assert (
        plan.activations_bytes
        < tk.Tuner(tiny_llama, method=tk.Full(), training=training(**kw)).plan(rows).activations_bytes
    )
    assert (dict(head._forward_pre_hooks), dict(head._forward_hooks)) == hooks  # trl's hooks removed after the run


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_bitsandbytes_optimizers_train_and_plan_counts_their_state(tiny_llama, tmp_path, name):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    rows = reverse_task(32, seed=3)
    t = tk.Tuner(
        tiny_llama,
        method=tk.Full(),
        training=training(optimizer=name, max_steps=16, batch_size=8, learning_rate=1e-2, save_every=8),
        output_dir=tmp_path,
    )
    plan = t.plan(rows)
    got = losses(t.fit(rows))
    assert got[-1] < 0.7 * got[0]
    state = torch.load(tmp_path / "checkpoint-8" / "optimizer.pt", map_location="cpu", weights_only=True)["state"]
    seen = {}
    for s in state.values():
        for v in s.values():
            if isinstance(v, torch.Tensor):
                seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    assert plan.optimizer_bytes == sum(seen.values())
