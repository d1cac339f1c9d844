"""``tunekit chat PATH``: talk to a tuner saved by ``Tuner.save``, its answers streamed as they are generated.

In a terminal: a conversation with history; ``/reset`` forgets it, ``/system TEXT`` sets the system prompt (``/system``
alone removes it), ``/exit`` (or Ctrl-D) quits, Ctrl-C stops the answer being written. With piped standard input each
line is one user turn (commands work too) and each answer is printed on its own line; notices go to standard error.

A reasoning model's thinking (``<think>...</think>``, split off as ``generate`` splits it) is shown before the answer:
dimmed and labelled in a terminal, on standard error when the output is piped (standard output stays the answers), or
not at all with ``--reasoning hide``. Tool calls the model writes are announced on standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import tunekit as tk
from tunekit.cli.load_flags import add_load_flags, load_options

__all__ = ["add_chat_parser"]

_DIM, _DIM_END = "\033[2m", "\033[0m"  # ANSI faint, reset: the reasoning, in a terminal
_HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def _utf8(stream: TextIO) -> None:
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="replace")


def _read(interactive: bool) -> str | None:
    """The next line the user typed, None at the end of the input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            print(file=sys.stderr)
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def _answer(tuner: Any, messages: list[dict[str, str]], options: dict[str, Any], *, reasoning: str = "show") -> str:
    """Stream one answer to standard output; Ctrl-C stops it (what was written so far is kept). Returns the answer
    (without the reasoning, which the history does not keep: chat templates drop earlier turns' thinking)."""
    pieces: list[str] = []
    styled = sys.stdout.isatty()
    thinking = False  # a reasoning block is open on its stream
    where = sys.stdout if styled else sys.stderr  # piped: standard output carries the answers only
    parts = tuner.stream(messages, parts=True, **options)

    def close_thinking() -> None:
        nonlocal thinking
        if thinking:
            where.write(_DIM_END + "\n" if styled else "\n")
            where.flush()
            thinking = False

    try:
        for delta in parts:
            if delta.kind == "reasoning":
                if reasoning == "hide":
                    continue
                if not thinking:
                    where.write(_DIM + "thinking: " if styled else "thinking: ")
                    thinking = True
                where.write(delta.text)
                where.flush()
            elif delta.kind == "content":
                close_thinking()
                pieces.append(delta.text)
                sys.stdout.write(delta.text)
                sys.stdout.flush()
            elif delta.kind == "tool_call":
                close_thinking()
                function = (delta.call or {}).get("function", {})
                arguments = function.get("arguments", "")
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, ensure_ascii=False)
                print(f"[tool call: {function.get('name')}({arguments})]", file=sys.stderr)
    except KeyboardInterrupt:
        print(" [stopped]", end="", file=sys.stderr)
    finally:
        parts.close()
        close_thinking()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def _cmd_chat(args: argparse.Namespace) -> int:
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        _utf8(stream)
    interactive = sys.stdin.isatty()
    tuner = tk.load(args.path, base_model=args.base_model, **load_options(args))
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.temperature is not None:
        options.update(do_sample=True, temperature=args.temperature)
    system: str | None = args.system
    history: list[dict[str, str]] = []
    if interactive:
        print(f"tunekit chat: {args.path}; {_HELP}; Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            line = _read(interactive)
        except KeyboardInterrupt:  # at the prompt: a fresh line, the conversation goes on
            print(file=sys.stderr)
            continue
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        command, _, rest = text.partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history = []
            print("(conversation reset)", file=sys.stderr)
            continue
        if command == "/system":
            system = rest.strip() or None
            print("(system prompt set)" if system else "(system prompt removed)", file=sys.stderr)
            continue
        if command.startswith("/") and command[1:].isalpha():
            print(f"unknown command {command}; {_HELP}", file=sys.stderr)
            continue
        turn = {"role": "user", "content": line}
        messages = ([{"role": "system", "content": system}] if system else []) + [*history, turn]
        answer = _answer(tuner, messages, options, reasoning=args.reasoning)
        history += [turn, {"role": "assistant", "content": answer}]


def add_chat_parser(sub: Any) -> None:
    p = sub.add_parser(
        "chat", help="Chat with a saved tuner (tk.load): streamed answers, history, /reset, /system TEXT, /exit."
    )
    p.add_argument("path", help="A directory written by Tuner.save or `tunekit fit`.")
    p.add_argument("--system", default=None, help="The system prompt to start with (change it with /system TEXT).")
    p.add_argument("--max-new-tokens", type=int, default=512, help="Most tokens per answer (default 512).")
    p.add_argument("--temperature", type=float, help="Sample at this temperature (default: greedy).")
    p.add_argument(
        "--reasoning",
        choices=["show", "hide"],
        default="show",
        help="A reasoning model's thinking: shown before the answer (dimmed; on standard error when piped), or hidden.",
    )
    p.add_argument("--base-model", default=None, help="The base model, when the adapter's recorded base has moved.")
    add_load_flags(p)
    p.set_defaults(func=_cmd_chat)
