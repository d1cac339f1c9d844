"""Backends: what turns tunekit's configuration into a training run (:mod:`tunekit.backends.base`)."""

from __future__ import annotations

from tunekit._quiet import quiet
from tunekit.backends.base import Backend, LoadedModel, RunSpec, Trained
from tunekit.errors import ConfigError

__all__ = ["Backend", "LoadedModel", "RunSpec", "Trained", "get_backend"]


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (``"hf"``: transformers, peft and trl)."""
    if name == "hf":
        # The one function-local import of a tunekit module, on purpose: the engine imports torch, transformers,
        # peft and trl, and `import tunekit` must stay light until a Tuner first needs it.
        # Imported quietly: what the libraries log while they import (bitsandbytes on a CPU without its kernels) is
        # routed to tunekit's library loggers like the rest of their output.
        with quiet():
            from tunekit.backends.hf import HFBackend  # noqa: PLC0415

        return HFBackend()
    raise ConfigError(f"Tuner(backend={name!r}): unknown backend; the available backend is 'hf'")
