"""plan() on a CUDA GPU (``pytest -m gpu``): what the CPU tests cannot check.

- A QLoRA plan (the meta-device skeleton, nothing loaded) counts the bytes of the base bitsandbytes really quantizes
  on the GPU, as tests/integration/test_plan_qlora.py checks it on the CPU.
- The plan's total against the peak of a real fit on the GPU (``torch.cuda.max_memory_allocated``): the first
  measurement of plan()'s accuracy on a GPU, which docs/guides/plan.md says has not been made. The bound is the
  benchmarks' target (25%); the ratio is printed (``-s``) for the docs.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import tunekit as tk
from tests.integration.helpers import stored_bytes
from tunekit.testing import reverse_task

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_a_qlora_plan_counts_what_bitsandbytes_stores_on_the_gpu(tiny_llama_init02: Path, quantize: str) -> None:
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    rows = reverse_task(16)
    tuner = tk.Tuner(tiny_llama_init02, method=tk.LoRA(quantize=quantize), training=tk.Training(device="cuda"))
    plan = tuner.plan(rows)
    assert tuner._loaded is None  # planned without loading
    model = tuner.model  # now loaded, quantized on the GPU
    assert plan.weights_bytes == stored_bytes(model)


@pytest.mark.parametrize(
    "method", [tk.LoRA(r=8), tk.LoRA(r=8, quantize="nf4"), tk.Full()], ids=["lora", "qlora", "full"]
)
def test_the_plan_is_within_25_percent_of_a_real_fits_peak(tiny_llama_init02: Path, method: tk.Method) -> None:
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    rows = reverse_task(64, seed=4)
    training = tk.Training(device="cuda", precision="bf16", batch_size=16, max_steps=4, log_every=1)
    plan = tk.Tuner(tiny_llama_init02, method=method, training=training).plan(rows)
    tuner = tk.Tuner(tiny_llama_init02, method=method, training=training)
    _ = tuner.model
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = tuner.fit(rows)
    peak = torch.cuda.max_memory_allocated()
    print(f"{method.name}{'-' + str(method.quantization) if method.quantization else ''}: plan {plan.total_bytes:,} B, "
          f"peak {peak:,} B, ratio {plan.total_bytes / peak:.3f}")  # fmt: skip
    assert result.steps == 4
    assert 0.75 <= plan.total_bytes / peak <= 1.25, (plan.to_dict()["memory"], peak)
