"""Chat templates: the one template used in training and in generation.

A tokenizer that ships a chat template keeps it. One without gets tunekit's built-in ChatML
template, whose markers are added to the vocabulary as special tokens (the embeddings are resized
by the backend, and the new rows train with the adapter).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import TemplateError  # transformers' dependency: a chat template's errors are jinja2's

from tunekit.errors import DatasetError, IncompatibleError

__all__ = [
    "CHATML_TEMPLATE",
    "Template",
    "ensure_template",
    "find_end_of_turn",
    "render",
    "render_segments",
    "template_source",
    "try_render",
]

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML, as used by Qwen and many others; prefix-stable, so prompt and completion split cleanly.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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

    def to_dict(self) -> dict[str, Any]:
        return {"chat_template": self.chat_template, "end_of_turn": self.end_of_turn, "builtin": self.builtin}


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
        self._deadlines: dict[int, float] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(self, seconds: float, fn: Callable[[], _T]) -> _T:
        me = threading.get_ident()
        with self._wake:
            nested = me in self._deadlines  # a render inside a render: the outer one's clock runs
            if not nested:
                self._deadlines[me] = time.monotonic() + seconds
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
                self._wake.wait(None if nearest is None else max(nearest - time.monotonic(), 0.0) + 0.01)


_WATCHDOG = _Watchdog()


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


def render(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
    """The template's text for ``messages``. A template that fails, refuses the conversation, runs for more than
    ``RENDER_SECONDS`` or writes more than ``RENDER_CHARS`` raises IncompatibleError naming it."""
    out = try_render(tokenizer, messages, add_generation_prompt=add_generation_prompt, refusals=False)
    assert out is not None  # refusals=False: a refusal raised
    return out


def try_render(
    tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool, refusals: bool = True
) -> str | None:
    """:func:`render`, but None when the template refuses the conversation (its ``raise_exception``, e.g.
    "system role not supported") and ``refusals``; a runaway or broken template still raises."""

    def go() -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))

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


def ensure_template(tokenizer: Any, chat_template: str | None = None) -> tuple[Template, list[str]]:
    """Install the template and a distinct pad token; returns the template and tokens added."""
    added: list[str] = []
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        tokenizer._tunekit_template_source = "the chat template passed as template=..."
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    # Compared, not remembered: a second call on the same tokenizer (or a saved and reloaded one)
    # must still report the built-in template as built-in.
    builtin = tokenizer.chat_template == CHATML_TEMPLATE
    if builtin or IM_START in (tokenizer.chat_template or ""):
        missing = [t for t in (IM_START, IM_END) if t not in tokenizer.get_vocab()]
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
    return Template(str(tokenizer.chat_template), eot, int(eot_id), builtin), added


def render_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into ``(text, is_assistant)`` pieces, in order.

    Each assistant piece runs from after the generation prompt to the end of the rendered turn,
    so it includes the end-of-turn token: the model learns to stop.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise DatasetError(
                "the chat template is not prefix-stable (rendering a longer conversation changes earlier text), "
                "so prompt and answer cannot be told apart by position; pass template=... with a template that is"
            )
        pieces.append((prefix[len(done) :], False))
        pieces.append((full[len(prefix) :], True))
        done = full
    return [(t, a) for t, a in pieces if t]
