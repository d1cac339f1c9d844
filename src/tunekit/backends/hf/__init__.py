"""The ``hf`` backend (transformers, peft, trl). Nothing outside this package imports trl."""

from tunekit.backends.hf.backend import HFBackend, Loaded

__all__ = ["HFBackend", "Loaded"]
