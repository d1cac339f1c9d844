"""Whose files are in an ``output_dir``: a run writes only into a directory tunekit owns, and never over a file
it did not write.

Before the first step, a run claims its ``output_dir`` (:func:`claim`): a new or empty directory, or one an
earlier tunekit run claimed (its ``tunekit-output.json``), is tunekit's. A directory holding someone else's
files (a base model, a project, the output of another tool) is refused, unless the caller passes
``Tuner(reuse_output_dir=True)``: then the names already there are recorded as foreign, and a run that would
write, rotate or delete one of them (``metrics.jsonl``, ``loss.png``, ``checkpoint-N``...) is refused before it
starts. Directories of tunekit runs from before this record (checkpoints with tunekit's manifest, or its
``tunekit-run.json``) are recognised and adopted.

Example:
    >>> from tunekit.output_dir import claim  # doctest: +SKIP
    >>> claim(Path("runs/qa"), reuse=False, write=True)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit import _fs
from tunekit._version import __version__
from tunekit.errors import CheckpointError, ConfigError

__all__ = ["MARKER", "claim", "writes"]

MARKER = "tunekit-output.json"
# What a run writes, replaces or deletes in output_dir (the engine's checkpoints, their staging directory and run
# record; the built-in hooks' default files; the CLI's default save and its `model: tiny`). tests/ checks these
# against the engine's.
_WRITES = re.compile(
    r"^(checkpoint-\d+|\.tunekit-staging|tunekit-run\.json|metrics\.jsonl|loss\.png|final|tiny-model"
    r"|runs|mlruns|wandb|trackio)$"  # and the trackers' folders (Training(report_to=...))
)
# Files of a moment: the write probe, a marker being replaced.
_TRANSIENT = re.compile(r"^\.tunekit-(write-test-|output-).*")


def writes(name: str) -> bool:
    """Whether a run may write, replace or delete the entry ``name`` of its output_dir."""
    return bool(_WRITES.match(name))


def claim(output_dir: Path, *, reuse: bool, write: bool) -> None:
    """Check that a run may write into ``output_dir``, and (with ``write``: the main process) record the claim.

    Raises :class:`ConfigError` for a dangling link, a file in the way, a directory of someone else's files
    (unless ``reuse``), and any foreign entry the run would write over."""
    where = f"Tuner(output_dir={str(output_dir)!r})"
    if output_dir.is_symlink() and not output_dir.exists():
        raise ConfigError(
            f"{where}: this is a symbolic link to {str(output_dir.readlink())!r}, which does not exist; "
            "create its target or choose another directory"
        )
    blocker = _file_in_the_way(output_dir)
    if blocker is not None:
        raise ConfigError(f"{where}: {str(blocker)!r} is a file, not a directory; choose another output_dir")
    entries = (
        sorted(p.name for p in output_dir.iterdir() if not _TRANSIENT.match(p.name)) if output_dir.is_dir() else []
    )
    record = _read(output_dir / MARKER)
    if record is not None:
        foreign = [str(n) for n in record.get("foreign", []) if isinstance(n, str)]
    elif not entries or _earlier_tunekit_run(output_dir, entries):
        foreign = [n for n in entries if not writes(n)]
    elif reuse:
        foreign = entries
    else:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ConfigError(
            f"{where}: the directory holds files tunekit did not write ({shown}); choose a new or empty directory, "
            "or pass Tuner(..., reuse_output_dir=True) to write beside them (tunekit never writes over them)"
        )
    clash = [n for n in foreign if writes(n) and (output_dir / n).exists()]
    if clash:
        raise ConfigError(
            f"{where}: the run would write over {', '.join(clash)}, which tunekit did not write; move "
            f"{'them' if len(clash) > 1 else 'it'} away or choose another output_dir"
        )
    if write and record is None:
        # A directory that cannot be written to is a ConfigError here, before the marker, not a raw PermissionError
        # from writing it (the backend's own check comes later, when the marker would already be written).
        _fs.check_writable(output_dir, "Tuner(output_dir=...)")
        marker = {
            "written_by": "tunekit",
            "tunekit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "foreign": foreign,  # names that were here before tunekit: never written over
        }
        tmp = output_dir / f".tunekit-output-{__version__}.tmp"
        _fs.write_json(tmp, marker)
        _fs.retry(lambda: tmp.replace(output_dir / MARKER))


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` itself, or the nearest existing ancestor of it, when that is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _earlier_tunekit_run(output_dir: Path, entries: list[str]) -> bool:
    """A directory a tunekit run wrote before runs left a marker: its run record, or a checkpoint with tunekit's
    own manifest in it."""
    if "tunekit-run.json" in entries:
        return True
    return any(
        re.match(r"^checkpoint-\d+$", n) and (output_dir / n / "tunekit-checkpoint.json").is_file() for n in entries
    )


def _read(path: Path) -> dict[str, Any] | None:
    """The marker at ``path``, or None when there is none or it is not one (read as a foreign file)."""
    try:
        data = _fs.read_manifest(path, missing="", fix="")
    except CheckpointError:
        return None
    return data if data.get("written_by") == "tunekit" else None
