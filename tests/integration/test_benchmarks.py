"""Each benchmark runs at tiny sizes and prints exactly one JSON line with its figures (slow: subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "cpu_overhead.py": (["--steps", "3", "--repeats", "1", "--rows", "40"], {"ratio", "tunekit_s", "trl_s"}),
    "cpu_packing.py": (["--steps", "2", "--repeats", "1", "--max", "64"], {"variable_ratio", "fixed_ratio"}),
    "gpu_throughput.py": (
        ["--smoke", "--steps", "4", "--warm", "2", "--batch", "2"],
        {"trl_lora", "tunekit_lora", "tunekitbig_lora", "trl_full", "tunekit_full", "lora_speedup", "full_speedup"},
    ),
    "cache.py": (["--rows", "200", "--warm-runs", "1"], {"cold_s", "warm_s", "speedup"}),
    "eval_throughput.py": (["--rows", "8", "--repeats", "1", "--max-new-tokens", "4"], {"speedup", "batched_s"}),
    "optimizer_memory.py": (
        ["--steps", "5", "--hidden", "64", "--layers", "2", "--rank", "8", "--rows", "24", "--repeats", "1"],
        {"optimizers", "plan_equals_measured"},
    ),
    "serve_load.py": (
        ["--clients", "4", "--requests", "1", "--max-tokens", "4"],
        {"served_rps", "p95_ms", "wrong_or_lost"},
    ),
    "streaming_memory.py": (
        ["--rows", "3000", "--steps", "3"],
        {"baseline_peak_rss_mib", "stream_peak_rss_mib", "streaming_adds_mib"},
    ),
    "plan_accuracy.py": (
        ["--quick", "--hidden", "64", "--layers", "2", "--rows", "6"],
        {"configs", "worst", "all_exact_terms_equal"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_prints_one_json_line(script: str, tmp_path: Path) -> None:
    args, keys = CASES[script]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TUNEKIT_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=600, check=True,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    figures = json.loads(lines[0])
    assert figures["benchmark"] == script.removesuffix(".py")
    assert keys <= set(figures)
    if script == "gpu_throughput.py":
        assert figures["smoke"] is True
        variants = ("trl_lora", "tunekit_lora", "tunekitbig_lora", "trl_full", "tunekit_full")
        assert all(figures[v]["tokens_per_s"] > 0 for v in variants)
        assert figures["tunekit_lora"]["plan_peak_gib"] > 0
    if script == "optimizer_memory.py":
        assert figures["plan_equals_measured"] is True
        assert {"adamw", "adamw_8bit", "adafactor", "lion", "galore", "apollo", "muon", "sgd"} == set(
            figures["optimizers"]
        )
        assert figures["optimizers"]["adamw"]["bytes_per_param"] == pytest.approx(8, rel=0.01)
    if script == "plan_accuracy.py":
        assert figures["all_exact_terms_equal"] is True and figures["worst"]["error"] <= figures["target"]
