"""Which checkpoint a run resumes from (``resume="auto" | True | False | path``), and whether it may.

Resuming itself is transformers' ``Trainer.train(resume_from_checkpoint=...)``: it restores the
weights, optimizer, scheduler, RNG states and the position in the data (the sampler is re-seeded
and the consumed batches skipped), so a resumed run continues where the checkpoint was written.
tunekit chooses the checkpoint and checks it first:

- only complete checkpoints count: a ``tunekit-checkpoint.json`` manifest whose file list, sizes
  and sha256 match what is on disk (an incomplete or corrupt one is skipped with a warning);
- ``"auto"`` does not resume a run that finished (``tunekit-run.json`` says so): a second
  ``fit`` in the same ``output_dir`` starts afresh rather than training zero steps;
- the checkpoint's config and data fingerprint must match this run's, or CheckpointError names
  what differs (``Training(force_resume=True)`` resumes anyway, with a warning).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tunekit.backends.hf.checkpoints import (
    MANIFEST,
    RunIdentity,
    checkpoint_dirs,
    compare_identity,
    finished_run,
    read_manifest,
    recover,
    verify,
)
from tunekit.errors import CheckpointError, ConfigError

__all__ = ["check_identity", "latest_checkpoint", "resolve_resume"]

logger = logging.getLogger("tunekit")

_STATE = "trainer_state.json"


def _is_main_process() -> bool:
    # Under torchrun every rank resolves the same checkpoint; only rank 0 tidies the directory.
    return os.environ.get("RANK", "0") == "0"


def latest_checkpoint(output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint in ``output_dir`` and its manifest; incomplete ones are skipped, warning."""
    for _step, path in checkpoint_dirs(output_dir):
        try:
            return path, verify(path)
        except CheckpointError as e:
            logger.warning("skipping %s: %s", path.name, _reason(e, path))
    return None


def _finished(output_dir: Path, manifest: dict[str, Any]) -> bool:
    """Whether the newest checkpoint belongs to a run that finished at or after its step.

    A finished run trained further (``force_resume``) writes checkpoints past the step it finished at:
    those belong to an unfinished continuation, which ``"auto"`` resumes.
    """
    state = finished_run(output_dir)
    if state is None or state[0] != manifest.get("run_id"):
        return False
    return int(manifest.get("step", 0)) <= state[1]


def resolve_resume(
    resume: bool | str | Path,
    output_dir: Path | None,
    *,
    config: dict[str, Any] | None = None,
    force: bool = False,
) -> Path | None:
    """The checkpoint to resume from, None to start afresh; raise when ``resume`` cannot be honoured.

    ``config`` (see :func:`tunekit.backends.hf.checkpoints.run_config`) is compared with the
    checkpoint's unless ``force``; the data is compared later, once it is tokenised.
    """
    if output_dir is not None and output_dir.is_dir() and _is_main_process():
        recover(output_dir)  # a save a crash interrupted: restore what it moved aside, drop the half-written
    if resume is False:
        return None
    if resume is True or resume == "auto":
        if output_dir is None and resume == "auto":
            return None  # nowhere a checkpoint could be: start afresh
        if output_dir is None:
            raise ConfigError(
                f"resume={resume!r}: resuming looks for checkpoints in output_dir, and this Tuner has none; "
                "pass Tuner(output_dir=...) or resume='<path to a checkpoint-N directory>'"
            )
        found = latest_checkpoint(output_dir)
        if found is None:
            if resume is True:
                raise CheckpointError(
                    f"resume=True: there is no complete checkpoint in {output_dir} to resume from; "
                    "use resume=False to start afresh, resume='auto' to resume only when one exists, or write "
                    "checkpoints with Training(save_every=N) or run.cancel()"
                )
            return None
        path, manifest = found
        if _finished(output_dir, manifest):
            if resume == "auto":
                logger.info("the run in %s finished; starting a new run there", output_dir)
                return None
            if not force:
                raise CheckpointError(
                    f"resume=True: the run in {output_dir} finished (its newest checkpoint is {path.name}); there "
                    "is nothing left to resume. Start afresh with resume=False, or to train it further raise "
                    "Training(max_steps=...) and pass Training(force_resume=True)"
                )
        _check_config(path, manifest, config, force, f"resume={resume!r}")
        return path
    path = Path(resume)
    if not path.is_dir() or not (path / _STATE).is_file():
        raise CheckpointError(
            f"resume={str(resume)!r}: not a checkpoint directory (no {_STATE} in it); pass a checkpoint-N "
            "directory written by a previous run, or resume=True for the newest one in output_dir"
        )
    if not (path / MANIFEST).is_file() and force:
        logger.warning("resuming from %s, which has no tunekit manifest, because force_resume=True", path)
        return path
    try:
        manifest = verify(path)
    except CheckpointError as e:
        raise CheckpointError(
            f"resume={str(resume)!r}: {_reason(e, path)}; resume from another checkpoint (resume=True takes the "
            "newest complete one), or pass Training(force_resume=True) if it was written by plain transformers"
        ) from None
    _check_config(path, manifest, config, force, f"resume={str(resume)!r}")
    return path


def _reason(error: CheckpointError, path: Path) -> str:
    """The error's text without the path it starts with (the caller names the checkpoint)."""
    return str(error).removeprefix(f"{path}: ").removeprefix(f"{path} ")


def _check_config(path: Path, manifest: dict[str, Any], config: dict[str, Any] | None, force: bool, what: str) -> None:
    if config is None:
        return
    identity = RunIdentity(run_id="", config=config, data_fingerprint="")
    _raise_or_warn(path, compare_identity(manifest, identity, data=False), force, what)


def check_identity(path: Path, identity: RunIdentity, *, force: bool) -> str:
    """Check the data (and config) against the checkpoint at ``path``; return the run id to continue."""
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return identity.run_id  # a forced resume of a checkpoint without a manifest: a new run id
    _raise_or_warn(path, compare_identity(manifest, identity, data=True), force, f"resume from {path.name}")
    return str(manifest.get("run_id") or identity.run_id)


def _raise_or_warn(path: Path, diffs: list[str], force: bool, what: str) -> None:
    if not diffs:
        return
    listed = "; ".join(diffs)
    if force:
        logger.warning("resuming from %s although this run differs (force_resume=True): %s", path, listed)
        return
    raise CheckpointError(
        f"{what}: the checkpoint {path} was written by a different run: {listed}. Resume with the same settings "
        "and data, start afresh with resume=False (or another output_dir), or pass Training(force_resume=True) "
        "to resume anyway"
    )
