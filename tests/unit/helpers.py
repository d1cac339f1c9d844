"""Helpers shared by the unit tests of data sources (tests/unit/test_data_sources.py, test_streaming.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def rows_of(n: int, tag: str = "") -> list[dict[str, str]]:
    """``n`` rows: ``"{tag} question {i}"`` / ``"{tag} answer {i}"`` (``"question {i}"`` without a tag)."""
    prefix = f"{tag} " if tag else ""
    return [{"prompt": f"{prefix}question {i}", "completion": f"{prefix}answer {i}"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as JSON lines (ASCII-escaped, as ``json.dumps`` writes them) at ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
