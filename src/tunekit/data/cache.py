"""The tokenisation cache: a second run on the same data skips templating and tokenising.

An entry is keyed by a SHA-256 of everything that changes the encoding: the normalised examples
themselves (their content and their images' pixels, not a file's path or modification time), the tokenizer (its
serialised vocabulary and merges, special tokens and class), the chat template, ``max_length``,
the objective's encoding options, ``on_bad_rows`` and the tunekit version. Entries are Arrow
files (memory-mapped when read: the trainer reads the tokens from disk, not from Python lists)
written to a temporary name and renamed into place, so a crash or two processes writing the
same entry never leave a half-written file behind. A corrupt or unreadable entry is ignored (and
rewritten), never trusted.

The cache lives in ``Training(cache_dir=...)``, else ``$TUNEKIT_CACHE``, else
``$XDG_CACHE_HOME/tunekit``, else ``~/.cache/tunekit``; delete the directory to clear it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tunekit._version import __version__
from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example
from tunekit.data.templates import template_options

__all__ = [
    "cache_dir", "cache_key", "cached_encode", "entry_path", "example_digest", "examples_digest", "read_entry",
    "write_entry",
]  # fmt: skip

logger = logging.getLogger("tunekit")

# bump when the stored layout or what encoding supervises changes (2: spans end at the end of turn; 3: Arrow files,
# memory-mapped, keyed by the digests of the examples)
_FORMAT = 3


def cache_dir(configured: str | None = None) -> Path:
    """Where tokenised data is cached (see the module docstring for the order)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("TUNEKIT_CACHE"):
        return Path(os.environ["TUNEKIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tunekit"


def _tokenizer_digest(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:  # a slow tokenizer: its vocabulary stands for it
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
    h.update(type(tokenizer).__name__.encode("utf-8"))
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode("utf-8"))
    h.update(str(getattr(tokenizer, "chat_template", None)).encode("utf-8"))
    h.update(json.dumps(template_options(tokenizer), sort_keys=True, default=str).encode("utf-8"))
    for attr in ("add_bos_token", "add_eos_token", "eos_token_id", "bos_token_id"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    return h.hexdigest()


def _version(module: str) -> str | None:
    """``module.__version__``, or None when it is not installed."""

    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None


def _image_digest(image: Any) -> str:
    """An image's pixels, size and mode (two images that differ anywhere key differently)."""
    h = hashlib.sha256(f"{image.mode} {image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def example_digest(ex: Example) -> bytes:
    """SHA-256 of what of one example changes its encoding (its row, text, messages, training flags, tools and
    images' pixels)."""
    fields: list[Any] = [ex.row, ex.text, ex.messages]
    fields += ([list(ex.trained)] if ex.trained is not None else []) + ([list(ex.tools)] if ex.tools else [])
    fields += [[_image_digest(image) for image in ex.images]] if ex.images else []  # text rows: keys unchanged
    return hashlib.sha256(_ENCODER.encode(fields).encode("utf-8")).digest()


# json.dumps(..., ensure_ascii=False, default=str), without building an encoder per example.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def examples_digest(digests: Iterable[bytes]) -> bytes:
    """The examples' part of the key: SHA-256 of their digests, in order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.digest()


def cache_key(tokenizer: Any, examples: Iterable[Example] | bytes, settings: dict[str, Any]) -> str:
    """SHA-256 of the examples (or their :func:`examples_digest`), the tokenizer and template, the settings and the
    tunekit, transformers and tokenizers versions (a new release of either can tokenise or apply a chat template
    differently)."""
    h = hashlib.sha256()
    versions = {"v": __version__, "transformers": _version("transformers"), "tokenizers": _version("tokenizers")}
    h.update(json.dumps({**versions, "format": _FORMAT, **settings}, sort_keys=True).encode("utf-8"))
    h.update(_tokenizer_digest(tokenizer).encode("utf-8"))
    h.update(examples if isinstance(examples, bytes) else examples_digest(map(example_digest, examples)))
    return h.hexdigest()


def entry_path(key: str, directory: str | None = None) -> Path:
    """Where the cache entry ``key`` lives."""
    return cache_dir(directory) / "tokenized" / key[:2] / f"{key}.arrow"


def read_entry(path: Path) -> Encoded | None:
    """The entry at ``path``, memory-mapped; None when there is none, or it is unreadable (then rewritten)."""
    if not path.is_file():
        return None
    from datasets import Dataset

    try:
        import pyarrow as pa

        with pa.OSFile(str(path), "rb") as f:  # the schema only (datasets keeps its own metadata, not ours)
            meta = json.loads((pa.ipc.open_stream(f).schema.metadata or {})[b"tunekit"].decode("utf-8"))
        table = Dataset.from_file(str(path))
        if table.column_names != ["input_ids", "labels", "rows"]:
            raise ValueError(f"columns {table.column_names}")
        skipped = [(int(r), str(reason)) for r, reason in meta["skipped"]]
    except Exception as e:  # unreadable or from another layout: re-encode and overwrite it
        logger.info("ignoring the unreadable cache entry %s: %s", path, e)
        return None
    logger.info("tokenised data from the cache: %s", path)
    return Encoded.of_table(table, skipped, int(meta["truncated"]))


def write_entry(path: Path, batches: Iterable[Any], *, skipped: list[tuple[int, str]], truncated: int) -> Encoded:
    """Write record batches of ``input_ids`` / ``labels`` / ``rows`` to ``path`` (an Arrow file, written to a
    temporary name and renamed into place) and return it memory-mapped."""
    import pyarrow as pa
    from datasets import Dataset

    meta = {"tunekit": json.dumps({"skipped": skipped, "truncated": truncated}, ensure_ascii=False)}
    schema = pa.schema(
        [("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64())), ("rows", pa.int64())], metadata=meta
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".arrow", dir=path.parent)
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Encoded.of_table(Dataset.from_file(str(path)), skipped, truncated)


def _batches(enc: Encoded) -> Iterator[Any]:
    import pyarrow as pa

    yield pa.record_batch(
        [pa.array(list(enc.input_ids), pa.list_(pa.int64())), pa.array(list(enc.labels), pa.list_(pa.int64())),
         pa.array(list(enc.rows), pa.int64())],
        names=["input_ids", "labels", "rows"],
    )  # fmt: skip


def cached_encode(
    encode: Callable[[], Encoded],
    tokenizer: Any,
    examples: list[Example],
    settings: dict[str, Any],
    *,
    enabled: bool = True,
    directory: str | None = None,
) -> Encoded:
    """``encode()``, or its result from an earlier run with the same key (for examples held in a list; the Arrow
    driver, :mod:`tunekit.data.arrow`, reads and writes the same entries)."""
    if not enabled:
        return encode()
    path = entry_path(cache_key(tokenizer, examples, settings), directory)
    hit = read_entry(path)
    if hit is not None:
        return hit
    enc = encode()
    try:
        return write_entry(path, _batches(enc), skipped=enc.skipped, truncated=enc.truncated)
    except OSError as e:  # a read-only or full disk must not fail the run
        logger.warning("could not write the tokenisation cache %s: %s", path, e)
    return enc
