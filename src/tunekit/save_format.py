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

import hashlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit import _fs
from tunekit._version import __version__
from tunekit.backends.base import Backend, RunSpec, Trained
from tunekit.data.summary import data_summary_of
from tunekit.data.templates import check_template_options
from tunekit.distributed import world
from tunekit.errors import CheckpointError, ConfigError, IncompatibleError
from tunekit.hooks import Hook
from tunekit.methods import Method, registry
from tunekit.objectives import OBJECTIVES, Objective
from tunekit.training import Training

__all__ = [
    "EXPORT_MANIFEST",
    "MANIFEST",
    "Saved",
    "base_fingerprint",
    "base_model_of",
    "check_save",
    "check_save_path",
    "read_manifest",
    "spec_from_save",
    "write_manifest",
    "write_save",
]

MANIFEST = "tunekit.json"
# An adapter export is a save plus its own manifest, written after (tunekit.export); no loader reads it.
EXPORT_MANIFEST = "tunekit_export.json"
logger = logging.getLogger("tunekit")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the save directory ``path``; CheckpointError when it is missing or corrupt."""
    return _fs.read_manifest(
        Path(path) / MANIFEST,
        missing=f"{path} is not a tunekit save (no {MANIFEST}); save one with Tuner.save(path)",
        fix="save the tuner again",
    )


def base_model_of(spec: RunSpec) -> str | None:
    """The base model a save of ``spec`` records: the model reference (an existing directory made absolute),
    else, for a model object, the base an adapter save recorded or the object's ``name_or_path``."""
    ref = spec.model_ref
    if isinstance(ref, (str, Path)):  # the base it sits on now (tk.load may have been given another one)
        p = Path(ref)
        return str(p.resolve()) if p.exists() else str(ref)
    if spec.adapter_path is not None and spec.method.is_adapter:  # a model object: what the save recorded
        recorded = read_manifest(spec.adapter_path).get("base_model")
        return str(recorded) if recorded is not None else None
    return getattr(ref, "name_or_path", None) or None


# Keys of config.json that say nothing about the weights (where a copy came from, how it was last loaded).
_VOLATILE_CONFIG = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype", "use_cache"}
)
# The keys an error names when two bases differ in shape (the common case: another size of the same family).
_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
_SAMPLES = 16  # blocks read from each weights file: a different seed, revision or fine-tune differs in all of them
_BLOCK = 4096
_EDGE = 256  # bytes read at each end of every safetensors tensor


