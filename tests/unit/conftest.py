"""Shared fixtures for the unit tests: tiny tokenizers built once per session, a local datasets cache; no network."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models on disk: 'chat' (ChatML template, pad token) and 'base' (neither)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "chat": tk.testing.tiny_model(root / "chat"),
        "base": tk.testing.tiny_model(root / "base", chat_template=False, pad_token=False),
    }


@pytest.fixture(scope="session")
def load_tokenizer(tiny_dirs: dict[str, Path]) -> Callable[[str], Any]:
    """A fresh tokenizer each call (ensure_template mutates the tokenizer it is given)."""
    from transformers import AutoTokenizer

    def load(kind: str = "chat") -> Any:
        return AutoTokenizer.from_pretrained(tiny_dirs[kind])

    return load


@pytest.fixture(scope="session")
def chat_tokenizer(load_tokenizer: Callable[[str], Any]) -> Any:
    """A shared, read-only tokenizer with the ChatML template and a pad token, template ensured."""
    from tunekit.data import ensure_template

    tok = load_tokenizer("chat")
    ensure_template(tok)
    return tok


@pytest.fixture(scope="session")
def base_tokenizer(load_tokenizer: Callable[[str], Any]) -> Any:
    """A shared, read-only tokenizer that started without template or pad token, template ensured."""
    from tunekit.data import ensure_template

    tok = load_tokenizer("base")
    ensure_template(tok)
    return tok


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
