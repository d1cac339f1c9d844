"""``tunekit chat``'s answer printer on a FakeBackend: a reasoning model's thinking is shown (dimmed in a terminal,
on standard error when piped), hidden with ``--reasoning hide``, and never kept in the history; tool calls announced."""

from __future__ import annotations

import io
import sys

import pytest

import tunekit as tk
from tunekit.cli.chat import _answer

REPLIES = {
    "think": "<think>7 is first</think>7",
    "call": '<tool_call>{"name": "lookup", "arguments": {"q": "x"}}</tool_call>',
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tuner() -> tk.Tuner:
    return tk.Tuner("any-name", backend=tk.testing.FakeBackend(replies=REPLIES), progress=False)


def test_piped_the_thinking_goes_to_stderr_and_the_answer_alone_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    answer = _answer(_tuner(), [{"role": "user", "content": "think"}], {})
    out, err = capsys.readouterr()
    assert answer == "7" and out == "7\n"
    assert err == "thinking: 7 is first\n"


def test_in_a_terminal_the_thinking_comes_first_dimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    answer = _answer(_tuner(), [{"role": "user", "content": "think"}], {})
    assert answer == "7"
    assert screen.getvalue() == "\033[2mthinking: 7 is first\033[0m\n7\n"


def test_hidden_thinking_prints_nothing_but_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert _answer(_tuner(), [{"role": "user", "content": "think"}], {}, reasoning="hide") == "7"
    assert capsys.readouterr() == ("7\n", "")


def test_a_tool_call_is_announced_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    answer = _answer(_tuner(), [{"role": "user", "content": "call"}], {})
    out, err = capsys.readouterr()
    assert answer == "" and out == "\n"
    assert err == '[tool call: lookup({"q": "x"})]\n'
