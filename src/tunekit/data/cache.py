"""The tokenisation cache: a second run on the same data skips templating and tokenising.

An entry is keyed by a SHA-256 of everything that changes the encoding: the normalised examples
themselves (their content and their images' pixels, not a file's path or modification time), the tokenizer (its
serialised vocabulary and merges, special tokens and class), the chat template, ``max_length``,
the objective's encoding options, ``on_bad_rows`` and the tunekit version. Entries are Parquet
files written to a temporary name and renamed into place, so a crash or two processes writing the
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunekit._version import __version__
from tunekit.data.encoding import Encoded
from tunekit.data.formats import Example
from tunekit.data.templates import template_options

__all__ = ["cache_dir", "cache_key", "cached_encode"]

logger = logging.getLogger("tunekit")

_FORMAT = 2  # bump when the stored layout or what encoding supervises changes (2: spans end at the end of turn)


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


def cache_key(tokenizer: Any, examples: list[Example], settings: dict[str, Any]) -> str:
    """SHA-256 of the examples, the tokenizer and template, the settings and the tunekit, transformers and
    tokenizers versions (a new release of either can tokenise or apply a chat template differently)."""
    h = hashlib.sha256()
    versions = {"v": __version__, "transformers": _version("transformers"), "tokenizers": _version("tokenizers")}
    h.update(json.dumps({**versions, "format": _FORMAT, **settings}, sort_keys=True).encode("utf-8"))
    h.update(_tokenizer_digest(tokenizer).encode("utf-8"))
    for ex in examples:
        fields: list[Any] = [ex.row, ex.text, ex.messages]
        fields += ([list(ex.trained)] if ex.trained is not None else []) + ([list(ex.tools)] if ex.tools else [])
        fields += [[_image_digest(image) for image in ex.images]] if ex.images else []  # text rows: keys unchanged
        h.update(json.dumps(fields, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _read(path: Path) -> Encoded | None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[b"tunekit"].decode("utf-8"))
        cols = table.to_pydict()
        return Encoded(
            input_ids=cols["input_ids"],
            labels=cols["labels"],
            rows=cols["rows"],
            skipped=[(int(r), str(reason)) for r, reason in meta["skipped"]],
            truncated=int(meta["truncated"]),
        )
    except Exception as e:  # unreadable or from another layout: re-encode and overwrite it
        logger.info("ignoring the unreadable cache entry %s: %s", path, e)
        return None


def _write(path: Path, enc: Encoded) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"skipped": enc.skipped, "truncated": enc.truncated}
    table = pa.table(
        {
            "input_ids": pa.array(enc.input_ids, type=pa.list_(pa.int32())),
            "labels": pa.array(enc.labels, type=pa.list_(pa.int32())),
            "rows": pa.array(enc.rows, type=pa.int64()),
        }
    ).replace_schema_metadata({"tunekit": json.dumps(meta, ensure_ascii=False)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_encode(
    encode: Callable[[], Encoded],
    tokenizer: Any,
    examples: list[Example],
    settings: dict[str, Any],
    *,
    enabled: bool = True,
    directory: str | None = None,
) -> Encoded:
    """``encode()``, or its result from an earlier run with the same key."""
    if not enabled:
        return encode()
    key = cache_key(tokenizer, examples, settings)
    path = cache_dir(directory) / "tokenized" / key[:2] / f"{key}.parquet"
    if path.is_file():
        hit = _read(path)
        if hit is not None:
            logger.info("tokenised data from the cache: %s", path)
            return hit
    enc = encode()
    try:
        _write(path, enc)
    except OSError as e:  # a read-only or full disk must not fail the run
        logger.warning("could not write the tokenisation cache %s: %s", path, e)
    return enc
