"""Run by test_global_state.py in a fresh process: snapshot the process-wide state, run fit, generate, save,
export and compare, snapshot again and print what changed (JSON: {what: [before, after]}).

Usage: python _global_state_child.py MODEL_DIR WORK_DIR
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

# The libraries' own import-time setup (transformers' log handler, ...) is theirs, not a run's: import
# them before the baseline. Nothing of tunekit has run yet.
import accelerate  # noqa: F401
import datasets  # noqa: F401
import numpy as np
import peft  # noqa: F401
import torch
import transformers
import trl  # noqa: F401

import tunekit as tk
from tunekit.testing import reverse_task

LOGGERS = ("", "transformers", "peft", "trl", "datasets", "accelerate", "torch", "tunekit")


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode() if not isinstance(value, bytes) else value).hexdigest()[:16]


def snapshot() -> dict[str, Any]:
    """Every piece of process-wide state a library call must leave as it found it, as JSON-able values."""
    state: dict[str, Any] = {
        "warnings.filters": [repr(f) for f in warnings.filters],
        "os.environ": dict(os.environ),
        "torch.get_default_dtype()": str(torch.get_default_dtype()),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled()": torch.is_deterministic_algorithms_warn_only_enabled(),
        "torch.backends.cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
        "torch.backends.cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
        "torch.get_rng_state()": _digest(torch.get_rng_state().numpy().tobytes()),
        "random.getstate()": _digest(random.getstate()),
        "numpy.random.get_state()": _digest(np.random.get_state()[1].tobytes()),
        "transformers progress bars": transformers.utils.logging.is_progress_bar_enabled(),
    }
    for name in LOGGERS:
        lg = logging.getLogger(name)
        label = f"logger {name or 'root'!r}"
        state[f"{label} handlers"] = [f"{type(h).__name__}@{id(h):x}" for h in lg.handlers]
        state[f"{label} level"] = lg.level
        state[f"{label} propagate"] = lg.propagate
        state[f"{label} disabled"] = lg.disabled
        state[f"{label} filters"] = [repr(f) for f in lg.filters]
    return state


def main() -> None:
    model, work = sys.argv[1], Path(sys.argv[2])
    training = tk.Training(device="cpu", max_steps=2, batch_size=4, log_every=1)
    before = snapshot()

    tuner = tk.Tuner(model, method=tk.LoRA(r=4), training=training, output_dir=work / "run")
    tuner.fit(reverse_task(8, seed=1))
    tuner.generate("reverse: 1 2 3", max_new_tokens=4)
    tuner.save(work / "saved")
    tuner.export(work / "exported", format="hf")
    tk.compare(
        model,
        methods=[tk.LoRA(r=4)],
        data=reverse_task(8, seed=2),
        training=training.model_copy(update={"max_steps": 1}),
    )

    after = snapshot()
    changed = {k: [before[k], after.get(k)] for k in before if before[k] != after.get(k)}
    if isinstance(changed.get("os.environ"), list):  # only the variables that differ
        b, a = changed["os.environ"]
        changed["os.environ"] = [
            {k: b.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)},
            {k: a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)},
        ]
    print("CHANGED " + json.dumps(changed, default=str))


if __name__ == "__main__":
    main()
