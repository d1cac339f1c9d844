"""Data named rather than given as a file: a dataset directory, or a dataset by name, read through ``datasets``.

``fit("org/name")`` (or ``tk.Data("org/name", split=..., subset=..., revision=...)``) loads the dataset with
``datasets.load_dataset``, which finds it on the Hugging Face Hub or, offline (``HF_DATASETS_OFFLINE=1``), in the
local ``datasets`` cache (``HF_DATASETS_CACHE``) where an earlier load left it. A directory is read as a
``Dataset.save_to_disk`` directory (``datasets.load_from_disk``) or as a folder of data files (``load_dataset`` on the
folder infers the reader from the files' extensions). The library does the reading, caching and revision handling;
this module only decides what a string names and turns the library's errors into a :class:`DatasetError` that says
what was tried and how to fix it.

A string that looks like a path (it has a data file's extension, starts with ``.``, ``/`` or ``~``, or its folder
exists) and is not there is a missing file, never looked up on the hub: ``data/train.jsonl`` misspelled says "data
file not found".

Example:
    >>> from tunekit.data.sources import looks_like_name
    >>> looks_like_name("HuggingFaceH4/no_robots"), looks_like_name("data/train.jsonl")
    (True, False)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunekit._quiet import quiet
from tunekit.errors import DatasetError

__all__ = ["DATA_SUFFIXES", "load_directory", "load_named", "looks_like_name", "pick_split"]

# The extensions of data files: a string ending in one names a file (tunekit reads .jsonl/.json/.csv/.parquet; the
# rest are files a user may have meant, which are not hub names either).
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tsv", ".txt", ".arrow", ".gz", ".zst", ".xz", ".zip")
# A hub repository id: ``name`` or ``org/name`` (letters, digits, '-', '_', '.'; no '--' or '..').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

_DIRECTORY_FIX = (
    "pass a data file (.jsonl, .json, .csv, .parquet), a folder of such files, or a directory written by "
    "Dataset.save_to_disk"
)


def looks_like_name(text: str) -> bool:
    """Whether ``text``, which is not an existing file or directory, reads as a dataset name (``org/name``) rather
    than as a path to a file that is missing."""
    if text.lower().endswith(DATA_SUFFIXES) or text.startswith((".", "/", "~", "\\")) or "\\" in text:
        return False
    if not _HUB_ID.match(text) or "--" in text or ".." in text:
        return False
    parent = Path(text).parent
    return parent == Path(".") or not parent.is_dir()  # data/train with data/ here is a path, not org/name


def pick_split(loaded: Any, split: str | None, name: str, *, what: str = "training") -> Any:
    """The split of a ``DatasetDict`` to read: ``split``, else its only split, else (training data) ``train``."""
    splits = sorted(loaded.keys())
    if split is not None:
        if split not in loaded:
            raise DatasetError(
                f"{name}: no split {split!r}; its splits are {splits}: pass one of them as tk.Data({name!r}, "
                f"split={splits[0]!r})"
            )
        return loaded[split]
    if len(splits) == 1:
        return loaded[splits[0]]
    if what == "training" and "train" in loaded:
        return loaded["train"]
    raise DatasetError(
        f"{name} has the splits {splits}; say which to read for the {what} data, e.g. tk.Data({name!r}, "
        f"split={splits[0]!r})"
    )


def _first_lines(e: BaseException, n: int = 3) -> str:
    text = " ".join(str(e).strip().splitlines()[:n])
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _cache_location() -> str:
    import datasets

    return str(datasets.config.HF_DATASETS_CACHE)


def _offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE or getattr(datasets.config, "HF_DATASETS_OFFLINE", False))


def _option_error(name: str, e: ValueError, split: str | None, subset: str | None) -> DatasetError | None:
    """A ValueError of ``load_dataset`` about a split or a subset (configuration): what it says, with the fix."""
    text = " ".join(str(e).split())
    if "split" in text.lower() and split is not None:
        return DatasetError(f"{name}: no split {split!r} ({text}); pass one of its splits as split=...")
    if "config" in text.lower():
        given = f"no subset {subset!r}" if subset is not None else "it has several subsets and none was chosen"
        return DatasetError(f"{name}: {given} ({text}); pass one of them as tk.Data({name!r}, subset=...)")
    return None


def load_named(
    name: str,
    *,
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    what: str = "training",
    streaming: bool = False,
) -> Any:
    """The ``datasets.Dataset`` of the dataset ``name`` (the hub, or the local ``datasets`` cache offline); with
    ``streaming``, an ``IterableDataset`` read as it is iterated."""
    import datasets

    try:
        with quiet():
            loaded = datasets.load_dataset(name, subset, split=split, revision=revision, streaming=streaming)
    except ValueError as e:  # an unknown split or subset; the cache's "no config" is a ValueError too
        raise _option_error(name, e, split, subset) or _not_found(name, e) from None
    except Exception as e:  # huggingface_hub's and datasets' errors for a name that is not there or not reachable
        raise _not_found(name, e) from None
    return loaded if split is not None else pick_split(loaded, None, name, what=what)


def _not_found(name: str, e: BaseException) -> DatasetError:
    here = f"no data file or directory {name!r} here (relative to {Path.cwd()})"
    if _offline():
        tried = (
            f"no dataset {name!r} in the local datasets cache ({_cache_location()}), and the hub was not asked "
            f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set): {_first_lines(e)}"
        )
    else:
        tried = (
            f"the dataset {name!r} could not be loaded from the Hugging Face Hub nor from the local datasets cache "
            f"({_cache_location()}): {_first_lines(e)}"
        )
    return DatasetError(
        f"{here}, and {tried}. If it is a file, give its path with the extension (e.g. data/train.jsonl); if it is "
        "a hub dataset, check the name (org/name), load it once online so that datasets caches it (offline runs "
        "read the cache), and log in (hf auth login, or HF_TOKEN) for a gated or private one"
    )


def load_directory(
    path: Path, *, split: str | None = None, subset: str | None = None, what: str = "training", streaming: bool = False
) -> Any:
    """The ``datasets.Dataset`` of a dataset directory: a ``save_to_disk`` directory or a folder of data files; with
    ``streaming``, an ``IterableDataset`` read as it is iterated."""
    import datasets

    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    if not saved and not any(f.is_file() and f.name.lower().endswith(DATA_SUFFIXES) for f in path.rglob("*")):
        raise DatasetError(f"{path} is a directory with no data files in it; {_DIRECTORY_FIX}")
    try:
        with quiet():
            if saved:
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(str(path), subset, split=split, streaming=streaming)
    except ValueError as e:
        raise _option_error(str(path), e, split, subset) or DatasetError(
            f"{path}: could not read the directory as a dataset ({_first_lines(e)}); {_DIRECTORY_FIX}"
        ) from None
    except Exception as e:  # datasets' EmptyDatasetError (no data files), a damaged save_to_disk directory, ...
        raise DatasetError(
            f"{path} is a directory that datasets cannot read as a dataset ({_first_lines(e)}); {_DIRECTORY_FIX}"
        ) from None
    if saved and subset is not None:
        raise DatasetError(
            f"{path}: subset={subset!r} names a configuration of a dataset on the hub; a save_to_disk directory "
            "has none (leave subset out)"
        )
    if hasattr(loaded, "keys"):  # a DatasetDict: all its splits
        loaded = pick_split(loaded, split, str(path), what=what)
    elif saved and split is not None:
        raise DatasetError(
            f"{path} holds one dataset (saved by Dataset.save_to_disk), not splits; leave split={split!r} out"
        )
    if saved and streaming:  # memory-mapped already: read it row by row
        return loaded.to_iterable_dataset()
    return loaded
