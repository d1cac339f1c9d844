"""Checkpoints owned by tunekit: transformers writes their contents, tunekit decides where and how they land.

transformers' ``Trainer._save_checkpoint`` writes the model (or adapter), optimizer, scheduler,
scaler, RNG states and ``trainer_state.json``, including the sharded FSDP / DeepSpeed states; that
is kept as it is. :class:`CheckpointMixin` redirects it into a staging directory
(``<output_dir>/.tunekit-staging/checkpoint-N``), then, on the main process only:

1. every file is flushed to disk and listed in the manifest ``tunekit-checkpoint.json`` with its
   size and sha256, next to the tunekit version, the run's config (and its hash), the data
   fingerprint, the step and the RNG / sampler position; the manifest is written last;
2. the directory is renamed into place (retried when a file is briefly locked, the old
   ``checkpoint-N`` kept until the new one stands);
3. only then are old checkpoints removed: those of an earlier run in the same ``output_dir``, and
   this run's beyond ``Training(keep_checkpoints=N)``.

A checkpoint without a manifest, or whose files do not match it, is incomplete: resume skips it.
Other ranks of a distributed run write their shards into the same staging directory and wait
while the main process publishes it; a failure on any process (a full disk on rank 0, say) is
shared with all of them (:func:`~tunekit.backends.hf.processes.settle`), so every process raises
rather than some waiting for ever.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import uuid
from array import array
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit import _fs
from tunekit._version import __version__
from tunekit.backends.base import RunSpec
from tunekit.backends.hf.processes import settle
from tunekit.data.streaming import STATE_FILE
from tunekit.distributed import world
from tunekit.errors import CheckpointError

__all__ = [
    "MANIFEST",
    "RUN_STATE",
    "STAGING",
    "STREAM_POSITION",
    "CheckpointMixin",
    "RunIdentity",
    "checkpoint_dirs",
    "compare_identity",
    "data_fingerprint",
    "install",
    "mark_finished",
    "read_manifest",
    "recover",
    "run_config",
    "verify",
]

logger = logging.getLogger("tunekit")

MANIFEST = "tunekit-checkpoint.json"
RUN_STATE = "tunekit-run.json"  # in output_dir: the run whose checkpoints are there, and whether it finished
STAGING = ".tunekit-staging"
STREAM_POSITION = "tunekit_stream_pos"  # a streamed batch's key: where the stream stood at its last sequence
FORMAT = 1
_NAME = re.compile(r"checkpoint-(\d+)")

# Training fields that change what a run computes; the others (logging, saving, resuming, trackers,
# device, safety switches) may differ between a run and its resumption.
_TRAJECTORY_FIELDS = (
    "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "max_length", "seed", "precision",
    "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm",
)  # fmt: skip


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed: the run's config and data."""

    run_id: str
    config: dict[str, Any]
    data_fingerprint: str

    @property
    def config_hash(self) -> str:
        return _hash(self.config)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode("utf-8")).hexdigest()


def run_config(spec: RunSpec) -> dict[str, Any]:
    """The parts of a run's setup a resumed run must share with the run that wrote the checkpoint."""
    ref = spec.model_ref
    if isinstance(ref, (str, Path)):
        model = Path(ref).name if Path(ref).exists() else str(ref)  # a moved directory is the same model
    else:
        model = getattr(ref, "name_or_path", None) or type(ref).__name__
    training = spec.training.model_dump(mode="json")
    return {
        "model": model,
        "method": spec.method.record(),
        "objective": spec.objective.record(),
        "training": {k: training[k] for k in _TRAJECTORY_FIELDS if k in training},
    }


