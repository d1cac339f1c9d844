"""Every example script runs from a checkout, learns what it says it learns, and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# script -> a line of its output that shows something was learned (the script itself exits 1 if not)
EXPECTED = {
    "sft_lora_alpaca.py": r"held-out accuracy: \d+% before, (\d+)% after fine-tuning",
    "chat_messages.py": r"held-out accuracy: \d+% before, (\d+)% after fine-tuning",
    "prompt_tuning.py": r"held-out loss per answer token: [\d.]+ before, [\d.]+ after \((-\d+)%\)",
    "dpo.py": r"chosen answer is more likely: (\d+)% before, (\d+)% after DPO",
    "tool_calling.py": r"held-out calls exactly right: (\d+)% before, (\d+)% after fine-tuning",
    "vision_colours.py": r"held-out colour named: (\d+)% before, (\d+)% after fine-tuning",
}
# script -> what its figures must show, beyond the script's own exit code.
LEARNED = {
    "sft_lora_alpaca.py": lambda after: after >= 30,
    "chat_messages.py": lambda after: after >= 30,
    "prompt_tuning.py": lambda change: change <= -30,
    # Chance is 50% on these pairs. Measured with Training seeds 0-3 and 42 (the default): 42% before and 95-100%
    # after; so at least 90% after, and at least 40 points above before.
    "dpo.py": lambda before, after: after >= 90 and after - before >= 40,
    # Issue #16: at most 10% before, at least 90% after. The default run (seed 0) gets 100%; seeds 1 and 2 of the
    # held-out split gave 100% and 77% (85% at a learning rate of 2e-3): copying the room is the tiny model's weak spot.
    "tool_calling.py": lambda before, after: before <= 10 and after >= 90,
    # Issue #18: at most 30% before, at least 90% after, on 32 held-out images (other shades, sizes and aspect ratios
    # than the training ones). Measured with --seed 0, 1 and 2: 0% before and 100% after each, in 14-22 s of wall time
    # on 2 CPU cores (120 LoRA steps on the tiny Qwen2-VL: 5-11 s), 35-42 s beside a running test suite.
    "vision_colours.py": lambda before, after: before <= 30 and after >= 90,
}
# Run by their own tests: test_examples_embed.py, test_rlhf_pipeline.py.
ELSEWHERE = {"embed_in_app.py", "rlhf_pipeline.py"}


def test_every_example_is_run_by_a_test() -> None:
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert scripts == set(EXPECTED) | ELSEWHERE, "add the new example to EXPECTED"
    assert set(LEARNED) == set(EXPECTED), "say what each example's figures must show in LEARNED"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_learns(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--workdir", str(tmp_path)],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(EXPECTED[script], proc.stdout)
    assert match, proc.stdout
    figures = [int(g) for g in match.groups()]
    assert LEARNED[script](*figures), (script, match.group(0))
    # tunekit and the libraries under it print nothing of their own. (deepspeed, when installed, logs
    # its accelerator choice when it is first imported, before anything can quiet it.)
    stderr = [line for line in proc.stderr.splitlines() if "real_accelerator.py" not in line]
    assert stderr == [], proc.stderr
