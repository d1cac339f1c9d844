"""tunekit leaves the process as it found it (issue #25, item 4).

In a fresh process (``_global_state_child.py``), the baseline is taken after the libraries are imported
and before the first fit; then fit, generate, save, export and compare run, and warnings filters, the
handlers, levels and propagation of the libraries' loggers and the root logger, ``os.environ``, torch's
defaults (dtype, grad mode, threads, deterministic flags, cudnn flags) and the RNG states of torch,
``random`` and numpy must be exactly as before. (test_embedding.py's in-process check takes its baseline
after a first fit, so a leak every fit makes from the first one on goes unseen there.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).with_name("_global_state_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def test_fit_generate_save_export_compare_leave_global_state_unchanged(tiny_llama, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent)]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TUNEKIT_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(tiny_llama), str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CHANGED ")), None)
    assert line is not None, f"the child printed no report:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    changed = json.loads(line.removeprefix("CHANGED "))
    report = "\n".join(f"{what}: before {b!r}, after {a!r}" for what, (b, a) in changed.items())
    assert changed == {}, f"fit / generate / save / export / compare changed process-wide state:\n{report}"
