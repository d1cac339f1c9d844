"""Experiment tracking through transformers' own ``report_to`` integrations.

tunekit adds only what an embedded, local-first run needs on top of them: a clear error (with the
pip command) when the tracker's package is missing, and local defaults set for the duration of the
run and restored afterwards: TensorBoard event files under ``<output_dir>/runs/``, an MLflow
tracking directory (file store) at ``<output_dir>/mlruns`` (unless ``MLFLOW_TRACKING_URI`` is set), Weights &
Biases in offline mode writing under ``output_dir`` (unless ``WANDB_MODE`` / ``WANDB_DIR`` are
set), and trackio's local database under ``<output_dir>/trackio`` (unless ``TRACKIO_DIR`` is set).

The integrations read their settings from environment variables, which are process-wide: two runs
reporting at the same time in one process see each other's settings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from tunekit.errors import ConfigError, MissingDependencyError

__all__ = ["TRACKERS", "check_trackers", "tracking_env"]

# report_to name -> the importable module(s) transformers looks for, the pip package.
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "wandb"),
}


def _installed(modules: Sequence[str]) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in modules)


def check_trackers(report_to: Sequence[str], output_dir: Path | None) -> None:
    """Fail before training when a tracker cannot work: its package is missing, or it has nowhere to write."""
    for name in report_to:
        modules, package = TRACKERS[name]
        if not _installed(modules):
            raise MissingDependencyError(
                f"Training(report_to=[..., {name!r}, ...]) needs the {package} package, which is not installed; "
                f'run: pip install {package}  (or pip install "tunekit[tracking]")'
            )
    local = [n for n in report_to if n == "tensorboard" or (n == "mlflow" and "MLFLOW_TRACKING_URI" not in os.environ)]
    if local and output_dir is None:
        raise ConfigError(
            f"Training(report_to={list(report_to)!r}): {', '.join(local)} write their logs under output_dir, and "
            "this Tuner has none (a temporary directory is deleted after the run); pass Tuner(output_dir=...)"
            + (" or set MLFLOW_TRACKING_URI" if "mlflow" in local else "")
        )


@contextlib.contextmanager
def tracking_env(report_to: Sequence[str], output_dir: Path) -> Iterator[None]:
    """Set the trackers' local defaults for the run (never overriding the user's own settings), then restore."""
    env: dict[str, str] = {}
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in os.environ:
        # A plain directory of files: nothing to set up, readable with `mlflow ui --backend-store-uri
        # <output_dir>/mlruns`. MLflow 3 keeps this file store in maintenance mode behind an opt-in;
        # a database (MLFLOW_TRACKING_URI=sqlite:///...) costs seconds of schema migrations per run.
        env["MLFLOW_TRACKING_URI"] = (output_dir / "mlruns").resolve().as_uri()
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "wandb" in report_to:
        env["WANDB_MODE"] = "offline"
        env["WANDB_DIR"] = str(output_dir)
    if "trackio" in report_to:
        env["TRACKIO_DIR"] = str(output_dir / "trackio")
    env = {k: v for k, v in env.items() if k not in os.environ}
    saved = {k: os.environ.get(k) for k in env}
    mlflow_active = _mlflow_active_run() if "mlflow" in report_to else None
    os.environ.update(env)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        if "mlflow" in report_to:
            _end_mlflow_run(mlflow_active, status)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mlflow_active_run() -> object | None:
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow.active_run()


def _end_mlflow_run(active_before: object | None, status: str) -> None:
    """End an MLflow run this run left active, while its tracking URI is still set.

    transformers' MLflowCallback ends its run at on_train_end only: after a failure the run stays
    active, and its ``__del__`` would later try to end it against whatever tracking URI is current.
    """
    try:
        import mlflow
    except ImportError:
        return
    if mlflow.active_run() is not None and active_before is None:  # never end the application's own run
        mlflow.end_run(status=status)
