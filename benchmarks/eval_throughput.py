"""Batched ``tuner.evaluate`` against one-by-one ``tuner.generate`` on the same rows, in one process (target: >= 3x).

Both sides answer the same 200 held-out prompts of the reverse-digits task with the same tiny Llama, greedy, the
same ``max_new_tokens``, and score exact match; the one-by-one side is the loop users write before ``evaluate``
exists (one ``generate`` call per row). The sides are interleaved and each timed ``--repeats`` times (best kept).

    PYTHONPATH=src python benchmarks/eval_throughput.py [--rows 200] [--batch-size 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

from _util import emit, setup, workdir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    setup()
    import tunekit as tk
    from tunekit.testing import reverse_task, tiny_model

    tmp = workdir()
    texts = [r["prompt"] + " " + r["completion"] for r in reverse_task(300, seed=100)]
    model_dir = tiny_model(tmp / "model", "llama", texts=texts, hidden_size=128, num_layers=4)
    rows = reverse_task(a.rows, seed=2)
    tuner = tk.Tuner(str(model_dir), training=tk.Training(device="cpu"), progress=False)
    tuner.generate("warm up", max_new_tokens=2)

    def one_by_one() -> tuple[float, float]:
        t0 = time.perf_counter()
        hits = sum(tuner.generate(r["prompt"], max_new_tokens=a.max_new_tokens) == r["completion"] for r in rows)
        return time.perf_counter() - t0, hits / len(rows)

    def batched() -> tuple[float, float]:
        t0 = time.perf_counter()
        result = tuner.evaluate(rows, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
        return time.perf_counter() - t0, result.metrics["exact_match"]

    singles, batches = [], []
    for _ in range(a.repeats):
        singles.append(one_by_one())
        batches.append(batched())
    single_s, single_em = min(singles)
    batched_s, batched_em = min(batches)
    assert single_em == batched_em, (single_em, batched_em)  # the same answers, only faster
    emit({
        "rows": a.rows,
        "batch_size": a.batch_size,
        "one_by_one_s": round(single_s, 2),
        "batched_s": round(batched_s, 2),
        "speedup": round(single_s / batched_s, 2),
        "exact_match": batched_em,
    })  # fmt: skip


if __name__ == "__main__":
    main()
