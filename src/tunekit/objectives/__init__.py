"""Objectives: what signal trains the parameters."""

from tunekit.objectives.base import Objective
from tunekit.objectives.causal_lm import CausalLM
from tunekit.objectives.sft import SFT

__all__ = ["SFT", "CausalLM", "Objective"]
