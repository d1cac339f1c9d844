"""Chat messages as tunekit reads them: roles, tool calls, tool results, reasoning and per-turn loss.

One message model for every chat layout (OpenAI ``role`` / ``content`` and ShareGPT ``from`` / ``value``, told
apart per message), in every field that holds messages (``messages``, ``conversations``, ``prompt``, ``chosen``,
``rejected``, ``completion``). A normalised message is a dict:

- ``role``: ``system``, ``user``, ``assistant`` or ``tool``; ``content``: a string (a list of text parts is
  joined; an assistant message that only calls tools has ``""``). A user message may hold images as content parts
  (``{"type": "image", "image": ...}``, OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}``); its content
  is then the list of text and image parts in order, which :mod:`tunekit.data.vision` reads into the example's
  images.
- assistant messages may carry ``tool_calls`` (``[{"type": "function", "function": {"name", "arguments"}}]``,
  ``arguments`` always an object, the way transformers passes calls to chat templates; ``id`` kept when given)
  and ``reasoning_content`` (read from ``reasoning_content``, ``reasoning`` or ``thinking``, or split off an
  inline ``<think>...</think>`` at the start of the content).
- tool messages may carry ``tool_call_id`` and ``name``.

ShareGPT / LLaMA-Factory roles: ``human`` and ``gpt``, ``function_call`` (an assistant turn whose value is the
JSON call, or a list of calls) and ``observation`` (a tool result). Per-turn loss: an assistant message may say
``"train": false`` (also LLaMA-Factory's ``"loss_weight": 0`` / ``1`` and OpenAI's ``"weight": 0`` / ``1``).

Turn order: after an optional leading system message, a user turn, then assistant turns; an assistant turn that
calls tools is followed by one or more tool results, then by the assistant again.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunekit.data.columns import MEDIA_UNSUPPORTED, did_you_mean, filled, no_duplicate_keys, parse_json_cell
from tunekit.errors import DatasetError

__all__ = [
    "IMAGE_PARTS",
    "REASONING_KEYS",
    "ROLES",
    "Messages",
    "parse_messages",
    "parse_tools",
    "strip_reasoning",
    "tool_names",
]

ROLES = ("system", "user", "assistant", "tool")
# Role names of other layouts, and tunekit's. "function_call" is an assistant turn that calls tools.
_ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",  # OpenAI's legacy function-result role
    "ipython": "tool",  # Llama 3.1's name for tool results
    "function_call": "assistant",
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_TRAIN_KEYS = ("train", "loss_weight", "weight")
_KNOWN_KEYS = frozenset(
    {"role", "content", "from", "value", "name", "tool_calls", "tool_call_id", "function_call", "id"}
    | set(REASONING_KEYS)
    | set(_TRAIN_KEYS)
)
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
IMAGE_PARTS = frozenset({"image", "image_url", "input_image"})
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)

Messages = tuple[dict[str, Any], ...]


def _json(value: Any, where: str, i: int, name: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value, object_pairs_hook=no_duplicate_keys)
    except ValueError as e:
        raise DatasetError(
            f"{where}: {what} is not valid JSON ({e}); write it as a JSON object", row=i, field=name
        ) from None


def parse_tools(value: Any, i: int, name: str = "tools") -> tuple[dict[str, Any], ...] | None:
    """A row's ``tools``: a list of function schemas (OpenAI's ``{"type": "function", "function": {...}}`` or the
    bare ``{"name", "description", "parameters"}`` LLaMA-Factory writes), or a JSON string of one. Returned in
    OpenAI's shape, which chat templates read; None when the cell is empty."""
    if not filled(value):
        return None
    where = f"row {i}, field {name!r}"
    tools = _json(value, where, i, name, "the tools list")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not tools:
        raise DatasetError(
            f"{where}: expected a list of function schemas (or a JSON string of one), got {type(tools).__name__}",
            row=i,
            field=name,
        )
    out: list[dict[str, Any]] = []
    for k, tool in enumerate(tools, 1):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        fn = fn if isinstance(fn, dict) else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise DatasetError(
                f"{where}, tool {k}: expected a function schema with a 'name' ({{'type': 'function', 'function': "
                f"{{'name': ..., 'description': ..., 'parameters': {{...}}}}}}), got {tool!r:.80}",
                row=i,
                field=name,
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise DatasetError(
                f"{where}, tool {fn['name']!r}: 'parameters' must be a JSON schema object, got {params!r:.60}",
                row=i,
                field=name,
            )
        out.append({"type": "function", "function": dict(fn)})
    names = [t["function"]["name"] for t in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetError(f"{where}: the tool {twice[0]!r} is listed twice; keep one", row=i, field=name)
    return tuple(out)


def tool_names(tools: tuple[dict[str, Any], ...] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or ()]


def _call(raw: Any, where: str, i: int, name: str) -> dict[str, Any]:
    """One tool call in OpenAI's shape, from ``{"type": "function", "function": {...}}`` or a bare
    ``{"name", "arguments"}`` (``parameters`` accepted for ``arguments``, as Llama writes it)."""
    fn = raw.get("function") if isinstance(raw, dict) and isinstance(raw.get("function"), dict) else raw
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise DatasetError(
            f"{where}: a tool call needs a function 'name' and 'arguments' ({{'type': 'function', 'function': "
            f"{{'name': ..., 'arguments': {{...}}}}}}), got {raw!r:.80}",
            row=i,
            field=name,
        )
    extra = sorted(k for k in fn if k not in ("name", "arguments", "parameters") and filled(fn[k]))
    if extra:
        raise DatasetError(
            f"{where}: unknown key {extra[0]!r} in the call of {fn['name']!r}; a call holds 'name' and 'arguments'",
            row=i,
            field=name,
        )
    args = fn.get("arguments", fn.get("parameters", {}))
    args = _json(args, where, i, name, f"the arguments of {fn['name']!r}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise DatasetError(
            f"{where}: the arguments of {fn['name']!r} must be a JSON object, got {args!r:.60}", row=i, field=name
        )
    call: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(raw, dict) and filled(raw.get("id")):
        call["id"] = str(raw["id"])
    return call


def _calls(value: Any, where: str, i: int, name: str) -> list[dict[str, Any]]:
    calls = _json(value, where, i, name, "the tool call")
    calls = calls if isinstance(calls, list) else [calls]
    if not calls:
        raise DatasetError(f"{where}: an empty list of tool calls", row=i, field=name)
    return [_call(c, where, i, name) for c in calls]


def _image_part(part: dict[str, Any], where: str, i: int, name: str) -> dict[str, Any]:
    """An image part as ``{"type": "image", "image": <the image as given, or None: a place for the row's
    'images' column>}``, from OpenAI's ``image_url`` (``{"url": ...}``, ``detail`` ignored: an API setting), the
    Responses API's ``input_image`` and the ``image`` parts of TRL and transformers (``image``, ``url`` or
    ``path``)."""
    kind = part["type"]
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) and set(url) <= {"url", "detail"} else url
        keys = {"type", "image_url"}
    elif kind == "input_image":
        url, keys = part.get("image_url"), {"type", "image_url", "detail"}
    else:
        given_keys = [k for k in ("image", "url", "path") if part.get(k) is not None]
        if len(given_keys) > 1:
            raise DatasetError(f"{where}: an image part with both {given_keys}; keep one", row=i, field=name)
        url, keys = (part[given_keys[0]] if given_keys else None), {"type", "image", "url", "path"}
    extra = sorted(str(k) for k, v in part.items() if k not in keys and filled(v))  # Arrow fills others with None
    if extra:
        raise DatasetError(
            f"{where}: unknown key {extra[0]!r} in an {kind!r} part; tunekit never drops a key silently: remove it",
            row=i,
            field=name,
        )
    if kind != "image" and not (isinstance(url, str) and url.strip()):
        raise DatasetError(
            f"{where}: an {kind!r} part needs the image's URL (a path, an http(s) URL or a data:image/...;base64 "
            f"URL), got {url!r:.60}",
            row=i,
            field=name,
        )
    return {"type": "image", "image": url}


def _parts(value: list[Any], where: str, i: int, name: str, role: str) -> str | list[dict[str, Any]]:
    """A content list: text parts joined into one string; with images, text and image parts in order."""
    out: list[dict[str, Any]] = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise DatasetError(f"{where}: a text part without a 'text' string", row=i, field=name)
            if out and out[-1]["type"] == "text":
                out[-1] = {"type": "text", "text": out[-1]["text"] + text}
            else:
                out.append({"type": "text", "text": text})
        elif kind in IMAGE_PARTS:
            if role != "user":
                raise DatasetError(
                    f"{where}: an image in the {role}'s message; images go in user turns (the model reads them, and "
                    "writes text)",
                    row=i,
                    field=name,
                )
            out.append(_image_part(part, where, i, name))
        else:
            raise DatasetError(
                f"{where}: a content part of type {kind!r}: "
                f"{MEDIA_UNSUPPORTED.replace('remove the column to train on the rest', 'remove the part')}; the "
                f"parts tunekit reads are {sorted(_TEXT_PARTS | IMAGE_PARTS)}",
                row=i,
                field=name,
            )
    if any(p["type"] == "image" for p in out):
        return out
    return "".join(p["text"] for p in out)


def _content(value: Any, where: str, i: int, name: str, role: str, key: str = "content") -> str | list[dict[str, Any]]:
    if value is None and role in ("assistant", "tool"):
        return ""
    if isinstance(value, list):
        return _parts(value, where, i, name, role)
    if role == "tool" and isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)  # a tool's JSON result, as templates show it
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {key!r} must be a string, got {type(value).__name__}", row=i, field=name)
    return value


