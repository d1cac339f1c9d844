"""``Tuner.stream`` on the FakeBackend: pieces that join to generate's text, checks before loading, the use lock."""

from __future__ import annotations

import threading

import pytest

import tunekit as tk
from tunekit.testing import FakeBackend


def _tuner(backend: FakeBackend | None = None) -> tk.Tuner:
    return tk.Tuner("any-model", backend=backend or FakeBackend(replies={"hi": "hello there, friend"}))


def test_pieces_join_to_what_generate_returns() -> None:
    backend = FakeBackend(replies={"hi": "hello there, friend"})
    tuner = _tuner(backend)
    pieces = list(tuner.stream("hi", max_new_tokens=8))
    assert len(pieces) > 1
    assert "".join(pieces) == tuner.generate("hi") == "hello there, friend"
    assert "stream" in backend.calls
    assert "".join(tuner.stream([{"role": "user", "content": "hi"}], tools=[{"name": "f", "parameters": {}}])) == (
        "hello there, friend"
    )


def test_prompts_and_options_are_checked_before_anything_loads() -> None:
    backend = FakeBackend()
    tuner = _tuner(backend)
    with pytest.raises(tk.ConfigError, match="did you mean 'max_new_tokens'"):
        tuner.stream("hi", max_tokens=8)
    with pytest.raises(tk.ConfigError, match="one prompt"):
        tuner.stream(["a", "b"])
    with pytest.raises(tk.DatasetError):
        tuner.stream([{"role": "wizard", "content": "hi"}])
    assert "load" not in backend.calls


def test_the_use_lock_is_held_while_streaming_and_released_on_close() -> None:
    tuner = _tuner()
    pieces = tuner.stream("hi")
    assert next(pieces) == "hell"
    with pytest.raises(tk.ConfigError, match=r"generate\(\): a stream\(\) of this Tuner is open in this thread"):
        tuner.generate("hi")
    got: list[bool] = []
    other = threading.Thread(target=lambda: got.append(tuner._access.use_lock.acquire(timeout=0.2)))
    other.start()
    other.join()
    assert got == [False]  # another thread waits while the stream is open
    pieces.close()
    assert tuner.generate("hi") == "hello there, friend"
    other = threading.Thread(target=lambda: got.append(tuner._access.use_lock.acquire(timeout=0.2)))
    other.start()
    other.join()
    assert got == [False, True]
