"""Time to first step, cold against warm tokenisation cache, on 50,000 chat rows (target: warm >= 5x faster).

Each run is a new Tuner on the same JSONL file: load the model, read and validate the rows,
template and tokenise them (cold) or read them from the cache (warm), and train until the end of
the first optimizer step. The cache lives in a fresh temporary directory.

    PYTHONPATH=src python benchmarks/cache.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _util import emit, setup, workdir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--warm-runs", type=int, default=2)
    a = ap.parse_args()
    setup()
    import tunekit as tk
    from tunekit.testing import reverse_task, tiny_model, write_jsonl

    tmp = workdir()
    model_dir = tiny_model(tmp / "model", "llama")
    data = write_jsonl(reverse_task(a.rows, seed=0, length=(3, 30), fmt="messages"), tmp / "train.jsonl")

    class FirstStep(tk.Hook):
        def __init__(self) -> None:
            self.at: float | None = None

        def on_step_end(self, ctx: Any) -> None:
            self.at = time.perf_counter()
            ctx.request_stop("benchmark: first step done")

    def time_to_first_step() -> float:
        hook = FirstStep()
        training = tk.Training(device="cpu", max_steps=1, cache_dir=str(tmp / "cache"))
        t0 = time.perf_counter()
        tk.Tuner(str(model_dir), training=training, hooks=[hook], progress=False).fit(data)
        assert hook.at is not None
        return hook.at - t0

    cold = time_to_first_step()
    warm = min(time_to_first_step() for _ in range(a.warm_runs))
    emit({
        "benchmark": "cache", "rows": a.rows, "cold_s": round(cold, 2), "warm_s": round(warm, 2),
        "speedup": round(cold / warm, 2), "target": 5.0,
    })  # fmt: skip


if __name__ == "__main__":
    main()
