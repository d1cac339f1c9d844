"""QLoRA on a CUDA GPU: the base loads quantized by bitsandbytes (4-bit NF4 or 8-bit) and LoRA trains on it.

Needs a CUDA device and ``pip install bitsandbytes`` (``pip install "tunekit[qlora]"``); run with
``pytest -m gpu`` (``nox -s gpu``). Without bitsandbytes tunekit raises MissingDependencyError, and
the test fails saying so rather than skipping.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

pytestmark = pytest.mark.gpu


def heldout_loss(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    enc = tuner.prepare(rows)
    model = tuner.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(enc.input_ids, enc.labels):
            out = model(input_ids=torch.tensor([ids], device="cuda"))
            logits = out.logits[0].float()
            target = torch.tensor(labels, device="cuda")[1:]
            total += torch.nn.functional.cross_entropy(logits[:-1], target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_qlora_trains_saves_and_reloads_on_gpu(tiny_llama_init02, tmp_path, quantize: str) -> None:
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    from tunekit.backends.hf.quantization import is_quantized

    train, held = reverse_task(200, seed=1), reverse_task(32, seed=2)
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=tk.LoRA(quantize=quantize),
        training=tk.Training(max_steps=60, learning_rate=1e-2, batch_size=16, device="cuda", log_every=10),
    )
    model = tuner.model
    assert is_quantized(model)
    import bitsandbytes as bnb

    kind = bnb.nn.Linear4bit if quantize == "nf4" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, kind) for m in model.modules()), f"no {kind.__name__} layer: the base is not quantized"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    before = heldout_loss(tuner, held)
    result = tuner.fit(train, eval_data=held)
    after = heldout_loss(tuner, held)
    assert after <= 0.7 * before, (before, after)
    assert result.eval_loss == pytest.approx(after, rel=1e-2)

    path = tuner.save(tmp_path / "adapter")
    again = tk.load(path)
    assert again.method == tk.LoRA(quantize=quantize)
    ids = torch.tensor([tuner.prepare(held[:1]).input_ids[0]], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(
            again.model.eval()(input_ids=ids).logits.float(),
            tuner.model.eval()(input_ids=ids).logits.float(),
            rtol=0,
            atol=1e-3,
        )
    with pytest.raises(tk.IncompatibleError, match="cannot be merged into its quantized base"):
        tuner.merge()
