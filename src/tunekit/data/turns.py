"""Which characters of a rendered conversation train: each assistant turn's span, found without trusting the template.

For every assistant turn that trains, the conversation is rendered three ways: up to the turn with the generation
prompt (what a server sends the model), up to and including the turn, and whole (the last turn's rendering is the
whole one; and for a plain last turn whose template a probe showed writes the generation prompt exactly up to the
turn's content, the generation prompt is read from the whole rendering: one render per row, see :func:`prompt_in`).
The turn's span starts where the generation prompt ends (so the prompt served at inference is exactly the one trained
on) and ends at the last control token of the turn (its end of turn: the model learns to stop). The span is then
checked: it must hold the turn's content, its tool calls' names and, when kept, its reasoning, and end with a control
token.

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
from tunekit.data.templates import render, template_source, try_render
from tunekit.errors import DatasetError, IncompatibleError

__all__ = ["Reasoning", "Rendered", "TrainOn", "prompt_in", "render_turns", "supervised_turns"]

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


def _probe(tokenizer: Any, roles: tuple[str, ...]) -> str | None:
    """What the template writes after the last message's content in a conversation of ``roles`` (its end of turn),
    when the generation prompt before that message is exactly the whole rendering up to its content; else None.
    Found once per tokenizer, template, options and roles, by rendering two conversations of plain sentinels (kept
    on the tokenizer: a key of a few names, read per row)."""
    probes = tokenizer.__dict__.setdefault("_tunekit_prompt_probes", {})
    template = tokenizer.chat_template
    template = template if isinstance(template, str) else repr(template)  # a dict of named templates
    key = (template, repr(getattr(tokenizer, "_tunekit_template_options", None)), roles)
    if key in probes:
        return probes[key]  # type: ignore[no-any-return]
    tails: set[str | None] = set()
    for variant in ("first", "second one"):
        probe = [{"role": r, "content": f"tunekit probe {variant} {k}"} for k, r in enumerate(roles)]
        try:
            prompt = try_render(tokenizer, probe[:-1], add_generation_prompt=True)
            full = try_render(tokenizer, probe, add_generation_prompt=False)
        except IncompatibleError:
            prompt = full = None
        content = probe[-1]["content"]
        at = full.rfind(content) if full is not None else -1
        if prompt is None or full is None or at < 0 or full[:at] != prompt:
            tails.add(None)
        else:
            tails.add(full[at + len(content) :])
    tail = tails.pop() if len(tails) == 1 else None
    probes[key] = tail
    return tail


def prompt_in(tokenizer: Any, messages: Sequence[dict[str, Any]], full: str) -> str | None:
    """The generation prompt before the last message of ``messages``, read from their whole rendering ``full``
    instead of rendered again (one render per row, not two), where that is exact: a probe of the template with the
    same roles (:func:`_probe`) showed the generation prompt is what precedes the last message's content, and the row
    gives the template nothing else to read (each message only a role and plain text without markup or surrounding
    space; no tools, reasoning or images). None: render it."""
    for m in messages:
        content = m.get("content")
        if m.keys() - {"role", "content"} or not isinstance(content, str) or "<" in content or ">" in content:
            return None
    content = messages[-1]["content"]
    if not content or content != content.strip():
        return None
    tail = _probe(tokenizer, tuple(m["role"] for m in messages))
    if tail is None or not full.endswith(content + tail):
        return None
    return full[: len(full) - len(tail) - len(content)]


def _locate(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    turns: list[int],
    tools: Sequence[dict[str, Any]] | None,
    markers: Sequence[str],
    full: str | None = None,
) -> tuple[Rendered, dict[int, str]]:
    """The spans of ``turns`` in the rendering of ``messages`` (``full``, when the caller rendered it), and why each
    turn not found was not."""
    if full is None:
        full = render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    failed: dict[int, str] = {}
    done = 0
    for t in turns:
        prompt = prompt_in(tokenizer, messages, full) if t + 1 == len(messages) and not tools else None
        if prompt is None:
            prompt = render(tokenizer, messages[:t], add_generation_prompt=True, tools=tools)
        last = t + 1 == len(messages)  # the last turn's rendering is the whole one's: render it once
        turn = full if last else render(tokenizer, messages[: t + 1], add_generation_prompt=False, tools=tools)
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
    markers: Sequence[str] | None = None,
    whole: str | None = None,
) -> list[Rendered]:
    """The sequences that train ``turns`` of ``messages`` (usually one), each with its supervised spans
    (``markers``: the tokenizer's control tokens, when the caller has them; ``whole``: the rendering of all of
    ``messages`` without tools, when the caller rendered it, e.g. a batch at a time)."""
    markers = control_tokens(tokenizer) if markers is None else markers
    out: list[Rendered] = []
    for shown, ts in _views(messages, turns, reasoning):
        upto = shown[: ts[-1] + 1]
        given = whole if whole is not None and not tools and upto == list(messages) else None
        rendered, failed = _locate(tokenizer, upto, ts, tools, markers, given)
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
