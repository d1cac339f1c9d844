"""Which characters of a rendered conversation train: each assistant turn's span, found without trusting the template.

For every assistant turn that trains, the conversation is rendered three ways: up to the turn with the generation
prompt (what a server sends the model), up to and including the turn, and whole. The turn's span starts where the
generation prompt ends (so the prompt served at inference is exactly the one trained on) and ends at the last control
token of the turn (its end of turn: the model learns to stop). The span is then checked: it must hold the turn's
content, its tool calls' names and, when kept, its reasoning, and end with a control token.

A turn that cannot be found that way in the whole conversation (the template renders it differently in history than
when it is the turn being generated: Qwen3 writes an empty ``<think></think>`` only on the last turn, and drops
earlier turns' reasoning) trains in a sequence of its own, the conversation up to that turn, rendered exactly as it
would be served. A turn that cannot be found even then fails closed: IncompatibleError naming the template.

Reasoning (``SFT(reasoning=...)``): ``"inference"`` (default) trains each turn with the history a server would show
it, earlier user turns' reasoning dropped (what Qwen3, DeepSeek-R1 and gpt-oss do), so a conversation whose earlier
turns reason trains as one sequence per user turn; ``"keep"`` renders all reasoning in place; ``"drop"`` trains the
answers without their reasoning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunekit.data.control_tokens import control_tokens
from tunekit.data.messages import Messages, strip_reasoning
from tunekit.data.templates import render, template_source
from tunekit.errors import DatasetError, IncompatibleError

__all__ = ["Reasoning", "Rendered", "TrainOn", "render_turns", "supervised_turns"]

Reasoning = Literal["inference", "keep", "drop"]
TrainOn = Literal["all_assistant", "last_assistant"]


@dataclass(frozen=True)
class Rendered:
    """One training sequence: the rendered ``messages`` and the character spans that train (one per turn)."""

    messages: tuple[dict[str, Any], ...]
    text: str
    spans: tuple[tuple[int, int], ...]


def supervised_turns(
    messages: Messages, trained: Sequence[bool | None] | None, train_on: TrainOn, *, row: int
) -> list[int]:
    """The indices of the assistant messages that train: as each said (``"train": false``), else as ``train_on``."""
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    flags = list(trained) if trained is not None else [None] * len(answers)
    if len(flags) != len(answers):
        raise DatasetError(f"row {row}: {len(flags)} training flags for {len(answers)} assistant turns", row=row)
    out = [
        k
        for n, (k, flag) in enumerate(zip(answers, flags))
        if (flag if flag is not None else (train_on == "all_assistant" or n == len(answers) - 1))
    ]
    if not out:
        raise DatasetError(
            f"row {row}: nothing in it is trained on (its last assistant turn says 'train': false and "
            f"SFT(train_on={train_on!r}) trains no other); let a turn train, or leave the row out",
            row=row,
        )
    return out


def _views(messages: Messages, turns: list[int], reasoning: Reasoning) -> list[tuple[list[dict[str, Any]], list[int]]]:
    """The sequences to render: (messages, the turns each trains)."""
    if reasoning == "drop":
        return [(strip_reasoning(messages), turns)]
    if reasoning == "keep" or not any(m.get("reasoning_content") for m in messages):
        return [(list(messages), turns)]
    users = [k for k, m in enumerate(messages) if m["role"] == "user"]
    query = {t: max(k for k in users if k < t) for t in turns}  # the user turn each answers
    groups: list[list[int]] = []
    for t in turns:
        if groups and query[groups[-1][0]] == query[t]:
            groups[-1].append(t)
        else:
            groups.append([t])
    views: list[list[int]] = []
    for group in groups:  # a later user turn would hide these turns' reasoning: close the sequence before it
        if views and not any(messages[t].get("reasoning_content") for t in views[-1]):
            views[-1] += group
        else:
            views.append(list(group))
    out = []
    for ts in views:
        last = query[ts[-1]]
        shown = [
            {k: v for k, v in m.items() if k != "reasoning_content"} if i < last and m["role"] == "assistant" else m
            for i, m in enumerate(messages[: ts[-1] + 1])
        ]
        out.append((shown, ts))
    return out


def _trailing_marker(body: str, markers: Sequence[str]) -> int | None:
    """The end of the last control token in ``body``, when only whitespace follows it."""
    best = None
    for marker in markers:
        at = body.rfind(marker)
        if at >= 0 and not body[at + len(marker) :].strip():
            end = at + len(marker)
            best = end if best is None else max(best, end)
    return best


def _where(prompt: str, full: str) -> str:
    """Where the generation prompt and the conversation part, for the error message."""
    k = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    if k >= len(prompt):
        return ""
    start = max(k - 30, 0)
    return f" (the prompt reads {prompt[start : k + 30]!r} where the conversation reads {full[start : k + 30]!r})"


def _problem(body: str, message: dict[str, Any]) -> str | None:
    """What of the turn is missing from its span, or None."""
    content = str(message.get("content") or "").strip()
    if content and content not in body:
        return "its content"
    for call in message.get("tool_calls", ()):
        if call["function"]["name"] not in body:
            return f"its call of {call['function']['name']!r}"
    reasoning = str(message.get("reasoning_content") or "").strip()
    if reasoning and reasoning not in body:
        return "its reasoning"
    return None


def _locate(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    turns: list[int],
    tools: Sequence[dict[str, Any]] | None,
    markers: Sequence[str],
) -> tuple[Rendered, dict[int, str]]:
    """The spans of ``turns`` in the rendering of ``messages``, and why each turn not found was not."""
    full = render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    failed: dict[int, str] = {}
    done = 0
    for t in turns:
        prompt = render(tokenizer, messages[:t], add_generation_prompt=True, tools=tools)
        turn = render(tokenizer, messages[: t + 1], add_generation_prompt=False, tools=tools)
        if not (full.startswith(prompt) and full.startswith(turn) and len(prompt) >= done and len(turn) > len(prompt)):
            failed[t] = "the conversation's text before it differs from the generation prompt" + _where(prompt, full)
            continue
        body = full[len(prompt) : len(turn)]
        end = _trailing_marker(body, markers)
        if end is None:
            failed[t] = (
                "it does not end with a control token, so the model would never learn to stop (the template ends an "
                "assistant turn with no end-of-turn token)"
            )
            continue
        missing = _problem(body[:end], messages[t])
        if missing is not None:
            failed[t] = f"the template does not write {missing} there"
            continue
        spans.append((len(prompt), len(prompt) + end))
        done = len(prompt) + end
    return Rendered(tuple(messages), full, tuple(spans)), failed


def render_turns(
    tokenizer: Any,
    messages: Messages,
    turns: list[int],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    reasoning: Reasoning = "inference",
    row: int | None = None,
) -> list[Rendered]:
    """The sequences that train ``turns`` of ``messages`` (usually one), each with its supervised spans."""
    markers = control_tokens(tokenizer)
    out: list[Rendered] = []
    for shown, ts in _views(messages, turns, reasoning):
        whole = shown[: ts[-1] + 1]
        rendered, failed = _locate(tokenizer, whole, ts, tools, markers)
        if tools:
            text = rendered.text
            absent = [t["function"]["name"] for t in tools if t["function"]["name"] not in text]
            if absent:
                raise IncompatibleError(
                    f"row {row}: {template_source(tokenizer)} does not write the row's tools (no {absent[0]!r} in "
                    "its output), so the model would learn calls without their schemas; use a template that "
                    "renders tools=... (tunekit's built-in one does: pass template='chatml')"
                )
        if len(failed) < len(ts):
            out.append(rendered)
        for t in ts:
            if t not in failed:
                continue
            alone, why = _locate(tokenizer, shown[: t + 1], [t], tools, markers)
            if why:
                hint = (
                    "; train without it (SFT(reasoning='drop')) or use a template that writes reasoning"
                    if "reasoning" in why[t]
                    else "; use a template that renders tool calls (tunekit's built-in one does: pass "
                    "template='chatml')"
                    if "call of" in why[t]
                    else "; fix the template or pass template=..."
                )
                raise IncompatibleError(
                    f"row {row}: cannot tell which tokens of assistant message {t + 1} to train on: {why[t]} "
                    f"({template_source(tokenizer)}){hint}"
                )
            out.append(alone)
    return out