def data_fingerprint(data: Any) -> str:
    """sha256 of the exact examples handed to the trainer (token ids and labels, or trl's rows)."""
    h = hashlib.sha256()
    if hasattr(data, "input_ids"):
        for ids, labels in zip(data.input_ids, data.labels):
            # Lengths first, so [1, 2] + [3] and [1] + [2, 3] differ; packed ints hash fast on millions of rows.
            h.update(array("q", (len(ids), len(labels))).tobytes())
            h.update(array("q", ids).tobytes())
            h.update(array("q", labels).tobytes())
    else:
        for record in data.records:
            h.update(json.dumps(record, sort_keys=True, default=repr, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _named_options(config: dict[str, Any]) -> dict[str, Any]:
    """The config with the method's and the objective's options beside their names (``method.r``, not
    ``method.options.r``): how differences are named, and how checkpoints written before tunekit recorded the
    method and objective as ``{"name", "options"}`` held them, so that such a checkpoint resumes as before."""
    out = dict(config)
    for key in ("method", "objective"):
        entry = out.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("options"), dict):
            out[key] = {"name": entry.get("name"), **entry["options"]}
    return out


def compare_identity(manifest: dict[str, Any], identity: RunIdentity, *, data: bool) -> list[str]:
    """What differs between the run that wrote a checkpoint and this one, in the user's option names."""
    diffs: list[str] = []
    saved = manifest.get("config")
    if isinstance(saved, dict) and manifest.get("config_hash") != identity.config_hash:
        before, now = _flatten(_named_options(saved)), _flatten(_named_options(identity.config))
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                diffs.append(f"{key}: checkpoint {before.get(key)!r}, this run {now.get(key)!r}")
    if data and manifest.get("data_fingerprint") != identity.data_fingerprint:
        diffs.append("the training data (its examples, order or tokenisation) differs from the checkpoint's")
    saved_world = (manifest.get("rng_and_sampler") or {}).get("world_size")
    if isinstance(saved_world, int) and saved_world != world().size:
        # Each process's data position and random state, and the effective batch, depend on the count.
        diffs.append(f"processes: checkpoint {saved_world}, this run {world().size}")
    return diffs


# --- reading and checking checkpoints ----------------------------------------------------------------


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` directories directly in ``output_dir``, newest step first."""
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint ``path``; CheckpointError when it is missing or corrupt."""
    f = path / MANIFEST
    fix = "the checkpoint is incomplete; resume from another one"
    data = _fs.read_manifest(
        f, missing=f"{path}: no {MANIFEST} (the checkpoint is incomplete, or not written by tunekit)", fix=fix
    )
    if not isinstance(data.get("files"), dict):
        raise CheckpointError(f"{f} is corrupt (it lists no files); {fix}")
    return data


def verify(path: Path, *, hashes: bool = True) -> dict[str, Any]:
    """The manifest of a complete checkpoint; CheckpointError saying what is wrong otherwise."""
    manifest = read_manifest(path)
    problem = _fs.verify_files(path, manifest["files"], hashes=hashes)
    if problem is not None:
        raise CheckpointError(f"{path} is incomplete or corrupt: {problem}")
    return manifest


def recover(output_dir: Path) -> None:
    """Tidy after a crash: put back a checkpoint a crashed save had moved aside, drop half-written ones."""
    staging = output_dir / STAGING
    if not staging.is_dir():
        return
    for p in staging.iterdir():
        m = re.fullmatch(r"old-(checkpoint-\d+)", p.name)
        target = output_dir / m.group(1) if m else None
        if target is not None and not target.exists():
            logger.warning("restoring %s, which an interrupted save had moved aside", target)
            _fs.retry(functools.partial(os.replace, p, target))
        else:
            _fs.remove_tree(p, within=staging)
    _fs.remove_tree(staging, within=output_dir)


def finished_run(output_dir: Path) -> tuple[str, int] | None:
    """(run id, the step it finished at) of the run in ``output_dir`` if it finished, else None."""
    f = output_dir / RUN_STATE
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:  # unreadable: as if the run did not finish
        logger.warning("%s is unreadable (%s); the run in %s counts as unfinished", f, e, output_dir)
        return None
    if not (isinstance(state, dict) and state.get("finished") and isinstance(state.get("run_id"), str)):
        return None
    steps = state.get("steps")
    return state["run_id"], steps if isinstance(steps, int) else 2**62


def mark_finished(output_dir: Path, run_id: str, steps: int) -> None:
    """Record that ``run_id`` finished, so ``resume="auto"`` starts the next fit afresh instead of resuming it."""
    staging = output_dir / STAGING
    staging.mkdir(exist_ok=True)
    tmp = staging / f"{RUN_STATE}.{uuid.uuid4().hex[:8]}"
    _fs.write_json(tmp, {"run_id": run_id, "finished": True, "steps": steps})
    _fs.retry(lambda: tmp.replace(output_dir / RUN_STATE))
    if not any(staging.iterdir()):
        _fs.remove_tree(staging, within=output_dir)


# --- writing checkpoints -----------------------------------------------------------------------------


def _rotate(output_dir: Path, run_id: str, keep: int | None, newest: Path) -> None:
    """Remove other runs' checkpoints, this run's beyond ``keep``, and this run's later than the one just
    written (never that one)."""
    dirs = checkpoint_dirs(output_dir)
    newest_step = next((s for s, p in dirs if p == newest), None)
    ours = []
    for step, p in dirs:
        if p == newest:
            continue
        try:
            owner = read_manifest(p).get("run_id")
        except CheckpointError as e:  # not ours to judge: an incomplete or foreign directory stays for the user to see
            logger.debug("keeping %s: %s", p, e)
            continue
        if owner != run_id:
            logger.info("removing %s, left by an earlier run in %s", p.name, output_dir)
            _fs.remove_tree(p, within=output_dir)
        elif newest_step is not None and step > newest_step:
            # Resumed from an earlier checkpoint, the run has moved on from this one: "auto" must not go back to it.
            logger.info("removing %s: the run was resumed from an earlier checkpoint and has moved on", p.name)
            _fs.remove_tree(p, within=output_dir)
        else:
            ours.append((step, p))
    if keep is not None:
        for _step, p in ours[max(keep - 1, 0) :]:
            _fs.remove_tree(p, within=output_dir)


def _rng_and_sampler(trainer: Any) -> dict[str, Any]:
    state, args = trainer.state, trainer.args
    # transformers restores the data position from these on resume: the sampler is re-seeded with
    # data_seed, replays the epoch's order and skips the batches already consumed.
    return {
        "seed": args.seed,
        "data_seed": args.data_seed,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "batch_size": args.per_device_train_batch_size,
        "grad_accum": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "rng_files": None,  # filled from the file list
    }


def _publish(trainer: Any, staging: Path, final: Path) -> None:
    """Manifest last, then rename into place; rotation only once the new checkpoint is complete."""
    identity: RunIdentity = trainer._tk_identity
    files = _fs.list_files(staging)
    rng = _rng_and_sampler(trainer)
    rng["rng_files"] = sorted(f for f in files if f.startswith("rng_state"))
    manifest = {
        "format": FORMAT,
        "tunekit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": identity.run_id,
        "step": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "config": identity.config,
        "config_hash": identity.config_hash,
        "data_fingerprint": identity.data_fingerprint,
        "rng_and_sampler": rng,
        "files": files,
    }
    _fs.write_json(staging / MANIFEST, manifest)
    _fs.fsync_dir(staging)
    _fs.replace_dir(staging, final, trash=staging.parent / f"old-{final.name}")
    _rotate(final.parent, identity.run_id, trainer._tk_keep, final)


def _save_failed(e: Exception, final: Path, run_dir: Path, full: str | None) -> str:
    """The message of a checkpoint that could not be written: ``e`` an OSError, or a library's error for a full
    disk (``full``: its reason, from :func:`tunekit._fs.disk_full_reason`)."""
    if full is not None:
        fix = "the disk is full; free some space, keep fewer checkpoints (Training(keep_checkpoints=N)) or save "
        fix += "less often"
        if full == "File too large":
            fix = fix.replace("the disk is full;", "the disk is full or a file reached the size limit (ulimit -f);")
        reason = full
    elif isinstance(e, PermissionError):
        fix = "a file is locked or not writable (another program, antivirus, a read-only directory); check output_dir "
        fix += f"({_fs.locked_hint()})"
        reason = e.strerror or str(e)
    else:
        fix = "check output_dir and its disk"
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
    previous = next((p.name for _s, p in checkpoint_dirs(run_dir) if p != final), None)
    kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
    return f"could not write {final.name} in {run_dir} ({reason}): {fix}; {kept}"


class CheckpointMixin:
    """Put before a transformers Trainer class: atomic, verified checkpoints and per-step numerical checks."""

    _tk_identity: RunIdentity
    _tk_keep: int | None
    _tk_guard: Any

    _tk_deferred: list[Exception] | None = None  # during a checkpoint: this process's failed writes

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: trl writes a draft README.md into output_dir at every checkpoint, over any README.md there.
        tunekit's model card is written by ``Tuner.export``, into the export."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        trainer: Any = self
        run_dir = Path(trainer._get_output_dir(trial=trial))
        final = run_dir / f"checkpoint-{trainer.state.global_step}"
        staging_root = run_dir / STAGING
        staging = staging_root / final.name
        main = trainer.args.should_save

        def prepare() -> None:
            if main:
                staging_root.mkdir(parents=True, exist_ok=True)
                _fs.remove_tree(staging, within=staging_root)  # a leftover of a crash at this same step

        def contents() -> None:
            # transformers writes everything (model, optimizer, RNG, sharded states) into the staging directory.
            trainer._get_output_dir = lambda trial=None: str(staging_root)
            deferred: list[Exception] = []
            self._tk_deferred = deferred
            try:
                super(CheckpointMixin, self)._save_checkpoint(model, trial)  # type: ignore[misc]
                if main:
                    self._tk_stream_state(staging)
            except Exception:
                if not deferred:
                    raise
                # else a consequence (the checkpoint directory a failed write should have made is missing): the
                # first failed write, raised below, is the cause
            finally:
                self._tk_deferred = None
                trainer.__dict__.pop("_get_output_dir", None)
            if deferred:
                raise deferred[0]

        # Each step ends in a collective that every process reaches, failed or not; a failure anywhere is raised
        # everywhere, and the main process removes the partial checkpoint once every process has stopped writing.
        for step in (prepare, contents, lambda: _publish(trainer, staging, final) if main else None):
            try:
                error: Exception | None = None
                try:
                    step()
                except Exception as e:
                    error = e
                    # A full disk shows as an OSError, or as safetensors', tokenizers' or torch's own error.
                    full = _fs.disk_full_reason(e, staging)
                    if isinstance(e, OSError) or full is not None:
                        error = CheckpointError(_save_failed(e, final, run_dir, full))
                        error.__cause__ = e
                settle(error, what=final.name)
            except Exception:
                if main:
                    _fs.remove_tree(staging, within=staging_root)
                    if staging_root.is_dir() and not any(staging_root.iterdir()):
                        _fs.remove_tree(staging_root, within=run_dir)
                raise

    def _tk_stream_state(self, directory: Path) -> None:
        """A stream's position at this checkpoint (the last sequence trained), where a resumed run starts reading
        (:meth:`tunekit.data.streaming.StreamedEncoded.resume`)."""
        stream, position = getattr(self, "_tk_stream", None), getattr(self, "_tk_stream_pos", None)
        if stream is not None and position is not None and directory.is_dir():
            _fs.write_json(directory / STATE_FILE, stream.checkpoint_state(position))

    def _load_rng_state(self, checkpoint: Any) -> None:
        if getattr(self, "_tk_seeks", False):  # a stream that seeks: as transformers does after skipping batches,
            self._tk_rng_from = checkpoint  # after the first batches are read (creating the data iterator draws)
            return
        super()._load_rng_state(checkpoint)  # type: ignore[misc]

    def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
        batches = super().get_batch_samples(*args, **kwargs)  # type: ignore[misc]
        checkpoint = self.__dict__.pop("_tk_rng_from", None)
        if checkpoint is not None:
            super()._load_rng_state(checkpoint)  # type: ignore[misc]
        return batches

    def _tk_defer(self, write: Any, *args: Any, **kwargs: Any) -> Any:
        """A write of this process inside transformers' checkpoint save (model files, optimizer, scaler, RNG
        state): a failure is kept for the step's collective rather than raised, so that this process still
        takes part in the collectives transformers runs after the write (the barrier before looking for the
        best checkpoint, FSDP's optimizer gather), or the others would wait for it for ever. A failure in the
        middle of a sharded engine's own collective save (DeepSpeed's per-rank shards) is not covered."""
        if self._tk_deferred is None:
            return write(*args, **kwargs)
        try:
            return write(*args, **kwargs)
        except Exception as e:  # OSError, or torch.save's RuntimeError for a directory an earlier failure left out
            # The failed write's frames hold its writer: torch.save's stays open on the half-written file (deleted
            # with the staging directory, its space on a full disk kept) for as long as the error lives.
            _fs.release_frames(e)
            self._tk_deferred.append(e)
            return None

    def _save(self, *args: Any, **kwargs: Any) -> Any:
        return self._tk_defer(super()._save, *args, **kwargs)  # type: ignore[misc]

    def _save_optimizer_and_scheduler(self, *args: Any, **kwargs: Any) -> Any:
        return self._tk_defer(super()._save_optimizer_and_scheduler, *args, **kwargs)  # type: ignore[misc]

    def _save_scaler(self, *args: Any, **kwargs: Any) -> Any:
        return self._tk_defer(super()._save_scaler, *args, **kwargs)  # type: ignore[misc]

    def _save_rng_state(self, *args: Any, **kwargs: Any) -> Any:
        return self._tk_defer(super()._save_rng_state, *args, **kwargs)  # type: ignore[misc]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        super().log(logs, *args, **kwargs)  # type: ignore[misc]
        tr_loss = getattr(self, "_tr_loss", None)
        if "loss" in logs and tr_loss is not None and self._tk_guard.mode == "skip" and not bool(tr_loss.isfinite()):
            # A skipped step's NaN was logged (shown, not averaged away); transformers resets the running
            # sum by subtracting it from itself, which keeps a NaN: start the next window clean.
            tr_loss.zero_()

    # Numerical safety (tunekit.backends.hf.guards) sees every micro-batch loss and every gradient norm.
    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        position = inputs.pop(STREAM_POSITION, None) if isinstance(inputs, MutableMapping) else None  # GRPO: a list
        loss = super().training_step(model, inputs, *args, **kwargs)  # type: ignore[misc]
        if position is not None:  # trained: a checkpoint from now on resumes after it
            self._tk_stream_pos = position
        self._tk_guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)  # type: ignore[misc]
        self._tk_guard.observe_grad_norm(norm)
        return norm


_CLASSES: dict[type, type] = {}


def install(
    trainer: Any, *, identity: RunIdentity, keep: int | None, guard: Any, stream: Any = None, seeks: bool = False
) -> Any:
    """Give ``trainer`` tunekit's checkpointing and guards (its class gains :class:`CheckpointMixin`); ``stream``: a
    :class:`~tunekit.data.streaming.StreamedEncoded` whose position each checkpoint records; ``seeks``: it starts
    reading where the resumed checkpoint's stood, so the trainer skips no batches."""
    cls = type(trainer)
    if not issubclass(cls, CheckpointMixin):
        if cls not in _CLASSES:
            _CLASSES[cls] = type(cls.__name__, (CheckpointMixin, cls), {"__module__": cls.__module__})
        trainer.__class__ = _CLASSES[cls]
    trainer._tk_identity, trainer._tk_keep, trainer._tk_guard = identity, keep, guard
    trainer._tk_stream = stream
    trainer._tk_seeks = seeks
    trainer.add_callback(guard)
    return trainer