def _train_flag(m: dict[str, Any], role: str, where: str, i: int, name: str) -> bool | None:
    """The message's own say on whether it trains (``train``, ``loss_weight``, ``weight``), or None."""
    said: dict[str, bool] = {}
    for key in _TRAIN_KEYS:
        value = m.get(key)
        if value is None:
            continue
        if key == "train" and isinstance(value, bool):
            said[key] = value
        elif key != "train" and isinstance(value, (bool, int, float)) and value in (0, 1):
            said[key] = bool(value)
        else:
            want = "true or false" if key == "train" else "0 (do not train on this turn) or 1 (train on it)"
            raise DatasetError(f"{where}: {key!r} must be {want}, got {value!r:.60}", row=i, field=name)
    if not said:
        return None
    if role != "assistant":
        key = next(iter(said))
        raise DatasetError(
            f"{where}: {key!r} is only read on assistant messages (the turns trained on), not on a {role} message; "
            "remove it",
            row=i,
            field=name,
        )
    if len(set(said.values())) > 1:
        raise DatasetError(f"{where}: {sorted(said)} disagree on whether this turn trains; keep one", row=i, field=name)
    return next(iter(said.values()))


def _message(m: Any, where: str, i: int, name: str) -> tuple[dict[str, Any], bool | None]:
    if not isinstance(m, dict):
        raise DatasetError(f"{where}: expected an object with 'role' and 'content'", row=i, field=name)
    rk, ck = ("role", "content") if "role" in m or "from" not in m else ("from", "value")
    if rk not in m:
        keys = [k for k in m if k not in (rk, ck)]
        hint = "".join(did_you_mean(k, {rk, ck}) for k in keys)
        raise DatasetError(f"{where}: expected an object with {rk!r} and {ck!r}{hint}", row=i, field=name)
    raw_role = m[rk]
    role = _ROLE_NAMES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        known = list(ROLES) if rk == "role" else ["system", "human", "gpt", "function_call", "observation"]
        raise DatasetError(f"{where}: unknown role {raw_role!r}; expected one of {known}", row=i, field=name)
    if ck not in m and not (role == "assistant" and filled(m.get("tool_calls"))):
        hint = "".join(did_you_mean(k, {rk, ck}) for k in m if k not in (rk, ck))
        raise DatasetError(f"{where}: expected an object with {rk!r} and {ck!r}{hint}", row=i, field=name)
    for key, value in m.items():
        if key in _KNOWN_KEYS and key not in {"role", "content", "from", "value"} - {rk, ck}:
            continue
        if filled(value):
            raise DatasetError(
                f"{where}: unknown key {key!r}{did_you_mean(key, set(_KNOWN_KEYS))}; a message holds {rk!r}, "
                f"{ck!r}, and where they apply 'tool_calls', 'tool_call_id', 'name', 'reasoning_content' and "
                "'train', and tunekit never drops a key silently: remove it",
                row=i,
                field=name,
            )
    out: dict[str, Any] = {"role": role}
    if raw_role == "function_call":  # ShareGPT: the value is the call (a JSON object, or a list of them)
        out["content"] = ""
        out["tool_calls"] = _calls(m.get(ck), where, i, name)
    else:
        out["content"] = _content(m.get(ck), where, i, name, role, ck)
    calls = m.get("tool_calls") if filled(m.get("tool_calls")) else m.get("function_call")  # OpenAI's legacy key
    if filled(calls):
        if role != "assistant" or raw_role == "function_call":
            raise DatasetError(f"{where}: only an assistant message calls tools", row=i, field=name)
        out["tool_calls"] = _calls(calls, where, i, name)
    reasoning = {k: m[k] for k in REASONING_KEYS if filled(m.get(k))}
    if reasoning and role != "assistant":
        raise DatasetError(f"{where}: {next(iter(reasoning))!r} is read on assistant messages only", row=i, field=name)
    if len(reasoning) > 1:
        raise DatasetError(f"{where}: both {sorted(reasoning)}; keep one", row=i, field=name)
    if role == "assistant":
        think = _THINK.match(out["content"])
        if think and reasoning:
            raise DatasetError(
                f"{where}: reasoning both inline (<think>...</think>) and in {next(iter(reasoning))!r}; keep one",
                row=i,
                field=name,
            )
        text = next(iter(reasoning.values())) if reasoning else (think.group(1) if think else None)
        if think:
            out["content"] = out["content"][think.end() :]
        if text is not None:
            if not isinstance(text, str):
                raise DatasetError(f"{where}: the reasoning must be a string, got {text!r:.60}", row=i, field=name)
            if text.strip():
                out["reasoning_content"] = text.strip("\n")
        if not out["content"].strip() and "tool_calls" not in out:
            raise DatasetError(f"{where}: empty assistant message; nothing to learn from", row=i, field=name)
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if filled(m.get(key)):
                out[key] = str(m[key])
    elif filled(m.get("tool_call_id")):
        raise DatasetError(f"{where}: 'tool_call_id' belongs on a tool message", row=i, field=name)
    return out, _train_flag(m, role, where, i, name)


