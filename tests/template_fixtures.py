"""Real chat templates of current model families, as test fixtures (issue #16, item 4).

tests/data/chat_templates/ holds each family's Jinja source verbatim (where it was taken from is in families.json);
``family_tokenizer`` puts one on tunekit's tiny test tokenizer, with the family's marker tokens added as single special
tokens and its bos/eos, so that a conformance test can render and tokenise real templates without the network.

The vocabulary is the tiny model's, not the family's: token ids and the way ordinary text splits differ from the real
tokenizer. What carries over is the template's text and which strings are one (special) token.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"

# The date a fixed ``strftime_now`` renders (templates that call it write today's date otherwise).
FIXED_DATE = _dt.datetime(2025, 1, 15, 12, 0, 0)


@cache
def _families() -> dict[str, dict[str, Any]]:
    families = json.loads((TEMPLATES / "families.json").read_text(encoding="utf-8"))["families"]
    return {name: dict(entry) for name, entry in families.items()}


FAMILIES: tuple[str, ...] = tuple(sorted(_families()))


def load_family(name: str) -> dict[str, Any]:
    """The family's entry in families.json (a copy: changing it changes nothing here)."""
    return json.loads(json.dumps(_families()[name]))


def template_source(name: str) -> str:
    """The family's chat template, verbatim (bytes as stored: no newline added or stripped)."""
    return (TEMPLATES / _families()[name]["template"]).read_bytes().decode("utf-8")


@contextmanager
def fixed_clock() -> Iterator[None]:
    """transformers' ``strftime_now`` (which templates call for today's date) renders ``FIXED_DATE`` inside.

    A render variable cannot stand in for it: transformers 5 rebuilds template inputs from plain JSON types, so a
    function passed as a keyword argument reaches the template as a placeholder string. ``strftime_now`` reads
    ``datetime.now()`` from its module when called, so that name is patched.
    """
    import transformers.utils.chat_template_utils as ctu

    real = ctu.datetime

    class _Fixed(real):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return FIXED_DATE if tz is None else FIXED_DATE.replace(tzinfo=tz)

    ctu.datetime = _Fixed
    try:
        yield
    finally:
        ctu.datetime = real


_TINY: dict[str, Path] = {}
_TOKENIZERS: dict[str, Any] = {}


def _tiny_dir(cache_dir: Path) -> Path:
    key = str(cache_dir)
    if key not in _TINY:
        from tunekit.testing import tiny_model

        _TINY[key] = tiny_model(Path(cache_dir) / "template-fixtures-tiny")
    return _TINY[key]


def family_tokenizer(name: str, cache_dir: str | Path) -> Any:
    """tunekit's tiny test tokenizer dressed as ``name``: the family's marker tokens added as single special tokens,
    its bos and eos set (None where the family has none) and its real chat template installed.

    Built once per family and process (the tiny model is written under ``cache_dir`` the first time); the same object
    is returned on later calls, so callers must not change it.
    """
    if name not in _TOKENIZERS:
        from tokenizers import AddedToken
        from transformers import AutoTokenizer

        entry = _families()[name]
        tok = AutoTokenizer.from_pretrained(_tiny_dir(Path(cache_dir)))
        markers = list(entry["special_tokens"]) + list(entry.get("other_special_tokens", []))
        for t in (entry["bos_token"], entry["eos_token"]):
            if t is not None and t not in markers:
                markers.append(t)
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in markers], special_tokens=True)
        tok.bos_token = entry["bos_token"]
        tok.eos_token = entry["eos_token"]
        tok.chat_template = template_source(name)
        _TOKENIZERS[name] = tok
    return _TOKENIZERS[name]


def render(
    tokenizer: Any,
    name: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """``apply_chat_template(..., tokenize=False)`` with the family's ``template_kwargs`` (``extra`` on top), under
    ``fixed_clock`` where the template reads the date: the same text on every run and every day."""
    kwargs = dict(_families()[name]["template_kwargs"]) | extra
    with fixed_clock():
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )


# ------------------------------------------------------------------ conversations


def plain_conversation(name: str) -> list[dict[str, Any]]:
    """system (where the family has one), user, assistant, user, assistant."""
    system = [{"role": "system", "content": "You are terse."}] if _families()[name]["supports_system"] else []
    return [
        *system,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}

# Mistral's templates refuse a tool call id that is not 9 alphanumeric characters; every other family takes any id.
TOOL_CALL_ID = "call00001"


def tool_conversation(name: str) -> list[dict[str, Any]]:
    """user, assistant with one tool call, the tool's answer, assistant: in the shape the family's template reads
    (``tool_call_arguments``: a JSON object, or a JSON string for templates that concatenate it; ``tool_role``: the
    role its template gives a tool's answer; DeepSeek R1's template wants ``content: None`` on the calling turn)."""
    entry = _families()[name]
    arguments: Any = {"city": "Paris"}
    if entry["tool_call_arguments"] == "string":
        arguments = json.dumps(arguments)
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        ],
    }
    if entry["tool_call_content"] == "empty":
        call["content"] = ""
    answer = {
        "role": entry["tool_role"],
        "content": '{"temp": 21}',
        "tool_call_id": TOOL_CALL_ID,
        "name": "get_weather",
    }
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        call,
        answer,
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ]


def thinking_conversation(name: str) -> list[dict[str, Any]]:
    """A 2-turn conversation whose assistant turns carry reasoning in the family's ``reasoning_key``."""
    key = _families()[name]["thinking"]["reasoning_key"]
    return [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4.", key: "Two plus two is four."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6.", key: "Three plus three is six."},
    ]


CONVERSATIONS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "plain": plain_conversation,
    "tools": tool_conversation,
    "thinking": thinking_conversation,
}
