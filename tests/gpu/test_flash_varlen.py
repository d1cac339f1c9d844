"""On CUDA, a packed row's attention runs in torch's flash-attention varlen kernel, and equals attending to
each example separately (the CPU path), forward and backward. Run with ``pytest -m gpu`` (``nox -s gpu``)."""

from __future__ import annotations

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf import attention
from tunekit.testing import reverse_task

pytestmark = pytest.mark.gpu


def _qkv(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens = 700
    q = torch.randn(1, 14, tokens, 64, device="cuda", dtype=dtype, generator=g)  # Qwen2-0.5B's heads
    k, v = (torch.randn(1, 2, tokens, 64, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    return tuple(t.requires_grad_() for t in (q, k, v))


def test_the_kernel_runs_and_equals_per_example_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    assert attention._varlen_kernel() is not None, f"torch {torch.__version__} has no torch.nn.attention.varlen"
    monkeypatch.setattr(attention, "_flash_failed", None)
    bounds = (0, 128, 129, 400, 650, 700)
    cu = torch.tensor(bounds, device="cuda", dtype=torch.int32)
    q, k, v = _qkv(torch.bfloat16)
    module = torch.nn.Module().eval()
    assert attention._flash_eligible(q, 0.0)
    flash, _ = attention._varlen_sdpa(module, q, k, v, None, scaling=0.125, tunekit_bounds=bounds, cu_seq_lens_q=cu)
    assert attention._flash_failed is None, attention._flash_failed
    monkeypatch.setattr(attention, "_flash_eligible", lambda query, dropout: False)
    loop, _ = attention._varlen_sdpa(module, q, k, v, None, scaling=0.125, tunekit_bounds=bounds, cu_seq_lens_q=cu)
    assert flash.shape == loop.shape == (1, 700, 14, 64)
    torch.testing.assert_close(flash.float(), loop.float(), atol=2e-2, rtol=2e-2)
    weights = torch.randn_like(loop)
    got = torch.autograd.grad((flash * weights).sum(), (q, k, v))
    want = torch.autograd.grad((loop * weights).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_a_packed_bf16_fit_uses_the_kernel_and_learns(monkeypatch: pytest.MonkeyPatch, tiny_llama) -> None:
    calls = []
    kernel = attention._varlen_kernel()
    assert kernel is not None

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention, "_varlen_kernel", lambda: counted)
    monkeypatch.setattr(attention, "_flash_failed", None)
    training = tk.Training(
        device="cuda", precision="bf16", max_steps=30, batch_size=8, learning_rate=1e-2, log_every=1, max_length=64
    )
    tuner = tk.Tuner(str(tiny_llama), method=tk.LoRA(r=8), training=training, progress=False)
    result = tuner.fit(reverse_task(160, seed=2))
    assert attention._flash_failed is None, attention._flash_failed
    assert calls, "the packed run never reached the flash kernel"
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0] - 0.2, losses
