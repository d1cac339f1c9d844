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
    from tunekit._torch import is_quantized

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


def test_qlora_reward_model_has_a_trained_score_head_and_ranks_pairs(tiny_llama_init02, tmp_path) -> None:
    """A QLoRA reward model: a 4-bit sequence classifier whose new score head (kept unquantized) trains with LoRA."""
    from tests.integration.toy_tasks import ranks_chosen, sort_pairs

    held = sort_pairs(64, seed=2)
    rm = tk.Tuner(
        tiny_llama_init02,
        method=tk.LoRA(r=8, quantize="nf4"),
        objective=tk.RewardModeling(),
        training=tk.Training(max_steps=80, learning_rate=3e-3, batch_size=16, device="cuda", log_every=10),
    )
    model = rm.model
    base = model.get_base_model()
    assert type(base).__name__.endswith("ForSequenceClassification") and base.config.num_labels == 1
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    assert not isinstance(
        base.score.original_module if hasattr(base.score, "original_module") else base.score, bnb.nn.Linear4bit
    )
    assert any("score" in n for n, p in model.named_parameters() if p.requires_grad)
    before = ranks_chosen(rm, held)
    rm.fit(sort_pairs(512, seed=1))
    after = ranks_chosen(rm, held)
    assert after >= 0.85 and after > before + 0.2, (before, after)
    again = tk.load(rm.save(tmp_path / "rm"))
    items = [("sort: 3 1 2", "1 2 3"), ("sort: 3 1 2", "3 1 2")]
    assert again.score(items) == pytest.approx(rm.score(items), abs=1e-2)
