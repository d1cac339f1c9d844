"""Chat templates: the one template used in training and in generation.

A tokenizer that ships a chat template keeps it. One without gets tunekit's built-in ChatML
template, whose markers are added to the vocabulary as special tokens (the embeddings are resized
by the backend, and the new rows train with the adapter).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from jinja2 import TemplateError  # transformers' dependency: a chat template's errors are jinja2's

from tunekit.errors import ConfigError, IncompatibleError

__all__ = [
    "BUILTIN_MARKERS",
    "CHATML_TEMPLATE",
    "REASONING_TEMPLATE_KEYS",
    "Template",
    "check_template_options",
    "ensure_template",
    "find_end_of_turn",
    "image_placeholder",
    "image_renders",
    "options_baked_in",
    "reasoning_key",
    "render",
    "render_many",
    "template_messages",
    "template_options",
    "template_source",
    "try_render",
]

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML, as used by Qwen and many others; prefix-stable, so prompt and completion split cleanly. Plain
# conversations render as ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message. Tools, tool calls and
# reasoning, in one documented format (the one Qwen and Hermes use):
# - a ``tools=`` list goes into the system turn, one JSON schema per line inside ``<tools>...</tools>``;
# - an assistant's tool calls follow its content, each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``;
# - a tool result is a ``tool`` turn;
# - an assistant turn's reasoning (``reasoning_content``) is ``<think>\n...\n</think>\n\n`` before the answer, for
#   the turns after the last user message only (earlier turns' reasoning is dropped, as Qwen3 does);
# - ``enable_thinking=False`` (a template option) writes an empty ``<think>\n\n</think>\n\n`` after the
#   generation prompt and on the last turn, for a model trained to answer without reasoning.
CHATML_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set no_thinking = enable_thinking is defined and enable_thinking is false -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + '\n\n' -}}{%- endif -%}"
    "{{- '# Tools\n\nYou may call one or more of these functions (one JSON schema per line):\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}"
    '{{- \'\n</tools>\n\nFor each call, write <tool_call>{"name": <function name>, "arguments": '
    "<arguments object>}</tool_call>.<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools and loop.first -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- if message.get('reasoning_content') and loop.index0 > ns.last_user -%}"
    "{{- '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' -}}"
    "{%- elif no_thinking and loop.last -%}{{- '<think>\n\n</think>\n\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{- '<tool_call>' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if no_thinking -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}{%- endif -%}"
)
# tunekit's ChatML before tools and reasoning: a tokenizer saved with it still counts as the built-in template.
_EARLIER_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOL_CALL, TOOL_CALL_END, THINK, THINK_END = "<tool_call>", "</tool_call>", "<think>", "</think>"
BUILTIN_MARKERS = (IM_START, IM_END, TOOL_CALL, TOOL_CALL_END, THINK, THINK_END)


@dataclass(frozen=True)
class Template:
    """The template in use: its Jinja source and the token that ends an assistant turn.

    ``builtin`` is true when the template is tunekit's ChatML, whether it was installed by this call,
    by an earlier one (the tokenizer was saved and loaded again) or shipped identical with the model.
    """

    chat_template: str
    end_of_turn: str
    end_of_turn_id: int
    builtin: bool
    options: dict[str, Any] = field(default_factory=dict)  # rendered with every conversation (enable_thinking=...)

    def to_dict(self) -> dict[str, Any]:
        out = {"chat_template": self.chat_template, "end_of_turn": self.end_of_turn, "builtin": self.builtin}
        return {**out, "options": dict(self.options)} if self.options else out


RENDER_SECONDS = 10.0  # one render of a conversation; a template that loops for longer is refused
RENDER_CHARS = 4_000_000  # what one render may return (about a million tokens: beyond any model's context)
_T = TypeVar("_T")


class _RenderTimeout(BaseException):
    """Raised inside a render that ran past its time (a BaseException: a template cannot catch it)."""


class _Watchdog:
    """One daemon thread that interrupts renders running past their deadline.

    jinja2's sandbox blocks unsafe attributes and caps ``range`` but not time: nested loops hang a render
    for hours. The interruption is an exception raised asynchronously in the rendering thread (CPython's
    ``PyThreadState_SetAsyncExc``), delivered at the template's next Python bytecode. Every render is
    timed, so the cost per render is two dictionary updates; the thread starts with the first render and
    sleeps until the nearest deadline (with no render running, until the next one starts)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """No render running and no watching thread (a new process: a forked one starts so)."""
        self._deadlines: dict[int, float] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._until = math.inf  # when the watching thread wakes next (it is woken only for an earlier deadline)

    def run(self, seconds: float, fn: Callable[[], _T]) -> _T:
        me = threading.get_ident()
        with self._wake:
            nested = me in self._deadlines  # a render inside a render: the outer one's clock runs
            if not nested:
                deadline = self._deadlines[me] = time.monotonic() + seconds
                if deadline < self._until:  # else it wakes in time anyway: no thread switch per render
                    self._until = deadline
                    self._wake.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="tunekit-template-watchdog", daemon=True)
                self._thread.start()
        try:
            return fn()
        finally:
            if not nested:
                with self._wake:
                    self._deadlines.pop(me, None)

    def _watch(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for ident, deadline in list(self._deadlines.items()):
                    if now >= deadline:
                        del self._deadlines[ident]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(ident), ctypes.py_object(_RenderTimeout)
                        )
                nearest = min(self._deadlines.values(), default=None)
                self._until = math.inf if nearest is None else nearest
                self._wake.wait(None if nearest is None else max(nearest - time.monotonic(), 0.0) + 0.01)