def parse_messages(
    msgs: Any, i: int, name: str, *, first: str, last: str, tools: tuple[dict[str, Any], ...] | None = None
) -> tuple[Messages, tuple[bool | None, ...]]:
    """Validated messages and, per message, whether it said it trains (None: it did not say).

    ``first`` / ``last``: ``user`` / ``assistant`` for a whole conversation, ``user`` / ``user`` for a prompt (which
    may also end with tool results: the assistant answers them), ``assistant`` / ``assistant`` for an answer.
    ``tools``: the row's tools; a call of a function not among them is refused."""
    if isinstance(msgs, str) and msgs.strip().startswith("["):
        msgs = parse_json_cell(msgs, i, name)  # a CSV cell (or a double-encoded column) holding the JSON list
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"row {i}, field {name!r}: expected a non-empty list of messages", row=i, field=name)
    out: list[dict[str, Any]] = []
    flags: list[bool | None] = []
    for j, m in enumerate(msgs):
        msg, flag = _message(m, f"row {i}, field {name!r}, message {j + 1}", i, name)
        out.append(msg)
        flags.append(flag)
    _check_order(out, i, name, first=first, last=last)
    known = tool_names(tools)
    for j, msg in enumerate(out):
        for call in msg.get("tool_calls", ()):
            called = call["function"]["name"]
            if tools is not None and called not in known:
                raise DatasetError(
                    f"row {i}, field {name!r}, message {j + 1}: calls {called!r}, which is not among the row's tools "
                    f"{known}{did_you_mean(called, frozenset(known))}; fix the call or add its schema to 'tools'",
                    row=i,
                    field=name,
                )
    return tuple(out), tuple(flags)