def base_fingerprint(ref: Any) -> dict[str, Any] | None:
    """What identifies the base model ``ref`` (a local model directory; None for anything else): the sha256 of its
    config (less the keys that do not describe the weights), its shape, and a sha256 over each weights file's
    name and size and, for safetensors, its header and the first and last 256 bytes of every tensor (other
    formats: 16 evenly spaced 4 KiB blocks).

    Sampled rather than hashed whole: a 7B base is 15 GB; a fine-tune, another seed or revision changes
    the bytes of each tensor it touched, so a sample of every tensor tells them apart in milliseconds."""
    if not isinstance(ref, (str, Path)):
        return None
    root = Path(ref)
    config_path = root / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    kept = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}
    weights = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    digest = hashlib.sha256()
    for f in weights:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size};".encode())
        with open(f, "rb") as fh:
            if not (f.suffix == ".safetensors" and _sample_tensors(fh, size, digest)):
                for i in range(_SAMPLES):
                    fh.seek(i * size // _SAMPLES)
                    digest.update(fh.read(_BLOCK))
    return {
        "config_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(),
        "shape": {k: kept[k] for k in _SHAPE_KEYS if k in kept},
        "weights_sample_sha256": digest.hexdigest() if weights else None,
    }


def _sample_tensors(fh: Any, size: int, digest: Any) -> bool:
    """Feed ``digest`` a safetensors file's header and the first and last 256 bytes of every tensor in it: a
    fine-tune that changed a single tensor (a norm, one projection) changes that tensor's bytes. False when
    the file is not a readable safetensors file."""
    head = fh.read(8)
    if len(head) < 8:
        return False
    length = int.from_bytes(head, "little")
    if not 0 < length <= min(size - 8, 100_000_000):
        return False
    header = fh.read(length)
    try:
        entries = json.loads(header)
    except ValueError:
        return False
    if not isinstance(entries, dict):
        return False
    digest.update(header)
    for name in sorted(k for k in entries if k != "__metadata__"):
        offsets = entries[name].get("data_offsets") if isinstance(entries[name], dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return False
        start, end = 8 + length + int(offsets[0]), 8 + length + int(offsets[1])
        for at in sorted({start, max(start, end - _EDGE)}):
            fh.seek(at)
            digest.update(fh.read(min(_EDGE, end - at)))
    return True


def _recorded_fingerprint(spec: RunSpec) -> dict[str, Any] | None:
    found = base_fingerprint(spec.model_ref)
    if found is None and spec.adapter_path is not None:  # a loaded save on a base we cannot read: keep its record
        recorded = read_manifest(spec.adapter_path).get("base_fingerprint")
        return recorded if isinstance(recorded, dict) else None
    return found


def check_base(path: Path, recorded: Any, base: Any) -> None:
    """Refuse to put the adapter saved at ``path`` on a base other than the one it was trained on (its
    ``recorded`` fingerprint): a base of another shape would fail deep in torch, one of the same shape (another
    seed, revision or fine-tune) would load without a word and give wrong outputs."""
    if not isinstance(recorded, dict):
        return  # a save written before fingerprints, or of a base tunekit could not read
    fix = (
        "pass the base it was trained on (tk.load(path, base_model=...)), or, to put it on another base on "
        "purpose, tk.load(path, base_model=..., allow_base_change=True) (on the command line: --allow-base-change)"
    )
    where = f"load({str(path)!r})"
    shape: dict[str, Any] = recorded["shape"] if isinstance(recorded.get("shape"), dict) else {}
    config = getattr(base, "config", None)
    found = None if config is not None else base_fingerprint(base)
    if config is not None:  # a model object: compare what its config says of the shape
        now = {k: getattr(config, k, None) for k in shape}
    elif found is None:
        return  # a hub id or a path we cannot read: peft's own checks are all there is
    else:
        now = found["shape"]
    differs = [f"{k} {shape[k]} -> {now.get(k)}" for k in shape if now.get(k) != shape[k]]
    if differs:
        raise IncompatibleError(
            f"{where}: the adapter was trained on a base of another shape ({', '.join(differs)}); {fix}"
        )
    if found is None:
        return  # a model object of the same shape: its weights are not compared
    if found["weights_sample_sha256"] != recorded.get("weights_sample_sha256"):
        raise IncompatibleError(
            f"{where}: the base model {str(base)!r} is not the one the adapter was trained on (same shape, "
            f"different weights: another revision, seed or fine-tune); {fix}"
        )
    if found["config_sha256"] != recorded.get("config_sha256"):  # e.g. a new eos_token_id upstream: same weights
        logger.warning(
            "%s: the base model %r has the weights the adapter was trained on but a different config.json",
            where,
            str(base),
        )


def write_manifest(trained: Trained, directory: Path) -> None:
    """Write ``tunekit.json`` into ``directory``, last: a directory with a manifest is complete."""
    spec, loaded = trained.spec, trained.loaded
    manifest: dict[str, Any] = {
        "tunekit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": base_model_of(spec) if spec.method.is_adapter else None,
        "base_fingerprint": _recorded_fingerprint(spec) if spec.method.is_adapter else None,
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


def check_save_path(path: Path) -> None:
    """What :func:`check_save` checks of the path alone (``tunekit fit`` calls it before training)."""
    _check_path(path)


def _check_path(path: Path) -> None:
    """Refuse, before anything is written (or trained: ``tunekit fit`` checks its save path first), a path a save
    cannot go to: not a path, a file in the way, a dangling link, someone else's files, a place it cannot write."""
    where = f"save({str(path)!r})"
    if not str(path).strip() or "\x00" in str(path):
        raise CheckpointError(f"{where}: not a usable path; choose a directory path")
    if path.is_symlink() and not path.exists():
        raise CheckpointError(
            f"{where}: a symbolic link to {str(path.readlink())!r}, which does not exist; create its target or "
            "choose a directory"
        )
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{where}: a file is in the way; choose a directory path")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise CheckpointError(f"{where}: a file is in the way ({str(existing)!r}); choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise CheckpointError(
            f"{where}: the directory is not empty and is not a tunekit save; "
            "choose a new or empty directory (tunekit never overwrites files it did not write)"
        )
    if (path / MANIFEST).is_file():  # an earlier save, replaced whole: only if it holds nothing else
        extra = _unlisted(path)
        if extra:
            raise CheckpointError(
                f"{where}: the earlier save there also holds files tunekit did not write ({', '.join(extra[:5])}); "
                "move them away or save elsewhere (replacing the save would delete them)"
            )
    parent = path.absolute().parent
    place = parent if parent.is_dir() else existing  # where the save (or the directories above it) is created
    try:  # a probe file, removed at once
        fd, probe = tempfile.mkstemp(prefix=".tunekit-write-test-", dir=place)
    except OSError as e:
        raise CheckpointError(
            f"{where}: cannot write to {str(place)!r} ({e.strerror or e}); choose a directory you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)


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
    target = path.absolute()  # "." has a name to put a staging directory beside
    # Not tempfile.mkdtemp: that makes the directory private (0700), while a save is an ordinary
    # directory with the permissions the user's umask gives (reading the umask would change it).
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        trained.backend.save(trained.loaded, tmp, state_dict=state_dict)
        write_manifest(trained, tmp)
        _fs.replace_dir(tmp, target)
    except Exception as e:
        full = _fs.disk_full_reason(e, tmp)  # before the partial save is removed: what it filled tells
        _fs.remove_tree(tmp)
        if full is not None:
            fix = "the disk is full; free some space or save elsewhere"
            if full == "File too large":
                fix = "the disk is full or a file reached the size limit (ulimit -f); free some space or save elsewhere"
            reason = full
        elif isinstance(e, PermissionError):
            fix = "a file is locked or not writable (another program, antivirus, a read-only directory); retry, or "
            fix += f"save elsewhere ({_fs.locked_hint()})"
            reason = e.strerror or str(e)
        elif isinstance(e, OSError):
            fix = "check the path and retry"
            reason = e.strerror or str(e)
        else:  # not a write that failed: raised as it is
            raise
        raise CheckpointError(
            f"save({str(path)!r}): could not write the save ({reason}): {fix}"
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
    trust_remote_code: bool | None = None,
    allow_pickle: bool | None = None,
    allow_control_tokens: bool | None = None,
    verify: bool = True,
    allow_base_change: bool = False,
) -> Saved:
    """How to load the save at ``path``: the manifest checked and read back into a :class:`RunSpec`.

    ``base_model`` replaces the base an adapter save records, ``training`` and ``objective`` the saved
    ones. Trust is the caller's alone: ``trust_remote_code``, ``allow_pickle`` and
    ``allow_control_tokens`` come from these arguments (or, when they are None, from the caller's
    ``training``), never from the manifest, which records what the training run used but grants nothing
    (nor does it choose the trackers or the cache directory of later runs). ``verify`` checks every file against the
    sha256 the manifest records (False checks only sizes). An adapter goes only on the base it was
    trained on (its recorded fingerprint), unless ``allow_base_change``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"load({str(path)!r}): no such directory")
    m = read_manifest(path)
    if isinstance(m.get("files"), dict):  # written by tunekit >= 0.2: check nothing is missing, truncated or changed
        problem = _fs.verify_files(path, m["files"], hashes=verify)
        extra = _unlisted(path)
        if problem is None and extra:  # the loaders read what is there, listed or not
            problem = f"{', '.join(extra[:5])} {'is' if len(extra) == 1 else 'are'} not listed in its manifest"
        if problem is not None:
            fix = "save it again, or copy it again from where it came from"
            raise CheckpointError(f"load({str(path)!r}): the save is incomplete or corrupt: {problem}; {fix}")
    elif verify:
        raise CheckpointError(
            f"load({str(path)!r}): {MANIFEST} lists no files, so the save cannot be checked; save it again with this "
            "tunekit, or pass verify=False if you trust where it came from"
        )
    try:
        method = _method_of(m["method"])
        if objective is None:
            objective = _objective_of(m["objective"])
        saved_training = Training(**m["training"])
        chat_template = m["template"]["chat_template"]
        template_options = check_template_options(m["template"].get("options"))
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(
            f"{path / MANIFEST}: unknown, missing or invalid entry ({type(e).__name__}: {e}); "
            "was it written by a newer tunekit, or edited by hand?"
        ) from e
    # The manifest records what the run used; what this process may run or unpickle is its caller's decision.
    trust: dict[str, Any] = {
        name: bool(given if given is not None else _given(training, name))
        for name, given in (
            ("trust_remote_code", trust_remote_code),
            ("allow_pickle", allow_pickle),
            ("allow_control_tokens", allow_control_tokens),
        )
    }
    if training is None:  # where the loader's later runs report to and cache in is not the save's to say either
        defaults = Training()
        trust.update(report_to=defaults.report_to, cache_dir=defaults.cache_dir)
    common: dict[str, Any] = {
        "method": method,
        "objective": objective,
        "training": (training or saved_training).model_copy(update=trust),
        "template": chat_template,
        "template_options": template_options,
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
        if not allow_base_change:
            check_base(path, m.get("base_fingerprint"), base)
        spec = RunSpec(model_ref=base, tokenizer_ref=str(path), adapter_path=path, **common)
    else:
        spec = RunSpec(model_ref=str(path), **common)
    data = m.get("data")
    return Saved(spec, data if isinstance(data, dict) else None)


def _unlisted(path: Path) -> list[str]:
    """Files under the save ``path`` that its manifest does not list (the manifest itself aside)."""
    try:
        listed = read_manifest(path).get("files")
    except CheckpointError:
        return []
    if not isinstance(listed, dict):
        return []
    return sorted(
        rel
        for p in path.rglob("*")
        if (p.is_file() or p.is_symlink())
        and (rel := p.relative_to(path).as_posix()) not in (MANIFEST, EXPORT_MANIFEST)
        and rel not in listed
    )


def _given(training: Training | None, name: str) -> bool:
    return bool(getattr(training, name)) if training is not None else False


def _method_of(record: dict[str, Any]) -> Method:
    return registry()[record["name"]](**record["options"])


def _objective_of(record: dict[str, Any]) -> Objective:
    return OBJECTIVES[record["name"]](**record["options"])
