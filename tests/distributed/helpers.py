"""Starting the test worker in two processes with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tunekit as tk

WORKER = Path(__file__).with_name("worker.py")


def torchrun(
    scenario: str, model: Path, out: Path, *extra: str, timeout: float = 240, via_launch: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 worker.py ...`` (a free port each time);
    with ``via_launch``, the same through ``python -m tunekit launch --nproc 2 worker.py ...``."""
    src = str(Path(tk.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, str(WORKER.parents[2]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    if via_launch:
        cmd = [sys.executable, "-m", "tunekit", "launch", "--nproc", "2"]
    cmd += [str(WORKER), scenario, str(model), str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
