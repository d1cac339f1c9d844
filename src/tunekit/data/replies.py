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

__all__ = ["Reply", "parse_reply"]

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"


class Reply(str):
    """The answer a chat model wrote (a ``str``), with ``reasoning`` (or None) and ``tool_calls`` (OpenAI's shape,
    ``[{"type": "function", "function": {"name", "arguments"}}]``, ready to append to the conversation as the
    assistant message's ``tool_calls``) and ``raw`` (the whole text generated, markers included).

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

    def __new__(
        cls, text: str, *, reasoning: str | None = None, tool_calls: Sequence[dict[str, Any]] = (), raw: str = ""
    ) -> Reply:
        out = super().__new__(cls, text)
        out.reasoning = reasoning
        out.tool_calls = list(tool_calls)
        out.raw = raw or text
        return out

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
