"""Methods: which parameters train.

Every method is a frozen, validated config that declares its capabilities (see
:class:`tunekit.methods.Method`); :func:`registry` lists them, in the order below.
"""

# ruff: noqa: I001  (the import order below is the registry's order, which tables and the CLI show)
from tunekit.methods.base import Method, registry
from tunekit.methods.full import Full
from tunekit.methods.freeze import Freeze
from tunekit.methods.lora import LoRA
from tunekit.methods.lycoris import LoHa, LoKr
from tunekit.methods.adalora import AdaLoRA
from tunekit.methods.vera import VeRA
from tunekit.methods.oft import OFT
from tunekit.methods.ia3 import IA3
from tunekit.methods.prompt import PromptTuning, PrefixTuning, PTuning

__all__ = [
    "IA3",
    "OFT",
    "AdaLoRA",
    "Freeze",
    "Full",
    "LoHa",
    "LoKr",
    "LoRA",
    "Method",
    "PTuning",
    "PrefixTuning",
    "PromptTuning",
    "VeRA",
    "registry",
]