def _check_order(out: list[dict[str, Any]], i: int, name: str, *, first: str, last: str) -> None:
    roles = [m["role"] for m in out]
    lead = 1 if roles[0] == "system" and first == "user" else 0
    if "system" in roles[lead:]:
        where = "may only come first" if first == "user" else "cannot be part of an answer"
        raise DatasetError(f"row {i}, field {name!r}: a system message {where}", row=i, field=name)
    expected = {first}
    previous = None
    for k in range(lead, len(out)):
        role = roles[k]
        if role not in expected:
            shown = " or ".join(repr(r) for r in sorted(expected))
            other = "assistant" if first == "user" else "user"
            why = f"turns must alternate {first}, {other}, ..."
            if role == "tool" or any(m["role"] == "tool" or m.get("tool_calls") for m in out):
                why = (
                    "a tool result answers an assistant turn that calls tools"
                    if role == "tool"
                    else "turns alternate user, assistant, ..., and an assistant turn that calls tools is followed "
                    "by the tool results, then by the assistant again"
                )
            raise DatasetError(
                f"row {i}, field {name!r}: roles out of order at message {k + 1} (got {role!r}, expected {shown}); "
                f"{why}",
                row=i,
                field=name,
            )
        if role == "user":
            expected = {"assistant"}
        elif role == "assistant":
            expected = {"tool"} if out[k].get("tool_calls") else {"user"}
        else:
            expected = {"tool", "assistant"}
        previous = role
    ends = {"assistant": {"assistant"}, "user": {"user", "tool"}}[last]
    if previous not in ends:
        what = {
            ("user", "assistant"): "the conversation must end with an assistant message (the text to learn); add "
            "the answer",
            ("user", "user"): "the prompt must end with a user message (the turn to answer)"
            + (" or tool results" if "tool" in roles else ""),
            ("assistant", "assistant"): "the answer must end with an assistant message",
        }[(first, last)]
        raise DatasetError(f"row {i}, field {name!r}: {what}", row=i, field=name)


def strip_reasoning(messages: Messages | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without their reasoning."""
    return [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
