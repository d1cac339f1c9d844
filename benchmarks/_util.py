"""Shared bits of the benchmarks: one torch thread, quiet libraries, a tiny local model, one JSON line."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup() -> None:
    """One intra-op thread (timings on a shared machine), no library chatter on stdout.

    Whatever the libraries print (trl's log lines, import-time warnings) goes to stderr; only
    :func:`emit` writes to the real stdout.
    """
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def workdir() -> Path:
    """A fresh temporary folder, removed when the script exits (a benchmark writes models and data files of GBs)."""
    path = Path(tempfile.mkdtemp(prefix="tunekit-bench-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def digit_texts(n: int, lengths: tuple[int, int], seed: int = 0) -> list[str]:
    """Texts of random digits; with the tiny tokenizer one digit (and its space) is about one token."""
    rng = random.Random(seed)
    return [" ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(*lengths))) for _ in range(n)]


def median_time(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn()``; what it prints (trl's log lines) goes to stderr, not our JSON line."""
    times = []
    for _ in range(repeats):
        with contextlib.redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def emit(figures: dict[str, Any]) -> None:
    """The benchmark's one line of output."""
    out = sys.__stdout__ or sys.stderr
    out.write(json.dumps(figures) + "\n")
    out.flush()
