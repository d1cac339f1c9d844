"""Methods: which parameters train."""

from tunekit.methods.base import Method, registry
from tunekit.methods.full import Full
from tunekit.methods.lora import LoRA

__all__ = ["Full", "LoRA", "Method", "registry"]