_WATCHDOG = _Watchdog()
# A forked process (Training(data_workers=...)) has no watching thread and may hold a copy of a lock taken at the
# fork: it starts afresh.
os.register_at_fork(after_in_child=_WATCHDOG.restart)


def template_source(tokenizer: Any) -> str:
    """Where the tokenizer's chat template came from, for error messages."""
    source = getattr(tokenizer, "_tunekit_template_source", None)
    if source:
        return str(source)
    root = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if root.is_dir() and (root / name).is_file():
            return f"the chat template in {root / name}"
    return "the tokenizer's chat template"


def check_template_options(options: Any) -> dict[str, Any] | None:
    """``template_options``: a mapping of names to plain values (JSON-like), or None; ConfigError otherwise."""
    if options is None:
        return None
    if not isinstance(options, dict) or not all(isinstance(k, str) and k.isidentifier() for k in options):
        raise ConfigError(
            f"template_options={options!r:.80}: expected a mapping of option names to values, e.g. "
            "{'enable_thinking': False}"
        )
    for name, value in options.items():
        if name in ("messages", "tools", "add_generation_prompt", "tokenize", "chat_template", "documents"):
            raise ConfigError(f"template_options: {name!r} is set by tunekit on every render; remove it")
        if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            raise ConfigError(
                f"template_options[{name!r}]={value!r:.60}: expected a plain value (text, a number, true/false)"
            )
    return dict(options)


def _literal(value: Any) -> str:
    """``value`` as a Jinja literal."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # numbers and strings: JSON's spelling is Jinja's


@contextmanager
def options_baked_in(tokenizer: Any) -> Iterator[None]:
    """Within: the tokenizer's chat template sets its ``template_options`` itself (``{%- set enable_thinking = false
    -%}`` first), so an exported tokenizer renders as in training for a user who passes no option."""
    options = template_options(tokenizer)
    if not options:
        yield
        return
    source = tokenizer.chat_template
    head = "".join(f"{{%- set {name} = {_literal(value)} -%}}" for name, value in options.items())
    tokenizer.chat_template = head + source
    try:
        yield
    finally:
        tokenizer.chat_template = source


def template_options(tokenizer: Any) -> dict[str, Any]:
    """The options the template is rendered with (``Tuner(template_options=...)``, e.g. ``enable_thinking``)."""
    return dict(getattr(tokenizer, "_tunekit_template_options", None) or {})


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The template's text for ``messages`` (and ``tools``). A template that fails, refuses the conversation, runs for
    more than ``RENDER_SECONDS`` or writes more than ``RENDER_CHARS`` raises IncompatibleError naming it."""
    out = try_render(tokenizer, messages, add_generation_prompt=add_generation_prompt, refusals=False, tools=tools)
    assert out is not None  # refusals=False: a refusal raised
    return out


