"""``tunekit validate-data FILE``: check a data file before training on it.

Reports the format tunekit detects (and the layout it was rewritten from, when the rows are laid out as another
tool publishes them), the row count, length statistics (tokens with ``--model``, else characters and words), rows
longer than ``--max-length``, the columns not used for training, a warning when raw ``text`` rows hold a
hand-rendered instruction template (``Instruction:`` ... ``Answer:``; :mod:`tunekit.data.templated`), and every bad
row with its number and reason: the same checks ``fit`` runs, without loading a model. For conversations it counts
turns, tool calls and the share of assistant turns with reasoning; for rows with images, the images per row and
their sizes (each image is read and checked, within the pixel budget of ``--max-pixels`` / ``--min-pixels``); with
``--model`` also the supervised tokens per row (as ``SFT()`` trains them), and it prints one rendered row with the
trained spans between ``[[`` and ``]]``. Exits 1 when a row is bad.

A file whose columns, message keys or roles have other names is read with ``--columns`` and ``--roles`` (tunekit's
name = the file's, comma-separated), as ``tk.Data(path, columns=..., roles=...)`` does:

    tunekit validate-data chats.jsonl --columns messages=dialog,system=sys_prompt --roles user=customer,assistant=agent

The data may be a dataset directory or a dataset name (``org/name``, with ``--split``, ``--subset``, ``--revision``),
read as ``tk.Data`` reads it. Several sources are checked as the ``tk.Mix`` of them (``--weights``, ``--counts``,
``--size`` as its options): each on its own, in its own layout, then the rows drawn from each (and, with
``--model``, its tokens):

    tunekit validate-data alpaca.json chats.jsonl --weights 0.7,0.3 --size 1000 --model Qwen/Qwen2-0.5B
"""

from __future__ import annotations

import argparse
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from tunekit._quiet import quiet
from tunekit.data.arrow import normalise_table
from tunekit.data.encoding import IGNORE, encode_examples
from tunekit.data.formats import Example, detect_format
from tunekit.data.images import ImageOptions, image_stats
from tunekit.data.layouts import detect_layout
from tunekit.data.loading import base_dir_of
from tunekit.data.mapping import Data
from tunekit.data.mixture import Mix, draw_counts, mixed_format
from tunekit.data.templated import find_template_markers, template_warning
from tunekit.data.templates import ensure_template, render
from tunekit.data.turns import render_turns, supervised_turns
from tunekit.errors import ConfigError, DatasetError, IncompatibleError

__all__ = ["add_validate_data_parser", "validate_data"]


def _pieces(ex: Example) -> list[list[dict[str, Any]] | str]:
    """What is rendered for one example: a text, or the conversations it trains on."""
    if ex.text is not None:
        return [ex.text]
    if ex.messages is not None:
        return [list(ex.messages)]
    prompt = list(ex.prompt or ())
    answers = [a for a in (ex.chosen, ex.rejected, ex.completion) if a is not None]
    return [prompt + list(a) for a in answers] or [prompt]


def _as_text(piece: list[dict[str, Any]] | str) -> str:
    return piece if isinstance(piece, str) else "\n".join(_text(m["content"]) for m in piece)


def _text(content: Any) -> str:
    """A message's text (its image parts left out)."""
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


def _text_only(ex: Example) -> Example:
    """The example without its images, for a text tokenizer to count (a vision model's processor adds the image
    tokens, which this count leaves out)."""
    if not ex.images:
        return ex

    def flat(msgs: Any) -> Any:
        return None if msgs is None else tuple({**m, "content": _text(m["content"])} for m in msgs)

    names = ("messages", "prompt", "chosen", "rejected", "completion")
    return replace(ex, **{n: flat(getattr(ex, n)) for n in names}, images=())


