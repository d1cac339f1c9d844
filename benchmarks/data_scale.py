"""Cold data preparation at scale: tunekit's ``Tuner.prepare`` against plain ``datasets.map``, side by side.

Targets (issue: data at scale): on one worker, tunekit's time and peak RSS at most 1.5x those of plain
``datasets`` doing the chat template and tokenisation of the same rows (``load_dataset("json")`` +
``Dataset.map(batched=True)``), and tunekit's time falling with ``Training(data_workers=...)``.

The rows are prompt/completion pairs of 5-40 random digits in a JSONL file, the tokenizer the tiny model's
(``tunekit.testing.tiny_model``), both sides with a fresh cache (cold). Each side runs in its own subprocess, so
its peak RSS is its own: ``peak_rss_mib`` is the process's (the ``datasets`` workers' are ``worker_rss_mib``,
the largest child's), ``base_rss_mib`` its RSS after the imports, before reading the data (both sides import
tunekit, so the baseline is the same). Time counts reading, validating, templating and tokenising, and writing
the result to the cache (tunekit) or Arrow files (``datasets``); the tokenizer is loaded before. ``cpu_s`` is the
CPU time of the same span (the side's process and its finished workers): on a machine shared with other work,
wall time moves with their load and CPU time much less, so ``cpu_ratio`` is the steadier comparison.

    PYTHONPATH=src python benchmarks/data_scale.py [--rows 200000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _util import emit, setup, workdir


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` prompt/completion rows of 5-40 digits, written in chunks (2,000,000 rows never sit in a list)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        chunk: list[str] = []
        for _ in range(n):
            digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(5, 40))]
            row = {"prompt": "reverse: " + " ".join(digits), "completion": " ".join(reversed(digits))}
            chunk.append(json.dumps(row))
            if len(chunk) == 10_000:
                f.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            f.write("\n".join(chunk) + "\n")
    return path


def _rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the ``datasets`` workers): on a shared machine the
    figure that other processes' load changes least."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _current_rss_mib() -> float:
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def side_tunekit(data: str, model: str, cache: str, workers: int) -> dict[str, Any]:
    import tunekit as tk

    given = {"data_workers": workers} if "data_workers" in tk.Training.model_fields else {}  # older tunekit: 1
    training = tk.Training(device="cpu", cache_dir=cache, **given)
    tuner = tk.Tuner(model, training=training, progress=False)
    tuner.tokenizer  # noqa: B018  (loads the tokenizer, outside the timing)
    base = _current_rss_mib()
    t0, c0 = time.perf_counter(), _cpu_s()
    enc = tuner.prepare(data)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"seconds": seconds, "cpu_s": cpu, "examples": len(enc.rows), "tokens": int(enc.num_tokens),
            "base_rss_mib": base}  # fmt: skip


def side_datasets(data: str, model: str, cache: str, workers: int) -> dict[str, Any]:
    from datasets import load_dataset

    import tunekit as tk

    # The same tokenizer (and template) as the other side, loaded the same way: the same baseline RSS.
    tokenizer = tk.Tuner(model, training=tk.Training(device="cpu"), progress=False).tokenizer
    base = _current_rss_mib()
    t0, c0 = time.perf_counter(), _cpu_s()
    ds = load_dataset("json", data_files=data, split="train", cache_dir=cache)

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        chats = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
            for p, c in zip(batch["prompt"], batch["completion"])
        ]
        texts = tokenizer.apply_chat_template(chats, tokenize=False)
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    out = ds.map(encode, batched=True, num_proc=workers if workers > 1 else None, remove_columns=ds.column_names)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    tokens = sum(len(x) for batch in out.iter(10_000) for x in batch["input_ids"])
    return {"seconds": seconds, "cpu_s": cpu, "examples": len(out), "tokens": tokens, "base_rss_mib": base}


SIDES = {"tunekit": side_tunekit, "datasets": side_datasets}


def run_side(side: str, data: Path, model: Path, cache: Path, workers: int) -> dict[str, Any]:
    """One side in a fresh Python process: its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--side", side, "--data", str(data), "--model", str(model),
           "--cache", str(cache), "--workers", str(workers)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="tunekit's data_workers to time")
    ap.add_argument("--sides", nargs="+", default=["datasets", "tunekit"], choices=sorted(SIDES))
    ap.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)  # internal: one side, in a subprocess
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    a = ap.parse_args()
    setup()
    if a.side:
        figures = SIDES[a.side](a.data, a.model, a.cache, a.workers[0])
        figures.update(peak_rss_mib=_rss_mib(), worker_rss_mib=_rss_mib(resource.RUSAGE_CHILDREN))
        emit(figures)
        return
    from tunekit.testing import tiny_model

    tmp = workdir()
    model_dir = tiny_model(tmp / "model", "llama")
    results: list[dict[str, Any]] = []
    for n in a.rows:
        data = write_rows(tmp / f"rows-{n}.jsonl", n)
        runs = [(side, w) for side in a.sides for w in (a.workers if side == "tunekit" else [1])]
        for side, w in runs:
            fig = run_side(side, data, model_dir, tmp / f"cache-{n}-{side}-{w}", w)
            results.append({
                "rows": n, "side": side, "workers": w, "seconds": round(fig["seconds"], 2),
                "cpu_s": round(fig["cpu_s"], 2),
                "rows_per_s": round(n / fig["seconds"]), "peak_rss_mib": round(fig["peak_rss_mib"]),
                "worker_rss_mib": round(fig["worker_rss_mib"]), "base_rss_mib": round(fig["base_rss_mib"]),
                "examples": fig["examples"], "tokens": fig["tokens"],
            })  # fmt: skip
            print(json.dumps(results[-1]), file=sys.stderr)
        data.unlink()
    ratios = {}
    for n in a.rows:
        by = {(r["side"], r["workers"]): r for r in results if r["rows"] == n}
        if ("datasets", 1) in by and ("tunekit", 1) in by:
            plain, ours = by["datasets", 1], by["tunekit", 1]
            ratios[str(n)] = {
                "time_ratio": round(ours["seconds"] / plain["seconds"], 2),
                "cpu_ratio": round(ours["cpu_s"] / plain["cpu_s"], 2),
                "rss_ratio": round(ours["peak_rss_mib"] / plain["peak_rss_mib"], 2),
            }
    emit({"benchmark": "data_scale", "results": results, "ratios": ratios, "target": 1.5})


if __name__ == "__main__":
    main()