def try_render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    refusals: bool = True,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str | None:
    """:func:`render`, but None when the template refuses the conversation (its ``raise_exception``, e.g.
    "system role not supported") and ``refusals``; a runaway or broken template still raises."""
    if any(m.get("reasoning_content") for m in messages):
        messages = _with_reasoning(tokenizer, messages)
    return _render_raw(tokenizer, messages, add_generation_prompt=add_generation_prompt, refusals=refusals, tools=tools)


def _render_raw(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    refusals: bool,
    tools: Sequence[dict[str, Any]] | None,
) -> str | None:
    options = template_options(tokenizer)
    if tools:  # never tools=[]: some templates (Llama 3.1) write their tool boilerplate for an empty list
        options["tools"] = list(tools)

    def go() -> str:
        return str(
            tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **options
            )
        )

    try:
        out = _WATCHDOG.run(RENDER_SECONDS, go)
    except _RenderTimeout:
        raise IncompatibleError(
            f"{template_source(tokenizer)} ran for more than {RENDER_SECONDS:.0f} s on a conversation of "
            f"{len(messages)} messages (a runaway loop); fix the template or pass template=..."
        ) from None
    except TemplateError as e:  # a syntax error, a sandbox refusal, or the template's own raise_exception
        kind = {"TemplateSyntaxError": "has a syntax error", "SecurityError": "tried something the sandbox forbids"}
        what = kind.get(type(e).__name__, "refused the conversation")
        if refusals and what == "refused the conversation":
            return None
        lineno = getattr(e, "lineno", None)
        line = f" (line {lineno})" if lineno else ""
        raise IncompatibleError(
            f"{template_source(tokenizer)} {what}{line}: {e}; fix the template or pass template=..."
        ) from None
    if len(out) > RENDER_CHARS:
        raise IncompatibleError(
            f"{template_source(tokenizer)} wrote {len(out):,} characters for one conversation (more than "
            f"{RENDER_CHARS:,}); fix the template or pass template=..."
        )
    return out


def render_many(tokenizer: Any, conversations: list[list[dict[str, Any]]]) -> list[str] | None:
    """:func:`render` of each conversation (no tools, no generation prompt, no reasoning) in one call of the template
    (the per-call cost of ``apply_chat_template`` paid once), or None when that call fails in any way (a refusal, a
    runaway, a text over ``RENDER_CHARS``): the caller then renders them one at a time, which raises the row's own
    error. The batch runs under the watchdog with one render's time limit."""
    if not conversations:
        return []
    options = template_options(tokenizer)

    def go() -> list[str]:
        return [str(t) for t in tokenizer.apply_chat_template(conversations, tokenize=False, **options)]

    try:
        out = _WATCHDOG.run(RENDER_SECONDS, go)
    except (_RenderTimeout, Exception):
        return None
    if len(out) != len(conversations) or any(len(t) > RENDER_CHARS for t in out):
        return None
    return out


_PROBE = "TUNEKIT_REASONING_3e1b"


def reasoning_key(tokenizer: Any) -> str | None:
    """The message key the template writes an assistant's reasoning from (``reasoning_content`` for Qwen3,
    DeepSeek and tunekit's ChatML, ``thinking`` for gpt-oss, ``reasoning`` for some others), or None when it writes
    none of them (then tunekit puts the reasoning into the content as ``<think>...</think>``). Found by rendering a
    probe once per template."""
    cached = getattr(tokenizer, "_tunekit_reasoning_key", None)
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cast("str | None", cached[1])
    found = None
    for key in REASONING_TEMPLATE_KEYS:
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", key: _PROBE}]
        out = _render_raw(tokenizer, probe, add_generation_prompt=False, refusals=True, tools=None)
        if out is not None and _PROBE in out:
            found = key
            break
    tokenizer._tunekit_reasoning_key = (tokenizer.chat_template, found)
    return found


REASONING_TEMPLATE_KEYS = ("reasoning_content", "thinking", "reasoning")


