"""The tokenisation cache: a second fit on the same data does not tokenise again; a changed setting does."""

from __future__ import annotations

from pathlib import Path

import pytest

import tunekit as tk
import tunekit.data.arrow as arrow
import tunekit.training_encoding as training_encoding
from tunekit.data import cache
from tunekit.testing import first_task, write_jsonl


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []  # per encoding: how many examples it encoded
    real = arrow.encode_table

    def counting(tokenizer, norm, settings, **k):
        encoded = [0]
        batch = arrow.encode_batch

        def each(tokenizer, examples, **kw):
            encoded[0] += len(examples)
            return batch(tokenizer, examples, **kw)

        monkeypatch.setattr(arrow, "encode_batch", each)
        try:
            out = real(tokenizer, norm, settings, **k)
        finally:
            monkeypatch.setattr(arrow, "encode_batch", batch)
        if encoded[0]:
            calls.append(encoded[0])
        return out

    monkeypatch.setattr(training_encoding, "encode_table", counting)
    return calls


def test_second_fit_uses_the_cache_and_a_changed_setting_misses(
    tiny_llama: Path, tmp_path: Path, spy: list[int]
) -> None:
    data = write_jsonl(first_task(24, seed=5), tmp_path / "train.jsonl")

    def fit(**kw) -> tk.FitResult:
        training = tk.Training(device="cpu", max_steps=2, cache_dir=str(tmp_path / "cache"), **kw)
        return tk.Tuner(str(tiny_llama), training=training).fit(data)

    first = fit()
    assert spy == [24]
    entries = list((tmp_path / "cache" / "tokenized").rglob("*.arrow"))
    assert len(entries) == 1
    again = fit()
    assert spy == [24]  # not tokenised again
    assert (again.num_tokens, again.num_examples) == (first.num_tokens, first.num_examples)
    fit(max_length=32)  # another setting changes the encoding: a miss
    assert spy == [24, 24]
    fit(cache=False)
    assert spy == [24, 24, 24]
    # Same file path, different content: a miss (the key is the content, not the path or mtime).
    write_jsonl(first_task(24, seed=6), data)
    fit()
    assert spy == [24, 24, 24, 24]


def test_cached_entry_equals_a_fresh_encoding(tiny_llama: Path, tmp_path: Path) -> None:
    tuner = tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu", cache_dir=str(tmp_path), max_length=48))
    rows = [*first_task(10, seed=2), {"prompt": "first: 1", "completion": "2 " * 80}]
    fresh = tuner.prepare(rows)
    hit = tuner.prepare(rows)
    assert (hit.input_ids, hit.labels, hit.rows, hit.truncated) == (fresh.input_ids, fresh.labels, fresh.rows, 1)
    # A corrupt entry is ignored and rewritten, never trusted. (Written in place here: the memory-mapped `fresh`
    # would read the corruption too, so its ids are copied first; tunekit itself replaces entries, never rewrites.)
    expected = list(fresh.input_ids)
    (entry,) = list(tmp_path.rglob("*.arrow"))
    entry.write_bytes(b"not arrow")
    assert tuner.prepare(rows).input_ids == expected
    assert cache.read_entry(entry) is not None


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEKIT_CACHE", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    assert cache.cache_dir(str(tmp_path / "b")) == tmp_path / "b"
    monkeypatch.delenv("TUNEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x" / "tunekit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "tunekit"


@pytest.mark.parametrize("module", ["transformers", "tokenizers"])
def test_the_key_changes_with_the_transformers_and_tokenizers_versions(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """A new transformers or tokenizers release can tokenise differently: its entries are not reused."""
    import importlib
    from types import SimpleNamespace

    tokenizer = SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1}, chat_template=None)
    before = cache.cache_key(tokenizer, [], {"max_length": 8})
    assert cache.cache_key(tokenizer, [], {"max_length": 8}) == before
    monkeypatch.setattr(importlib.import_module(module), "__version__", "0.0.0-other")
    assert cache.cache_key(tokenizer, [], {"max_length": 8}) != before
