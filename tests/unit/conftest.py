"""Shared fixtures for the unit tests: tiny tokenizers built once per session, no network."""

from __future__ import annotations

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