def template_messages(tokenizer: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as the template is given them (for a library that renders them itself, as trl does)."""
    return _with_reasoning(tokenizer, messages) if any(m.get("reasoning_content") for m in messages) else messages


def _with_reasoning(tokenizer: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with their reasoning under the key the template reads, or inline when it reads none."""
    key = reasoning_key(tokenizer)
    out = []
    for m in messages:
        text = m.get("reasoning_content")
        if not text:
            out.append(m)
            continue
        rest = {k: v for k, v in m.items() if k != "reasoning_content"}
        if key is None:
            rest["content"] = f"{THINK}\n{text}\n{THINK_END}\n\n{rest.get('content') or ''}"
        else:
            rest[key] = text
        out.append(rest)
    return out


def find_end_of_turn(tokenizer: Any) -> str:
    """The special token the chat template closes an assistant turn with (the EOS token when it writes none)."""
    marker = "TUNEKIT_MARKER_7f3a"
    text = render(
        tokenizer,
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
        add_generation_prompt=False,
    )
    if marker not in text:
        raise IncompatibleError(
            f"{template_source(tokenizer)} does not write the messages' content (an assistant message "
            f"{marker!r} is missing from its output); fix the template or pass template=..."
        )
    tail = text[text.index(marker) + len(marker) :]
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    }
    for tok in tokenizer.tokenize(tail):
        if tok in special:
            return str(tok)
    if tokenizer.eos_token is None:
        raise IncompatibleError(
            "the chat template ends an assistant turn with no special token and the tokenizer has no EOS token; "
            "pass template=... with an end-of-turn token"
        )
    return str(tokenizer.eos_token)


def ensure_template(
    tokenizer: Any, chat_template: str | None = None, options: dict[str, Any] | None = None
) -> tuple[Template, list[str]]:
    """Install the template, its options and a distinct pad token; returns the template and tokens added."""
    added: list[str] = []
    if chat_template == "chatml":  # tunekit's built-in template by name (it renders tools, calls and reasoning)
        chat_template = CHATML_TEMPLATE
    # tunekit's ChatML put on a tokenizer brings all its markers (tools and reasoning included) as special tokens; a
    # tokenizer that ships a ChatML template of its own keeps its vocabulary (only missing turn markers are added).
    before = getattr(tokenizer, "chat_template", None)
    installs_builtin = before != CHATML_TEMPLATE and (chat_template == CHATML_TEMPLATE or not (chat_template or before))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        tokenizer._tunekit_template_source = "the chat template passed as template=..."
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer._tunekit_template_options = dict(options or {})
    # Compared, not remembered: a second call on the same tokenizer (or a saved and reloaded one)
    # must still report the built-in template as built-in.
    builtin = tokenizer.chat_template in (CHATML_TEMPLATE, _EARLIER_CHATML)
    markers = BUILTIN_MARKERS if installs_builtin else (IM_START, IM_END)
    if builtin or IM_START in (tokenizer.chat_template or ""):
        missing = [t for t in markers if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
            added += missing
    eot = find_end_of_turn(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = eot
    # The pad token must never be EOS or end-of-turn: collators that mask by pad id would hide them.
    pad = tokenizer.pad_token
    if pad is None or pad in (tokenizer.eos_token, eot):
        if PAD not in tokenizer.get_vocab():
            added.append(PAD)
        tokenizer.add_special_tokens({"pad_token": PAD})
    template = Template(str(tokenizer.chat_template), eot, int(eot_id), builtin, dict(options or {}))
    return template, added


def image_renders(tokenizer: Any) -> tuple[str, str]:
    """A user turn rendered by ``tokenizer``'s chat template with a ``{"type": "image"}`` part before its text, and
    without it: where the two differ is what the template writes for one image (:func:`image_placeholder`)."""
    mark = "\ue000"
    with_image = render(
        tokenizer,
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": mark}]}],
        add_generation_prompt=False,
    )
    without = render(
        tokenizer, [{"role": "user", "content": [{"type": "text", "text": mark}]}], add_generation_prompt=False
    )
    return with_image, without


def image_placeholder(tokenizer: Any) -> str:
    """The text ``tokenizer``'s chat template writes for one ``{"type": "image"}`` part (empty for a template that
    writes nothing for it): a user turn rendered with and without the image (:func:`image_renders`), compared."""
    with_image, without = image_renders(tokenizer)
    start = 0
    while start < min(len(with_image), len(without)) and with_image[start] == without[start]:
        start += 1
    end = 0
    while end < min(len(with_image), len(without)) - start and with_image[-1 - end] == without[-1 - end]:
        end += 1
    return with_image[start : len(with_image) - end]
