"""mkdocs hooks: generated parts of the docs, so that they cannot drift from the code.

``<!-- tunekit:options NAME -->`` on a line of its own becomes the option table of the config class
``tunekit.NAME`` (a method, an objective, ``Training`` or ``RunConfig``): each field with its type,
default and description, read from the pydantic model itself.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parent.parent / "src")  # the checkout's tunekit, installed or not

MARKER = re.compile(r"^<!-- tunekit:options (\w+) -->$", re.M)


def _type(annotation: Any) -> str:
    """A readable type: ``int | None``, ``'a' | 'b'`` for literals, ``list[str]``."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # a discriminated union, a constrained type: the type itself is what readers need
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        if name == "Callable":
            return "function"
        return f"{name}[{', '.join('...' if a is Ellipsis else _type(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return f"`{type(value).__name__}()`" if hasattr(value, "model_dump") else f"`{value!r}`"
    return f"`{field.default!r}`"


def options_table(name: str) -> str:
    if SRC not in sys.path:
        sys.path.insert(0, SRC)
    import tunekit as tk

    cls = getattr(tk, name, None)
    if cls is None or not hasattr(cls, "model_fields"):
        raise ValueError(f"<!-- tunekit:options {name} -->: tunekit.{name} is not a config class")
    if not cls.model_fields:
        return f"`tk.{name}()` takes no options."
    rows = ["| option | type | default | what it does |", "|---|---|---|---|"]
    for field_name, field in cls.model_fields.items():
        doc = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
        kind = _type(field.annotation)  # inside a code span, where a table's | needs no escape
        rows.append(f"| `{field_name}` | `{kind}` | {_default(field)} | {doc} |")
    return "\n".join(rows)


HTML_LANG = re.compile(r'(<html\s+lang=")[^"]*(")')


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: options_table(m.group(1)), markdown)


def on_post_page(output: str, *, page: Any, **kwargs: Any) -> str:
    """Mark the Chinese pages as Chinese (``<html lang="zh">``): the theme writes one language for the whole site,
    and screen readers, browsers' translation offers and fonts for CJK text read this attribute."""
    if page.file.src_uri.startswith("zh/"):
        return HTML_LANG.sub(r"\1zh\2", output, count=1)
    return output


def on_startup(**kwargs: Any) -> None:
    """Read a Google-style ``Example:`` section (tunekit's spelling) like ``Examples:``, so that its
    ``>>>`` lines render as code rather than as nested quotes. griffe knows only the plural."""
    try:
        from griffe import DocstringSectionKind
    except ImportError:
        return
    for where in ("griffe._internal.docstrings.google", "_griffe.docstrings.google"):  # griffe 2, griffe 1
        try:
            google = importlib.import_module(where)
        except ImportError:
            continue
        google._section_kind.setdefault("example", DocstringSectionKind.examples)
        return
    # griffe moved its internals again: the docs still build, with examples rendered as quotes