def _stats(values: Iterable[int]) -> dict[str, float]:
    """Min, mean, median, 95th percentile, max and total of per-row integers (a list, an ``array('q')`` or a numpy
    array: sorted as one int64 array, not a list of Python ints, for data of millions of rows)."""
    import numpy as np

    ordered = np.sort(np.asarray(values, dtype=np.int64))
    n = len(ordered)
    total = int(ordered.sum())
    mid = n // 2
    median = int(ordered[mid]) if n % 2 else (int(ordered[mid - 1]) + int(ordered[mid])) / 2  # statistics.median's
    return {
        "min": int(ordered[0]),
        "mean": round(total / n, 1),  # statistics.fmean's: the exact sum, divided once
        "median": median,
        "p95": int(ordered[min(n - 1, int(0.95 * n))]),
        "max": int(ordered[-1]),
        "total": total,
    }


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _check_model(model: str) -> None:
    """``--model`` names an existing model or tokenizer directory, or a hub id: ConfigError otherwise."""
    p = Path(model).expanduser()
    if not p.exists():
        if p.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or model.endswith("/"):
            raise ConfigError(
                f"--model {model}: model path does not exist; pass a local model or tokenizer directory, or a hub id"
            )
        return  # a hub id
    if not p.is_dir():
        raise ConfigError(
            f"--model {model}: is a file, not a model or tokenizer directory; pass the directory that holds "
            f"{' or '.join(_TOKENIZER_FILES)}"
        )
    if not any((p / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(
            f"--model {model}: is not a model or tokenizer directory (none of {list(_TOKENIZER_FILES)} in it); "
            "pass the directory a model was saved to (save_pretrained, Tuner.save), or a hub id"
        )


def _conversations(examples: Iterable[Example]) -> dict[str, Any] | None:
    """Turns, tool calls and reasoning of the rows that are conversations (or prompt + answers), in one pass."""
    turns = array("q")  # per row: 8 bytes each, not a list of Python ints
    with_calls = calls = with_tools = answers = reasoned = 0
    for ex in examples:
        msgs = [m for p in _pieces(ex) if not isinstance(p, str) for m in p]
        if not msgs:
            continue
        turns.append(len(msgs))
        with_calls += any(m.get("tool_calls") for m in msgs)
        calls += sum(len(m.get("tool_calls", ())) for m in msgs)
        with_tools += bool(ex.tools)
        said = [m for m in msgs if m["role"] == "assistant"]
        answers += len(said)
        reasoned += sum(bool(m.get("reasoning_content")) for m in said)
    if not turns:
        return None
    return {
        "turns": _stats(turns),
        "rows_with_tool_calls": with_calls,
        "tool_calls": calls,
        "rows_with_tools": with_tools,
        "reasoning_share": round(reasoned / max(answers, 1), 3),
    }


def _supervised(tokenizer: Any, examples: Sequence[Example]) -> tuple[Sequence[int], str | None, list[tuple[int, str]]]:
    """Per conversation row, the tokens ``SFT()`` trains on; one row (the first with tool calls, else the first)
    rendered with its trained spans marked; the rows the template cannot train (their reasons)."""
    counts = array("q")  # per row: 8 bytes each
    bad: list[tuple[int, str]] = []
    first: int | None = None  # the first conversation, and the first with tool calls: their places, and whether
    first_calls: int | None = None  # they encoded
    encoded: dict[int, bool] = {}
    for k, ex in enumerate(examples):
        if ex.messages is None:
            continue
        calls = any(m.get("tool_calls") for m in ex.messages or ())
        if first is None or (calls and first_calls is None):
            first = k if first is None else first
            first_calls = k if calls and first_calls is None else first_calls
        try:
            enc = encode_examples(tokenizer, [ex], max_length=1 << 30)
        except (DatasetError, IncompatibleError) as e:
            bad.append((ex.row, str(e)))
            encoded[k] = False
            continue
        encoded[k] = True
        counts.append(sum(t != IGNORE for labels in enc.labels for t in labels))
    chosen = first_calls if first_calls is not None else first
    shown: str | None = None
    if chosen is not None and encoded[chosen]:
        ex = examples[chosen]
        messages = ex.messages or ()
        seq = render_turns(
            tokenizer,
            messages,
            supervised_turns(messages, ex.trained, "all_assistant", row=ex.row),
            tools=ex.tools,
            row=ex.row,
        )[0]
        marked, cursor = [], 0
        for start, end in seq.spans:
            marked += [seq.text[cursor:start], "[[", seq.text[start:end], "]]"]
            cursor = end
        shown = f"row {ex.row}:\n" + "".join([*marked, seq.text[cursor:]])
    return counts, shown, bad


class _Each(Sequence[Any]):
    """``fn`` of each item of ``items``, computed when read (the examples are read from an Arrow table)."""

    def __init__(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> None:
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self.fn(item) for item in self.items[k]]
        return self.fn(self.items[k])

    def __iter__(self) -> Iterator[Any]:
        return map(self.fn, self.items)


class _Sized(NamedTuple):
    """An image's size, all :func:`tunekit.data.images.image_stats` reads of it (its pixels are not kept)."""

    size: tuple[int, int]


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    _check_model(model)
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(model)
    except OSError:
        raise  # a model that cannot be read: one line, exit 1 (see tunekit.cli.main)
    except Exception as e:  # transformers' ValueError for a directory it cannot make a tokenizer from, ...
        cause = " ".join(str(e).split())
        raise ConfigError(
            f"--model {model}: could not load its tokenizer ({type(e).__name__}: {cause:.300}); pass a model or "
            "tokenizer directory, or a hub id"
        ) from None
    ensure_template(tokenizer)  # the template fit would use (the tokenizer's own, else tunekit's ChatML)
    return tokenizer


def _token_counter(tokenizer: Any) -> Any:
    def count(piece: list[dict[str, Any]] | str, tools: Any = None) -> int:
        text = piece if isinstance(piece, str) else render(tokenizer, piece, add_generation_prompt=False, tools=tools)
        return len(tokenizer(text, add_special_tokens=isinstance(piece, str))["input_ids"])

    return count


def validate_data(
    path: str | Path | Data | Mix,
    *,
    model: str | None = None,
    max_length: int | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    resize_images: bool = True,
) -> dict[str, Any]:
    """Check every row of a data file (a :class:`tunekit.Data` for one with its own names, a dataset name or
    directory); returns the report as a dict (what the command prints). ``max_pixels`` / ``min_pixels`` /
    ``resize_images``: the pixel budget images are read with, as ``tk.Training``'s options of those names. A
    :class:`tunekit.Mix` is checked source by source: the report's ``sources`` holds each one's report with the rows
    ``drawn`` from it."""
    tokenizer = _load_tokenizer(model) if model is not None else None
    pixels = (max_pixels, min_pixels, resize_images)
    if not isinstance(path, Mix):
        return _validate_one(path, tokenizer, model, max_length, pixels)
    reports = [_validate_one(source, tokenizer, model, max_length, pixels) for source in path.sources]
    drawn = draw_counts(path, [r["valid_rows"] for r in reports])
    for name, report, n in zip(path.names, reports, drawn):
        report["name"], report["drawn"] = name, n if report["valid_rows"] else 0
        if "tokens" in report:  # the tokens of the drawn rows, at the source's mean
            report["drawn_tokens"] = round(report["tokens"]["mean"] * report["drawn"])
    return {
        "file": ", ".join(path.names),
        "format": mixed_format(path.names, [r["format"] for r in reports]),
        "rows": sum(r["rows"] for r in reports),
        "valid_rows": sum(r["valid_rows"] for r in reports),
        "drawn_rows": sum(r["drawn"] for r in reports),
        "unused_columns": [],
        "bad_rows": [{**b, "source": r["name"]} for r in reports for b in r["bad_rows"]],
        "sources": reports,
    }


def _validate_one(
    path: str | Path | Data,
    tokenizer: Any,
    model: str | None,
    max_length: int | None,
    pixels: tuple[int | None, int | None, bool],
) -> dict[str, Any]:
    max_pixels, min_pixels, resize_images = pixels
    options = ImageOptions(max_pixels, min_pixels, resize_images, base_dir_of(path))
    # The Arrow data driver, as fit reads data: a chunk of rows at a time, the bad rows listed as fit skips them.
    norm = normalise_table(path, on_bad_rows="skip", workers=None, directory=None, images=options, none_valid=True)
    first = norm.source_row(1)
    fmt, layout = detect_format([first]), detect_layout([first])
    examples: Sequence[Example] = norm.examples
    report: dict[str, Any] = {
        "file": str(path.source if isinstance(path, Data) else path),
        "format": fmt,
        **({"layout": layout.name} if layout is not None else {}),
        "rows": len(norm.table),
        "valid_rows": len(examples),
        "unused_columns": norm.unused(),
        "bad_rows": [{"row": r, "reason": reason} for r, reason in norm.skipped],
    }
    if not examples:
        return report
    if fmt == "text":  # what fit warns about: an instruction template rendered by hand into raw text
        found = find_template_markers(_Each(examples, lambda ex: ex.text), rows=_Each(examples, lambda ex: ex.row))
        if found is not None:
            report["template_markers"] = {
                "rows": found.rows,
                "checked": found.checked,
                "total": found.total,
                "first_row": found.first_row,
                "markers": list(found.markers),
                "warning": template_warning(found),
            }
    chats = _conversations(examples)
    if chats is not None:
        report["conversations"] = chats
    if norm.has_images:
        report["images"] = image_stats([tuple(_Sized(im.size) for im in ex.images) for ex in examples])
    if tokenizer is not None:
        examples = _Each(examples, _text_only)
        count = _token_counter(tokenizer)
        lengths = array("q", (max(count(p, ex.tools) for p in _pieces(ex)) for ex in examples))  # 8 bytes a row
        report["tokens"] = _stats(lengths)
        report["tokenizer"] = model
        if max_length is not None:
            long = [ex.row for ex, n in zip(examples, lengths) if n > max_length]
            report["longer_than_max_length"] = {"max_length": max_length, "rows": len(long), "first": long[:10]}
        counts, shown, untrainable = _supervised(tokenizer, examples)
        if counts:
            report["supervised_tokens"] = _stats(counts)
        if shown is not None:
            report["rendered_row"] = shown
        report["bad_rows"] += [{"row": r, "reason": reason} for r, reason in untrainable]
    else:
        texts = _Each(examples, lambda ex: max((_as_text(p) for p in _pieces(ex)), key=len))
        report["characters"] = _stats(array("q", (len(t) for t in texts)))
        report["words"] = _stats(array("q", (len(t.split()) for t in texts)))
    return report


def _print_mix(report: dict[str, Any]) -> None:
    for source in report["sources"]:
        print(f"--- source {source['name']}")
        _print(source)
    print("--- the mixture")
    print(f"format     {report['format']}")
    print(
        f"rows       {report['drawn_rows']:,} drawn of {report['valid_rows']:,} valid "
        f"({len(report['bad_rows']):,} bad) in {len(report['sources'])} sources"
    )
    for source in report["sources"]:
        over = source["drawn"] > source["valid_rows"]
        repeated = f" (repeated {source['drawn'] / source['valid_rows']:.1f}x)" if over else ""
        tokens = f", about {source['drawn_tokens']:,} tokens" if "drawn_tokens" in source else ""
        print(f"  {source['name']}: {source['drawn']:,} rows drawn of {source['valid_rows']:,}{repeated}{tokens}")


def _print(report: dict[str, Any]) -> None:
    print(f"file       {report['file']}")
    print(f"format     {report['format']}" + (f" (rewritten from {report['layout']})" if "layout" in report else ""))
    print(f"rows       {report['rows']:,} ({report['valid_rows']:,} valid, {len(report['bad_rows']):,} bad)")
    for unit in ("tokens", "characters", "words"):
        s = report.get(unit)
        if s:
            print(
                f"{unit:<11}min {s['min']:,}  mean {s['mean']:,}  median {s['median']:,}  p95 {s['p95']:,}  "
                f"max {s['max']:,}  total {s['total']:,}"
            )
    chats = report.get("conversations")
    if chats:
        t = chats["turns"]
        print(f"turns      min {t['min']:,}  mean {t['mean']:,}  max {t['max']:,}")
        print(
            f"tool calls {chats['tool_calls']:,} in {chats['rows_with_tool_calls']:,} rows "
            f"({chats['rows_with_tools']:,} with a tools list); reasoning on {chats['reasoning_share']:.0%} of "
            "assistant turns"
        )
    images = report.get("images")
    if images:
        n = images["per_row"]
        print(
            f"images     {images['images']:,} in {images['rows_with_images']:,} of {report['valid_rows']:,} rows (per "
            f"row min {n['min']}  mean {n['mean']}  max {n['max']}); sizes {images['smallest']} to "
            f"{images['largest']} (width {images['width']['min']}-{images['width']['max']}, height "
            f"{images['height']['min']}-{images['height']['max']})"
            + ("; token counts leave the images out" if "tokens" in report else "")
        )
    s = report.get("supervised_tokens")
    if s:
        print(
            f"trained    min {s['min']:,}  mean {s['mean']:,}  max {s['max']:,} tokens per row (as SFT() trains them)"
        )
    if report.get("template_markers"):
        print(f"warning    {report['template_markers']['warning']}")
    if report["unused_columns"]:
        print(f"unused     {', '.join(report['unused_columns'])} (not used for training)")
    long = report.get("longer_than_max_length")
    if long and long["rows"]:
        print(
            f"longer than max_length={long['max_length']}: {long['rows']} rows (truncated in training), "
            f"first {long['first']}"
        )
    elif long:
        print(f"longer than max_length={long['max_length']}: none")
    if report.get("rendered_row"):
        print("one row as the model sees it, the trained spans between [[ and ]]:")
        print("  " + report["rendered_row"].replace("\n", "\n  "))
    if report["bad_rows"]:
        print("bad rows:")
        for b in report["bad_rows"][:50]:
            print(f"  {b['reason']}")
        if len(report["bad_rows"]) > 50:
            print(f"  ... and {len(report['bad_rows']) - 50} more (--json lists them all)")
        print("fix them, or train with training: {on_bad_rows: skip} to leave them out")


def _cmd_validate_data(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 1:
        raise ConfigError(f"--max-length {args.max_length}: must be at least 1 (a number of tokens, e.g. 1024)")
    if args.max_length is not None and args.model is None:
        raise DatasetError("--max-length counts tokens: pass --model PATH (a model or tokenizer) too")
    columns, roles = _pairs("--columns", args.columns), _pairs("--roles", args.roles)
    named = {"split": args.split, "subset": args.subset, "revision": args.revision}
    named = {k: v for k, v in named.items() if v is not None}
    mixing = {k: v for k, v in (("weights", args.weights), ("counts", args.counts), ("size", args.size)) if v}
    if len(args.file) > 1 and (columns or roles or named):
        raise ConfigError(
            "--columns, --roles, --split, --subset and --revision apply to one source; to check several sources with "
            "their own, write them in a run config's data: {sources: [...]} and check them one by one"
        )
    if len(args.file) == 1 and mixing:
        raise ConfigError(f"--{next(iter(mixing))} mixes several sources: give two files (or names) or more")
    sources: list[Any] = [
        Data(f, columns=columns, roles=roles, **named) if columns or roles or named else f for f in args.file
    ]
    data: str | Data | Mix = sources[0]
    if len(sources) > 1:
        data = Mix(
            sources,
            weights=_numbers("--weights", args.weights, float),
            counts=_numbers("--counts", args.counts, int),
            size=args.size,
        )
    for option, value in (("--max-pixels", args.max_pixels), ("--min-pixels", args.min_pixels)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} {value}: must be at least 1 (a number of pixels, width x height)")
    if args.max_pixels is not None and args.min_pixels is not None and args.min_pixels > args.max_pixels:
        raise ConfigError(f"--min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")
    report = validate_data(
        data,
        model=args.model,
        max_length=args.max_length,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
        resize_images=not args.no_resize_images,
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif isinstance(data, Mix):
        _print_mix(report)
    else:
        _print(report)
    return 1 if report["bad_rows"] else 0


def _numbers(option: str, text: str | None, kind: type) -> list[Any] | None:
    """``0.7,0.3`` as a list of numbers (``kind``), or None when the option is not given."""
    if text is None:
        return None
    try:
        return [kind(item) for item in text.split(",")]
    except ValueError:
        example = "0.7,0.3" if kind is float else "500,100"
        raise ConfigError(
            f"{option} {text}: expected comma-separated numbers, one per source, e.g. {example}"
        ) from None


def _pairs(option: str, text: str | None) -> dict[str, str]:
    """``messages=dialog,system=sys`` as a mapping (tunekit's name -> the file's)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            example = "messages=dialog,system=sys" if option == "--columns" else "user=customer,assistant=agent"
            raise ConfigError(
                f"{option} {text}: {item.strip()!r} is not NAME=FILE_NAME; write tunekit's name, '=', and the "
                f"file's, comma-separated, e.g. {option} {example}"
            )
        out[ours.strip()] = theirs.strip()
    return out


def add_validate_data_parser(sub: Any) -> None:
    p = sub.add_parser(
        "validate-data",
        help="Check a data file: format, rows, length statistics, bad rows (exit 1 if any).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "file",
        nargs="+",
        help="A .jsonl, .json, .csv or .parquet file, a dataset directory or a dataset name (org/name); several are "
        "checked as a tk.Mix of them.",
    )
    p.add_argument("--model", help="A model or tokenizer (hub id or directory) to count tokens with.")
    p.add_argument("--max-length", type=int, help="Count the rows longer than this many tokens (needs --model).")
    p.add_argument("--max-pixels", type=int, help="Downscale larger images to this many pixels (Training(max_pixels)).")
    p.add_argument("--min-pixels", type=int, help="Upscale smaller images to this many pixels (Training(min_pixels)).")
    p.add_argument(
        "--no-resize-images",
        action="store_true",
        help="Report images outside --max-pixels / --min-pixels as bad rows (Training(resize_images=False)).",
    )
    p.add_argument(
        "--columns",
        metavar="NAME=COLUMN,...",
        help="The file's name for tunekit's columns, e.g. messages=dialog,system=sys_prompt (see tk.Data).",
    )
    p.add_argument(
        "--roles",
        metavar="NAME=VALUE,...",
        help="The file's message keys and roles, e.g. role=speaker,content=text,user=customer,assistant=agent.",
    )
    p.add_argument("--split", help="A dataset name's or directory's split (default: train).")
    p.add_argument("--subset", help="A dataset name's subset (its configuration).")
    p.add_argument("--revision", help="A hub dataset's branch, tag or commit.")
    p.add_argument("--weights", metavar="W,...", help="Several sources: their relative weights, e.g. 0.7,0.3.")
    p.add_argument("--counts", metavar="N,...", help="Several sources: the rows drawn from each, e.g. 500,100.")
    p.add_argument("--size", type=int, help="Several sources with --weights: the rows of the mixture.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    p.set_defaults(func=_cmd_validate_data)
