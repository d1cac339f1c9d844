"""Which checkpoint a run resumes from (``resume=False | True | "auto" | path``).

Resuming itself is transformers' ``Trainer.train(resume_from_checkpoint=...)``: it restores the
weights, optimizer, scheduler, RNG states and the position in the data, so a resumed run continues
where the checkpoint was written.
"""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import CheckpointError, ConfigError

__all__ = ["latest_checkpoint", "resolve_resume"]

_STATE = "trainer_state.json"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` directory in ``output_dir``, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    return Path(found) if found is not None and (Path(found) / _STATE).is_file() else None


def resolve_resume(resume: bool | str | Path, output_dir: Path | None) -> Path | None:
    """The checkpoint to resume from, None to start afresh; raise when ``resume`` cannot be honoured.

    ``True`` needs a checkpoint in ``output_dir``; ``"auto"`` takes the newest one if there is any
    (none without an ``output_dir``), so it can stay set in a config that is reused.
    """
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
        if found is None and resume is True:
            raise CheckpointError(
                f"resume=True: there is no checkpoint in {output_dir} to resume from; "
                "use resume=False to start afresh, resume='auto' to resume only when one exists, or write "
                "checkpoints with Training(save_every=N) or run.cancel()"
            )
        return found
    path = Path(resume)
    if not (path / _STATE).is_file():
        raise CheckpointError(
            f"resume={str(resume)!r}: not a checkpoint directory (no {_STATE} in it); pass a checkpoint-N "
            "directory written by a previous run, or resume=True for the newest one in output_dir"
        )
    return path
