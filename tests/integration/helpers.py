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
