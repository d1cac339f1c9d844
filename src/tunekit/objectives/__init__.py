"""Objectives: what signal trains the parameters."""

from __future__ import annotations

from tunekit.errors import IncompatibleError
from tunekit.objectives.base import Objective
from tunekit.objectives.causal_lm import CausalLM
from tunekit.objectives.online_rl import GRPO, RLOO, OnlineRL
from tunekit.objectives.preference import DPO, KTO, ORPO
from tunekit.objectives.reward import RewardModeling
from tunekit.objectives.sft import SFT

__all__ = [
    "DPO",
    "GRPO",
    "KTO",
    "OBJECTIVES",
    "ORPO",
    "RLOO",
    "SFT",
    "CausalLM",
    "Objective",
    "OnlineRL",
    "RewardModeling",
    "infer_objective",
]

# Every objective by name (what tk.load reads back from a manifest).
OBJECTIVES: dict[str, type[Objective]] = {
    cls.__name__: cls for cls in (SFT, CausalLM, RewardModeling, DPO, KTO, ORPO, GRPO, RLOO)
}


def infer_objective(fmt: str) -> Objective:
    """The objective a data format trains when none is given."""
    if fmt == "text":
        return CausalLM()
    if fmt == "preference":
        return DPO()
    if fmt == "unpaired_preference":
        return KTO()
    if fmt == "prompt_only":
        raise IncompatibleError(
            "the data has prompts only (no 'completion', 'chosen' or 'rejected' column), which trains with online "
            "RL and a reward: pass objective=tk.GRPO(reward=...) or tk.RLOO(reward=...); if you meant "
            "prompt/completion pairs, the first row is missing its 'completion'"
        )
    return SFT()
