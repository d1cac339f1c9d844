"""examples/embed_in_app.py runs as an application would: background run, progress, cancel, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_embed_in_app_example(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed_in_app.py"), "--steps", "8", "--cancel-at", "3",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "user pressed cancel at step 3" in out
    stopped = int(re.search(r"first run ended: cancelled, (\d+) steps", out).group(1))
    assert stopped in (3, 4)  # within one step of the cancel
    assert f"checkpoint written: checkpoint-{stopped}" in out
    assert re.search(rf"resumed from step {stopped}, finished at step 8: completed", out)
    assert re.search(r"^step 1/8  loss \d+\.\d{4}  eta ", out, re.M)  # live progress from the first run
    assert "resumed: step 8/8" in out
    # The application saw one progress display: its own. Nothing else printed (no bars, no warnings).
    assert proc.stderr == "", proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, stopped + 1)) + list(range(stopped + 1, 9))
