"""Regenerate docs/supported-models.md and docs/zh/supported-models.md from the model-family registry.

The rows come from ``tunekit.testing.families.FAMILIES`` (rendered by tests/supported_models.py); the test behind
each row is tests/integration/test_families.py. Usage, from the repository root:

    python scripts/supported_models.py            # writes both pages
    python scripts/supported_models.py --check    # exits 1 if a committed page differs (what the unit test checks)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ is importable from the repository root, as pytest sees it
sys.path.insert(0, str(ROOT / "src"))

from tests.supported_models import PAGES, render  # noqa: E402


def main(argv: list[str]) -> int:
    stale = []
    for lang, page in PAGES.items():
        text = render(lang)
        if "--check" in argv:
            if not page.exists() or page.read_text(encoding="utf-8") != text:
                stale.append(page.relative_to(ROOT).as_posix())
            continue
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text, encoding="utf-8")
        print(f"wrote {page.relative_to(ROOT).as_posix()}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/supported_models.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
