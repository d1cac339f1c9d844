"""Save a trained tuner and load it back: adapter or model, tokenizer, template, manifest."""

from __future__ import annotations

import errno
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit import _fs
from tunekit.distributed import world
from tunekit.errors import CheckpointError, ConfigError
from tunekit.methods import registry
from tunekit.objectives import OBJECTIVES, Objective
from tunekit.training import Training

__all__ = ["MANIFEST", "load", "save_tuner"]

MANIFEST = "tunekit.json"
_OBJECTIVES: dict[str, type[Objective]] = dict(OBJECTIVES)  # every objective, by name


def _base_ref(tuner: Any) -> str | None:
    ref = tuner.model_ref
    if isinstance(ref, (str, Path)):
        p = Path(ref)
        return str(p.resolve()) if p.exists() else str(ref)
    return getattr(ref, "name_or_path", None) or None


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``; an existing tunekit save there is replaced only once the new one is whole."""
    trash = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    _fs.replace_dir(tmp, path, trash=trash)


def write_manifest(tuner: Any, directory: Path) -> None:
    """Write ``tunekit.json`` (method, objective, training, template, base model, data summary, the file list with
    sizes and sha256) into ``directory``, last: a directory with a manifest is complete."""
    from tunekit import __version__
    from tunekit.export.prompts import data_summary_of

    loaded = tuner.loaded
    manifest: dict[str, Any] = {
        "tunekit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": _base_ref(tuner) if tuner.method.is_adapter else None,
        "method": {"name": tuner.method.name, "options": tuner.method.model_dump(mode="json")},
        "objective": {"name": tuner.objective_used.name, "options": tuner.objective_used.model_dump(mode="json")},
        "training": tuner.training.model_dump(mode="json", exclude={"resume"}),  # resume belongs to one run
        "template": loaded.template.to_dict(),
        "vocab_size": len(loaded.tokenizer),
    }
    data = data_summary_of(tuner)
    if data:
        manifest["data"] = data  # data statistics and golden prompts, for exports of a loaded save
    if tuner.adapter_path is not None and tuner.method.is_adapter:
        prev = _read_manifest(tuner.adapter_path)
        manifest["base_model"] = prev.get("base_model")
    manifest["files"] = _fs.list_files(directory)  # each flushed to disk; sizes checked by tk.load
    _fs.write_json(directory / MANIFEST, manifest)  # last: a save with a manifest is complete
    _fs.fsync_dir(directory)


def save_tuner(tuner: Any, path: Path) -> Path:
    """Write the tuner to ``path``. With several processes call it on every one: sharded weights are
    gathered from all of them, rank 0 writes, and every process returns once the save is complete."""
    here = world()
    if not here.distributed:
        return _write(tuner, path)
    tuner.backend.join_processes(tuner.training)  # tk.load(...).save(...): no fit has made the group
    state = tuner.backend.gather_weights(tuner.loaded, tuner.method)  # a collective under FSDP / ZeRO-3
    error: Exception | None = None
    if here.is_main:
        try:
            _write(tuner, path, state)
        except Exception as e:  # shared below, so no process waits for a rank 0 that has given up
            error = e
    tuner.backend.settle(error, what=f"save({str(path)!r})")
    return path


def _write(tuner: Any, path: Path, state_dict: dict[str, Any] | None = None) -> Path:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"save({str(path)!r}): a file is in the way; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise CheckpointError(
            f"save({str(path)!r}): the directory is not empty and is not a tunekit save; "
            "choose a new or empty directory (tunekit never overwrites files it did not write)"
        )
    loaded = tuner.loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: that makes the directory private (0700), while a save is an ordinary
    # directory with the permissions the user's umask gives (reading the umask would change it).
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        if state_dict is not None:
            tuner.backend.save(loaded, tmp, state_dict=state_dict)
        else:
            tuner.backend.save(loaded, tmp)
        write_manifest(tuner, tmp)
        _replace_dir(tmp, path)
    except OSError as e:
        _fs.remove_tree(tmp)
        if e.errno == errno.ENOSPC:
            fix = "the disk is full; free some space or save elsewhere"
        elif isinstance(e, PermissionError):
            fix = (
                "a file is locked or not writable (another program, antivirus, a read-only directory); retry, or save "
            )
            fix += "elsewhere"
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


def _read_manifest(path: Path) -> dict[str, Any]:
    f = Path(path) / MANIFEST
    if not f.exists():
        raise CheckpointError(f"{path} is not a tunekit save (no {MANIFEST}); save one with Tuner.save(path)")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is corrupt ({e}); save the tuner again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f} is corrupt: expected a JSON object")
    return data


def load(
    path: str | Path,
    *,
    base_model: Any = None,
    training: Training | None = None,
    hooks: Any = (),
    objective: Objective | None = None,
) -> Any:
    """Load a tuner written by ``Tuner.save``, ready to generate or train further.

    ``base_model`` overrides the base recorded in the manifest (for an adapter moved to another
    machine). ``training`` replaces the saved training config for further training, and
    ``objective`` the saved objective (e.g. an SFT model trained on with ``tk.DPO()``).

    Example:
        >>> import tunekit as tk
        >>> tuner = tk.load("runs/qa/adapter")  # doctest: +SKIP
        >>> tuner.generate("Translate to French: cheese")  # doctest: +SKIP
    """
    from tunekit.tuner import Tuner

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"load({str(path)!r}): no such directory")
    m = _read_manifest(path)
    if isinstance(m.get("files"), dict):  # written by tunekit >= 0.2: check nothing is missing or truncated
        problem = _fs.verify_files(path, m["files"], hashes=False)
        if problem is not None:
            raise CheckpointError(f"load({str(path)!r}): the save is incomplete or corrupt: {problem}; save it again")
    methods = registry()
    try:
        method_cls = methods[m["method"]["name"]]
        method = method_cls(**m["method"]["options"])
        if objective is None:
            obj_cls = _OBJECTIVES[m["objective"]["name"]]
            objective = obj_cls(**m["objective"]["options"])
        saved_training = Training(**m["training"])
        chat_template = m["template"]["chat_template"]
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(
            f"{path / MANIFEST}: unknown, missing or invalid entry ({type(e).__name__}: {e}); "
            "was it written by a newer tunekit, or edited by hand?"
        ) from e
    if method.is_adapter:
        base = base_model if base_model is not None else m.get("base_model")
        if base is None:
            raise CheckpointError(f"{path}: the manifest names no base model; pass tk.load(path, base_model=...)")
        if isinstance(base, str) and Path(base).is_absolute() and not Path(base).exists():
            raise CheckpointError(
                f"{path}: the base model {base!r} recorded in the manifest is not there; "
                "pass tk.load(path, base_model=...)"
            )
        tuner = Tuner(
            base,
            method=method,
            objective=objective,
            training=training or saved_training,
            tokenizer=str(path),
            template=chat_template,
            hooks=hooks,
        )
        tuner.adapter_path = path
    else:
        tuner = Tuner(
            str(path),
            method=method,
            objective=objective,
            training=training or saved_training,
            template=chat_template,
            hooks=hooks,
        )
    if isinstance(m.get("data"), dict):
        tuner.data_summary = m["data"]
    return tuner
