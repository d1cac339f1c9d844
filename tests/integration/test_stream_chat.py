"""``Tuner.stream`` on a tiny model (joined, it is generate's text; closing stops the generation thread) and
``tunekit chat`` driven through piped standard input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import first_task

ROOT = Path(__file__).resolve().parents[2]


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunekit-stream"]


@pytest.fixture(scope="module")
def saved(tiny_qwen_init02: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tuner = tk.Tuner(str(tiny_qwen_init02), training=tk.Training(max_steps=1, device="cpu"))
    tuner.fit(first_task(8))
    path = tmp_path_factory.mktemp("chat") / "tuner"
    tuner.save(path)
    return path


def test_joined_pieces_are_generates_greedy_output(tiny_qwen_init02: Path) -> None:
    tuner = tk.Tuner(str(tiny_qwen_init02), training=tk.Training(device="cpu"))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first: 7 3 1"}]
    for prompt in ("first: 7 3 1", "请说出第一个数字: 8 1 2", conversation):
        pieces = list(tuner.stream(prompt, max_new_tokens=24))
        assert len(pieces) >= 1
        assert "".join(pieces) == tuner.generate(prompt, max_new_tokens=24), prompt
    raw = list(tuner.stream("first: 7 3 1", chat=False, max_new_tokens=12))
    assert "".join(raw) == tuner.generate("first: 7 3 1", chat=False, max_new_tokens=12)
    assert not _stream_threads()


def test_closing_early_stops_the_generation_thread(tiny_qwen_init02: Path) -> None:
    tuner = tk.Tuner(str(tiny_qwen_init02), training=tk.Training(device="cpu"))
    tuner.generate("hi", max_new_tokens=1)  # loaded, so the timing below is generation only
    pieces = tuner.stream("first: 7 3 1", max_new_tokens=10_000, min_new_tokens=10_000)
    for _ in range(3):
        next(pieces)
    assert len(_stream_threads()) == 1
    started = time.monotonic()
    pieces.close()
    assert time.monotonic() - started < 5
    assert not _stream_threads()
    assert isinstance(tuner.generate("hi", max_new_tokens=4), str)  # the use lock was released
    for n, _piece in enumerate(tuner.stream("first: 7 3 1", max_new_tokens=10_000, min_new_tokens=10_000)):
        if n == 2:
            break  # leaving the loop drops the iterator: garbage collection closes it
    deadline = time.monotonic() + 5
    while _stream_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _stream_threads()
    assert isinstance(tuner.generate("hi", max_new_tokens=4), str)


def test_chat_with_piped_input_answers_each_line(saved: Path) -> None:
    lines = ["first: 4 2 7", "请说出第一个数字: 8 1 2", "/system Answer with one digit.", "first: 9 9 1", "/reset",
             "first: 5 0 0", "/exit", "never read"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "tunekit", "chat", str(saved), "--max-new-tokens", "12"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, encoding="utf-8", env=env, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "(system prompt set)" in proc.stderr and "(conversation reset)" in proc.stderr
    # The same conversations through generate: history kept, the system prompt from its line on, forgotten on /reset.
    tuner = tk.load(saved)
    turns: list[dict[str, str]] = []
    expected = []
    for system, text in [(None, lines[0]), (None, lines[1]), ("Answer with one digit.", lines[3])]:
        turns.append({"role": "user", "content": text})
        head = [{"role": "system", "content": system}] if system else []
        answer = tuner.generate(head + turns, max_new_tokens=12)
        expected.append(answer)
        turns.append({"role": "assistant", "content": answer})
    head = [{"role": "system", "content": "Answer with one digit."}]
    expected.append(tuner.generate([*head, {"role": "user", "content": lines[5]}], max_new_tokens=12))
    assert proc.stdout == "".join(a + "\n" for a in expected)


def test_chat_on_a_missing_save_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "no/such/dir"]) == 2
    assert capsys.readouterr().err.startswith("error: load('no/such/dir'): no such directory")


def test_a_reply_says_why_it_ended_and_stop_strings_end_it(tiny_qwen_init02: Path) -> None:
    tuner = tk.Tuner(str(tiny_qwen_init02), training=tk.Training(device="cpu"))
    free = tuner.generate("first: 7 3 1", max_new_tokens=24)
    assert free.prompt_tokens is not None and free.prompt_tokens > 3
    if free.finish_reason == "length":
        assert free.completion_tokens == 24
    else:
        assert free.finish_reason == "stop" and 1 <= free.completion_tokens <= 24
    long = tuner.generate("first: 7 3 1", max_new_tokens=24, min_new_tokens=24)
    assert long.finish_reason == "length" and long.completion_tokens == 24
    text = str(long)
    at = next(
        i for i in range(len(text) // 3, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].isalnum()
    )
    stop = text[at : at + 2]  # plain letters in the middle of the answer (not half a UTF-8 character)
    cut = tuner.generate("first: 7 3 1", max_new_tokens=24, stop_strings=[stop])  # failed inside transformers before
    assert stop in cut and len(cut) < len(text) and cut.finish_reason == "stop"
    end = list(tuner.stream("first: 7 3 1", max_new_tokens=24, min_new_tokens=24, parts=True))[-1]
    assert end.kind == "end" and end.reply == long and end.reply.completion_tokens == 24
