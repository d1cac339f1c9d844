"""Backends: what turns tunekit's configuration into a training run."""

from __future__ import annotations

from typing import Any

from tunekit.backends.base import Backend
from tunekit.errors import ConfigError

__all__ = ["Backend", "get_backend"]


def get_backend(name: str) -> Any:
    if name == "hf":
        from tunekit.backends.hf import HFBackend

        return HFBackend()
    raise ConfigError(f"Tuner(backend={name!r}): unknown backend; the available backend is 'hf'")
