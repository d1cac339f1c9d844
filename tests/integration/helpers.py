from __future__ import annotations

from typing import Any

import tunekit as tk


def exact_match(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    outs = tuner.generate([r["prompt"] for r in rows], max_new_tokens=16)
    return sum(o == r["completion"] for o, r in zip(outs, rows)) / len(rows)


class StopAt(tk.Hook):
    """Fails at ``step`` (hook_errors='stop' leaves a checkpoint there), as a crash would end the run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx: Any) -> None:
        if ctx.step == self.step:
            raise RuntimeError("interrupted")


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


def stored_bytes(model: Any) -> int:
    """Every storage the model's parameters and their bitsandbytes quantization states hold, each once: counted from
    the tensors, independently of the formula plan() uses."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        tensors = [p]
        state = getattr(p, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
        if getattr(p, "SCB", None) is not None:
            tensors += [p.SCB, p.CB]
        for t in tensors:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
