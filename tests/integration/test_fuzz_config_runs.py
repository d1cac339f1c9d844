"""The config fuzzer's second half (``tests/unit/test_fuzz_config.py`` is the first): a seeded sample of accepted
configs, random values for every option a CPU run can take, planned or trained for one step on a tiny model. Each
run either works or raises a TunekitError; never another exception. About 10 s on two cores.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

SEED = 20240523
ROWS = reverse_task(8, seed=2)

# Values for the options a one-step CPU run can take (device, precision, trackers, engines and resume are fixed or
# left out: they need hardware, packages or an earlier run), the edges included.
TRAINING: dict[str, list[Any]] = {
    "epochs": [0.001, 1, 2.5, 1e6],
    "learning_rate": [None, 1e-12, 1e-4, 0.5, 0.999],
    "batch_size": [1, 3, 8, 2**40],
    "grad_accum": [1, 2, 2**40],
    "max_length": [8, 9, 64, 2**40],
    "seed": [0, 1, 2**32 - 1],
    "lr_scheduler": ["linear", "cosine", "constant", "constant_with_warmup"],
    "warmup_ratio": [0.0, 0.5, 0.999],
    "weight_decay": [0.0, 0.1, 1e6],
    "max_grad_norm": [None, 1e-9, 1.0, 1e300],
    "gradient_checkpointing": [True, False, "auto"],
    "log_every": [1, 2**40],
    "on_bad_rows": ["error", "skip"],
    "packing": [True, False, "auto"],
    "tokens_per_batch": [None, 2**40],
    "on_nonfinite": ["error", "skip"],
    "cache": [True, False],
}
METHODS: list[tk.Method] = [
    tk.LoRA(r=1), tk.LoRA(r=64, alpha=1, dropout=0.9, rslora=True), tk.LoRA(dora=True, init="gaussian"),
    tk.LoHa(), tk.LoKr(), tk.IA3(), tk.Full(), tk.Freeze(), tk.PromptTuning(num_virtual_tokens=1),
    tk.PrefixTuning(num_virtual_tokens=4), tk.PTuning(num_virtual_tokens=2), tk.VeRA(), tk.OFT(),
]  # fmt: skip


def _training(rng: random.Random, tmp: Path) -> dict[str, Any]:
    chosen = rng.sample(list(TRAINING), k=rng.randint(1, 6))
    options = {name: rng.choice(TRAINING[name]) for name in chosen}
    return {**options, "device": "cpu", "cache_dir": str(tmp / "cache")}


def _run(tuner: tk.Tuner, call: str, what: str) -> str:
    try:
        getattr(tuner, call)(ROWS)
    except tk.TunekitError as e:
        assert str(e).strip(), what
        return type(e).__name__
    except Exception as e:
        pytest.fail(f"{what} raised {type(e).__name__}: {e}")
    return "ok"


def test_a_sample_of_accepted_configs_plans_and_trains_or_names_the_problem(tiny_llama, tmp_path) -> None:
    rng = random.Random(SEED)
    start = time.perf_counter()
    outcomes: list[str] = []
    for i in range(36):
        try:
            training = tk.Training(**_training(rng, tmp_path))
        except tk.ConfigError:
            outcomes.append("refused")  # e.g. tokens_per_batch with packing=False: named at construction
            continue
        method = rng.choice(METHODS)
        if i % 3 == 0:  # every third: one step of training (the rest: the plan, which builds the model on meta)
            one_step = training.model_copy(update={"max_steps": 1})
            tuner = tk.Tuner(tiny_llama, method=method, training=one_step, progress=False)
            outcomes.append(_run(tuner, "fit", f"fit with {method!r}, {one_step!r}"))
        else:
            tuner = tk.Tuner(tiny_llama, method=method, training=training, progress=False)
            outcomes.append(_run(tuner, "plan", f"plan with {method!r}, {training!r}"))
    assert outcomes.count("ok") >= 12, outcomes
    assert time.perf_counter() - start < 60
