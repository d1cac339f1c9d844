"""The on-disk save of a trained model (``Tuner.save``): weights, tokenizer and the manifest ``tunekit.json``.

A save is a directory written into a staging directory beside the target, its manifest last (the
method, objective, training, template, base model, data summary, and every file with its size and
sha256), then renamed into place: a directory with a manifest is complete, and a save that fails
leaves any previous save at the path intact.

This module writes and reads that format; it never builds a Tuner. ``tk.load``
(:mod:`tunekit.saving`) turns :func:`spec_from_save` into one; the engine loads a reward model
through the same function and its own ``load``.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit import _fs
from tunekit._version import __version__
from tunekit.backends.base import Backend, RunSpec, Trained
from tunekit.data.summary import data_summary_of
from tunekit.distributed import world
from tunekit.errors import CheckpointError, ConfigError
from tunekit.hooks import Hook
from tunekit.methods import Method, registry
from tunekit.objectives import OBJECTIVES, Objective
from tunekit.training import Training

__all__ = [
    "MANIFEST",
    "Saved",
    "base_model_of",
    "check_save",
    "read_manifest",
    "spec_from_save",
    "write_manifest",
    "write_save",
]

MANIFEST = "tunekit.json"


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the save directory ``path``; CheckpointError when it is missing or corrupt."""
    return _fs.read_manifest(
        Path(path) / MANIFEST,
        missing=f"{path} is not a tunekit save (no {MANIFEST}); save one with Tuner.save(path)",
        fix="save the tuner again",
    )


def base_model_of(spec: RunSpec) -> str | None:
    """The base model a save of ``spec`` records: the base an adapter save recorded, else the model reference
    (an existing directory made absolute), else a model object's ``name_or_path``."""
    if spec.adapter_path is not None and spec.method.is_adapter:
        recorded = read_manifest(spec.adapter_path).get("base_model")
        return str(recorded) if recorded is not None else None
    ref = spec.model_ref
    if isinstance(ref, (str, Path)):
        p = Path(ref)
        return str(p.resolve()) if p.exists() else str(ref)
    return getattr(ref, "name_or_path", None) or None


def write_manifest(trained: Trained, directory: Path) -> None:
    """Write ``tunekit.json`` into ``directory``, last: a directory with a manifest is complete."""
    spec, loaded = trained.spec, trained.loaded
    manifest: dict[str, Any] = {
        "tunekit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": base_model_of(spec) if spec.method.is_adapter else None,
        "method": spec.method.record(),
        "objective": spec.objective.record(),
        "training": spec.training.model_dump(mode="json", exclude={"resume"}),  # resume belongs to one run
        "template": loaded.template.to_dict(),
        "vocab_size": len(loaded.tokenizer),
    }
    data = data_summary_of(trained.data_summary, trained.result)
    if data:
        manifest["data"] = data  # data statistics and golden prompts, for exports of a loaded save
    manifest["files"] = _fs.list_files(directory)  # each flushed to disk; sizes checked by tk.load
    _fs.write_json(directory / MANIFEST, manifest)  # last: a save with a manifest is complete
    _fs.fsync_dir(directory)


def check_save(path: Path, spec: RunSpec, backend: Backend) -> None:
    """What a save checks before anything loads: the path can take a save (a file in the way, or a directory of
    someone else's files, is refused). Under torchrun it makes sure the processes' group exists instead (a save
    with no fit before it, ``tk.load(...).save(...)``); the path is then checked by rank 0 as it writes, and a
    refusal reaches every process together (see :func:`write_save`)."""
    if world().distributed:
        backend.join_processes(spec.training)
    else:
        _check_path(path)


def _check_path(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"save({str(path)!r}): a file is in the way; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise CheckpointError(
            f"save({str(path)!r}): the directory is not empty and is not a tunekit save; "
            "choose a new or empty directory (tunekit never overwrites files it did not write)"
        )


