from __future__ import annotations

from typing import Any

import tunekit as tk


def exact_match(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    outs = tuner.generate([r["prompt"] for r in rows], max_new_tokens=16)
    return sum(o == r["completion"] for o, r in zip(outs, rows)) / len(rows)


def cpu(**kw: Any) -> tk.Training:
    kw.setdefault("device", "cpu")
    kw.setdefault("log_every", 1)
    return tk.Training(**kw)


def heldout_loss(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    """Mean cross-entropy per supervised token, computed the same way for every method.

    The logits of the input's own positions are the last ones (prompt tuning puts its virtual
    tokens in front); model-added losses (AdaLoRA's regulariser) are left out.
    """
    import torch

    enc = tuner.prepare(rows)
    model = tuner.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(enc.input_ids, enc.labels):
            n = len(ids)
            logits = model(input_ids=torch.tensor([ids])).logits[0, -n:].float()
            target = torch.tensor(labels)[1:]
            total += torch.nn.functional.cross_entropy(logits[:-1], target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count
