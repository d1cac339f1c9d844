"""The ``hf`` backend (transformers, peft, trl). Nothing outside this package imports trl."""

from tunekit.backends.hf.backend import HFBackend
from tunekit.backends.hf.models import Loaded

__all__ = ["HFBackend", "Loaded"]