def write_save(trained: Trained, path: Path) -> Path:
    """Write the trained model to ``path``. With several processes call it on every one: sharded weights are
    gathered from all of them, rank 0 writes, and every process returns once the save is complete."""
    here = world()
    if not here.distributed:
        return _write(trained, path)
    backend, spec = trained.backend, trained.spec
    backend.join_processes(spec.training)  # tk.load(...).save(...): no fit has made the group (check_save made it)
    state = backend.gather_weights(trained.loaded, spec.method)  # a collective under FSDP / ZeRO-3
    error: Exception | None = None
    if here.is_main:
        try:
            _write(trained, path, state)
        except Exception as e:  # shared below, so no process waits for a rank 0 that has given up
            error = e
    backend.settle(error, what=f"save({str(path)!r})")
    return path


def _write(trained: Trained, path: Path, state_dict: dict[str, Any] | None = None) -> Path:
    _check_path(path)  # again: the path may have changed since the caller checked
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: that makes the directory private (0700), while a save is an ordinary
    # directory with the permissions the user's umask gives (reading the umask would change it).
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        trained.backend.save(trained.loaded, tmp, state_dict=state_dict)
        write_manifest(trained, tmp)
        _fs.replace_dir(tmp, path)
    except OSError as e:
        _fs.remove_tree(tmp)
        if e.errno == errno.ENOSPC:
            fix = "the disk is full; free some space or save elsewhere"
        elif isinstance(e, PermissionError):
            fix = "a file is locked or not writable (another program, antivirus, a read-only directory); retry, or "
            fix += "save elsewhere"
        else:
            fix = "check the path and retry"
        raise CheckpointError(
            f"save({str(path)!r}): could not write the save ({e.strerror or e}): {fix}"
            + ("; the previous save there is intact" if path.exists() else "")
        ) from e
    except BaseException:
        _fs.remove_tree(tmp)
        raise
    return path


@dataclass(frozen=True, eq=False)
class Saved:
    """A save read back: the run description to load it with, and the data summary it recorded."""

    spec: RunSpec
    data_summary: dict[str, Any] | None


def spec_from_save(
    path: str | Path,
    *,
    base_model: Any = None,
    training: Training | None = None,
    hooks: tuple[Hook, ...] = (),
    objective: Objective | None = None,
) -> Saved:
    """How to load the save at ``path``: the manifest checked and read back into a :class:`RunSpec`.

    ``base_model`` replaces the base an adapter save records, ``training`` and ``objective`` the saved
    ones.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"load({str(path)!r}): no such directory")
    m = read_manifest(path)
    if isinstance(m.get("files"), dict):  # written by tunekit >= 0.2: check nothing is missing or truncated
        problem = _fs.verify_files(path, m["files"], hashes=False)
        if problem is not None:
            raise CheckpointError(f"load({str(path)!r}): the save is incomplete or corrupt: {problem}; save it again")
    try:
        method = _method_of(m["method"])
        if objective is None:
            objective = _objective_of(m["objective"])
        saved_training = Training(**m["training"])
        chat_template = m["template"]["chat_template"]
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(
            f"{path / MANIFEST}: unknown, missing or invalid entry ({type(e).__name__}: {e}); "
            "was it written by a newer tunekit, or edited by hand?"
        ) from e
    common: dict[str, Any] = {
        "method": method,
        "objective": objective,
        "training": training or saved_training,
        "template": chat_template,
        "hooks": tuple(hooks),
    }
    if method.is_adapter:
        base = base_model if base_model is not None else m.get("base_model")
        if base is None:
            raise CheckpointError(f"{path}: the manifest names no base model; pass tk.load(path, base_model=...)")
        if isinstance(base, str) and Path(base).is_absolute() and not Path(base).exists():
            raise CheckpointError(
                f"{path}: the base model {base!r} recorded in the manifest is not there; "
                "pass tk.load(path, base_model=...)"
            )
        spec = RunSpec(model_ref=base, tokenizer_ref=str(path), adapter_path=path, **common)
    else:
        spec = RunSpec(model_ref=str(path), **common)
    data = m.get("data")
    return Saved(spec, data if isinstance(data, dict) else None)


def _method_of(record: dict[str, Any]) -> Method:
    return registry()[record["name"]](**record["options"])


def _objective_of(record: dict[str, Any]) -> Objective:
    return OBJECTIVES[record["name"]](**record["options"])
