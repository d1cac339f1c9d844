"""Regenerate docs/support-matrix.md from test results.

Runs every test that proves support-matrix cells (tests using the ``prove`` fixture, CPU ones) and
writes the matrix of the (method, objective) pairs they proved. Usage, from the repository root:

    python scripts/support_matrix.py            # writes docs/support-matrix.md
    python scripts/support_matrix.py -x -q      # extra arguments go to pytest

Exits with pytest's status: a failing test leaves its cell "untested" and the script fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "support-matrix.md"


def proving_tests() -> list[str]:
    """Test files that call the ``prove`` fixture."""
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "prove(" in text and "gpu" not in path.parts:
            files.append(str(path.relative_to(ROOT)))
    return files


def main(argv: list[str]) -> int:
    files = proving_tests()
    if not files:
        print("no test calls prove(); nothing to generate", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "pytest", *files, "-m", "not gpu", f"--support-matrix={OUT}", "-p", "no:cacheprovider"]
    print("+", " ".join(cmd), flush=True)
    status = subprocess.call([*cmd, *argv], cwd=ROOT)
    print(f"wrote {OUT.relative_to(ROOT)}" + ("" if status == 0 else f" (pytest exited with {status})"))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
