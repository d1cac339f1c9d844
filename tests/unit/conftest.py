"""Fixtures of the unit tests that several files share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _write_rows(path: Path, n: int, tag: str) -> str:
    rows = [{"prompt": f"{tag} question {i}", "completion": f"{tag} answer {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``datasets`` cache holding ``org/name`` (splits train and test, subsets main and extra), as a load of it
    from the hub would have left it; the hub itself is off (offline mode), as on a machine without network."""
    import datasets
    import huggingface_hub.constants
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for subset, n in (("main", 6), ("extra", 2)):
        files = {
            "train": _write_rows(tmp_path / f"{subset}-train.jsonl", n, subset),
            "test": _write_rows(tmp_path / f"{subset}-test.jsonl", 2, f"{subset}-test"),
        }
        builder = Json(cache_dir=str(tmp_path / "build"), dataset_name="name", config_name=subset, data_files=files)
        builder.download_and_prepare()
        # Where datasets keeps a hub dataset: <cache>/<org>___<name>/<subset>/<version>/<hash>
        target = cache / "org___name" / subset / "0.0.0" / "0123456789abcdef"
        target.parent.mkdir(parents=True)
        shutil.move(builder.cache_dir, target)
    return cache
