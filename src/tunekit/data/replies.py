"""What a chat model wrote, split into its answer, its reasoning and its tool calls.

``Tuner.generate`` returns a :class:`Reply` for a chat prompt: a ``str`` (the answer, exactly what it returned
before tool calls and reasoning were parsed) that also carries ``reasoning`` and ``tool_calls``.

Formats read (the ones current templates teach):

- reasoning: ``<think>...</think>`` at the start, or text before a ``</think>`` when the generation prompt
  opened the block (Qwen3, DeepSeek-R1);
- tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (tunekit's ChatML, Qwen2.5 / Qwen3,
  Hermes, SmolLM3), Mistral's ``[TOOL_CALLS][{...}]``, and, when tools were offered, a whole answer that is one
  JSON object with ``name`` and ``parameters`` / ``arguments`` (Llama 3.1 / 3.2).

A call whose JSON does not parse stays in the text: nothing the model wrote is dropped. This parses output in a
few known formats on purpose (transformers' ``parse_response`` needs a per-model schema that tokenizers rarely ship).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["Reply", "ReplyDelta", "ReplyStream", "parse_reply"]

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"


class Reply(str):
    """The answer a chat model wrote (a ``str``), with ``reasoning`` (or None) and ``tool_calls`` (OpenAI's shape,
    ``[{"type": "function", "function": {"name", "arguments"}}]``, ready to append to the conversation as the
    assistant message's ``tool_calls``) and ``raw`` (the whole text generated, markers included).

    ``finish_reason`` says why generation ended: ``"stop"`` (the model ended its turn, or a stop string matched) or
    ``"length"`` (``max_new_tokens`` ran out first: an answer that never ends is cut here, see the troubleshooting
    page); ``prompt_tokens`` and ``completion_tokens`` count the tokens read and written (the end-of-turn token
    included). The three are None on a Reply made by hand.

    Example:
        >>> import tunekit as tk
        >>> reply = tk.Reply("", tool_calls=[{"type": "function", "function": {"name": "get_weather",
        ...                                   "arguments": {"city": "Paris"}}}])
        >>> reply == "", reply.tool_calls[0]["function"]["arguments"]
        (True, {'city': 'Paris'})
        >>> reply.message()["role"]
        'assistant'
    """

    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    raw: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None

    def __new__(
        cls,
        text: str,
        *,
        reasoning: str | None = None,
        tool_calls: Sequence[dict[str, Any]] = (),
        raw: str = "",
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Reply:
        out = super().__new__(cls, text)
        out.reasoning = reasoning
        out.tool_calls = list(tool_calls)
        out.raw = raw or text
        out.finish_reason = finish_reason
        out.prompt_tokens = prompt_tokens
        out.completion_tokens = completion_tokens
        return out

    def counted(self, *, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Reply:
        """This reply with why generation ended and its token counts."""
        return Reply(
            str(self),
            reasoning=self.reasoning,
            tool_calls=self.tool_calls,
            raw=self.raw,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def message(self) -> dict[str, Any]:
        """The reply as an assistant message, to continue the conversation with."""
        out: dict[str, Any] = {"role": "assistant", "content": str(self)}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.reasoning:
            out["reasoning_content"] = self.reasoning
        return out


def _call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"type": "function", "function": {"name": obj["name"], "arguments": args}}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_reply(
    raw: str, special: Sequence[str] = (), *, tools_offered: bool = False, plain: str | None = None
) -> Reply:
    """Split ``raw`` (generated text with special tokens kept, cut at the end of turn) into a :class:`Reply`;
    ``special``: the tokenizer's special-token strings, removed from the answer as ``skip_special_tokens`` would.
    ``plain``: the text decoded without special tokens, the answer when there is neither reasoning nor a call."""
    text, reasoning = raw, None
    think = _THINK.match(text)
    if think:
        reasoning, text = think.group(1).strip("\n"), text[think.end() :]
    elif "</think>" in text and "<think>" not in text:  # the generation prompt opened the block
        reasoning, text = text.split("</think>", 1)
        reasoning = reasoning.strip("\n")
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        call = _call(_json(match.group(1)))
        if call is None:
            return match.group(0)  # not a call tunekit can read: left in the text
        calls.append(call)
        return ""

    text = _TOOL_CALL.sub(take, text)
    if _MISTRAL in text:
        head, _, tail = text.partition(_MISTRAL)
        found = _json(tail.strip())
        parsed = [_call(c) for c in (found if isinstance(found, list) else [found])]
        if found is not None and all(parsed):
            calls += [c for c in parsed if c is not None]
            text = head
    if tools_offered and not calls:
        whole = _call(_json(text.strip()))
        if whole is not None:
            calls.append(whole)
            text = ""
    if not calls and reasoning is None:
        return Reply(plain if plain is not None else _without(text, special), raw=raw)
    reasoning = _without(reasoning, special) if reasoning is not None else None
    return Reply(_without(text, special).strip(), reasoning=reasoning, tool_calls=calls, raw=raw)


def _without(text: str, special: Sequence[str]) -> str:
    """``text`` with the special-token strings removed (the longest first, as a tokenizer matches them)."""
    for token in sorted((t for t in special if t), key=len, reverse=True):
        text = text.replace(token, "")
    return text


class ReplyDelta:
    """One piece of a reply as it streams (``Tuner.stream(prompt, parts=True)``): ``kind`` is ``"reasoning"`` or
    ``"content"`` (with ``text``), ``"tool_call"`` (with ``call``, one whole call in :class:`Reply`'s shape, sent
    once its markup is complete), or ``"end"``, the last piece, with ``reply``: the whole :class:`Reply` (why it
    ended, the tokens counted).

    Example:
        >>> import tunekit as tk
        >>> fake = tk.testing.FakeBackend(replies={"hi": "hello there"})
        >>> tuner = tk.Tuner("any-name", backend=fake, progress=False)
        >>> [(d.kind, d.text) for d in tuner.stream("hi", parts=True)]
        [('content', 'hell'), ('content', 'o th'), ('content', 'ere'), ('end', '')]
    """

    __slots__ = ("call", "kind", "reply", "text")

    def __init__(
        self, kind: str, text: str = "", call: dict[str, Any] | None = None, reply: Reply | None = None
    ) -> None:
        self.kind = kind
        self.text = text
        self.call = call
        self.reply = reply

    def __repr__(self) -> str:
        extra = f", {self.call!r}" if self.call else f", reply={self.reply!r}" if self.reply is not None else ""
        return f"ReplyDelta({self.kind!r}, {self.text!r}{extra})"


_OPEN, _CLOSE = "<think>", "</think>"
_CALL_OPEN, _CALL_CLOSE = "<tool_call>", "</tool_call>"


def _held(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of one of ``markers`` (held back until the
    next piece tells)."""
    longest = max((len(m) for m in markers), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(m.startswith(tail) for m in markers):
            return k
    return 0


class _View:
    """What of a reply is certain after a prefix of its raw text: reasoning, answer and whole tool calls."""

    def __init__(self, reasoning: str, content: str, calls: list[dict[str, Any]]) -> None:
        self.reasoning, self.content, self.calls = reasoning, content, calls


class ReplyStream:
    """Split a reply into :class:`ReplyDelta` pieces while it is generated, by the rules :func:`parse_reply` applies
    to the whole text: reasoning streams as it comes, the answer too, a tool call once its markup closes (a Mistral
    ``[TOOL_CALLS]`` list, or a Llama JSON answer when tools were offered, at the end). Text that could still turn
    out to be a marker, a special token or whitespace the answer drops is held back until the next piece tells.

    ``opened``: the generation prompt opened a reasoning block (it ends with ``<think>``). :meth:`finish` takes the
    :class:`Reply` the whole generation parsed to and sends what is left, so that the pieces, joined, are that
    reply's reasoning, answer and calls.
    """

    def __init__(self, special: Sequence[str] = (), *, tools_offered: bool = False, opened: bool = False) -> None:
        self.special = tuple(t for t in special if t)
        self.tools_offered = tools_offered
        self.opened = opened
        self.raw = ""
        self.sent = _View("", "", [])

    def feed(self, piece: str) -> list[ReplyDelta]:
        """The new certain pieces once ``piece`` (the next raw text, markers included) is added."""
        self.raw += piece
        return self._send(self._view(self.raw))

    def finish(self, reply: Reply) -> list[ReplyDelta]:
        """The rest of ``reply`` (the whole generation, parsed) not sent yet."""
        return self._send(_View(reply.reasoning or "", str(reply), list(reply.tool_calls)))

    def _send(self, view: _View) -> list[ReplyDelta]:
        out: list[ReplyDelta] = []
        sent = self.sent
        if view.reasoning.startswith(sent.reasoning) and len(view.reasoning) > len(sent.reasoning):
            out.append(ReplyDelta("reasoning", view.reasoning[len(sent.reasoning) :]))
            sent.reasoning = view.reasoning
        for call in view.calls[len(sent.calls) :]:
            out.append(ReplyDelta("tool_call", call=call))
            sent.calls.append(call)
        if view.content.startswith(sent.content) and len(view.content) > len(sent.content):
            out.append(ReplyDelta("content", view.content[len(sent.content) :]))
            sent.content = view.content
        return out

    def _view(self, raw: str) -> _View:
        reasoning: str | None = None
        rest: str | None
        if self.opened or (_CLOSE in raw and _OPEN not in raw):
            head, found, tail = raw.partition(_CLOSE)
            if found:
                reasoning, rest = head.strip("\n"), tail
            else:
                return _View(self._partial(head, (_CLOSE,)), "", [])
        else:
            start = raw.lstrip()
            if start.startswith(_OPEN):
                head, found, tail = start[len(_OPEN) :].partition(_CLOSE)
                if not found:
                    return _View(self._partial(head, (_CLOSE,)), "", [])
                reasoning, rest = head.strip("\n"), tail
            elif _OPEN.startswith(start):
                return _View("", "", [])
            else:
                rest = raw
        reasoning = _without(reasoning, self.special) if reasoning is not None else ""
        content, calls = self._content(rest)
        if self.tools_offered and not calls and content.lstrip().startswith("{"):
            content = ""  # perhaps a whole-answer JSON call (Llama): known at the end
        if not content.strip():
            content = ""
        elif reasoning or calls:
            content = content.lstrip()
        return _View(reasoning, content.rstrip(), calls)

    def _partial(self, text: str, markers: tuple[str, ...]) -> str:
        """Reasoning not closed yet: what of it is certain."""
        text = text[: len(text) - _held(text, (*markers, *self.special))]
        return _without(text, self.special).lstrip("\n").rstrip("\n")

    def _content(self, rest: str) -> tuple[str, list[dict[str, Any]]]:
        out, calls, pos = "", [], 0
        while True:
            i, j = rest.find(_CALL_OPEN, pos), rest.find(_MISTRAL, pos)
            if i >= 0 and (j < 0 or i < j):
                out += rest[pos:i]
                end = rest.find(_CALL_CLOSE, i)
                if end < 0:
                    break  # a call still being written
                end += len(_CALL_CLOSE)
                call = _call(_json(rest[i + len(_CALL_OPEN) : end - len(_CALL_CLOSE)].strip()))
                if call is None:
                    out += rest[i:end]
                else:
                    calls.append(call)
                pos = end
            elif j >= 0:
                out += rest[pos:j]
                break  # Mistral's call list runs to the end
            else:
                tail = rest[pos:]
                out += tail[: len(tail) - _held(tail, (_CALL_OPEN, _MISTRAL, *self.special))]
                break
        return _without(out, self.special), calls
