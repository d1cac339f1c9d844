"""Objectives: SFT and CausalLM are pure configuration naming the data formats they accept."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.objectives import Objective


def test_sft() -> None:
    sft = tk.SFT()
    assert isinstance(sft, Objective)
    assert sft.name == "SFT"
    assert sft.train_on_prompt is False
    assert tk.SFT(train_on_prompt=True).train_on_prompt is True
    assert tk.SFT.data_formats == frozenset({"prompt_completion", "alpaca", "messages", "sharegpt"})
    assert sft.model_dump() == {"train_on_prompt": False, "train_on": "all_assistant", "reasoning": "inference"}


def test_causal_lm() -> None:
    clm = tk.CausalLM()
    assert isinstance(clm, Objective)
    assert clm.name == "CausalLM"
    assert clm.add_eos is True
    assert tk.CausalLM.data_formats == frozenset({"text"})
    assert clm.model_dump() == {"add_eos": True}


def test_every_format_has_an_objective_and_a_default() -> None:
    from typing import get_args

    from tunekit.data.columns import Format
    from tunekit.objectives import OBJECTIVES, infer_objective

    covered = {f for cls in OBJECTIVES.values() for f in cls.data_formats}
    assert covered == set(get_args(Format))
    for fmt in get_args(Format):
        if fmt == "prompt_only":  # online RL needs a reward, which data cannot name
            with pytest.raises(tk.IncompatibleError, match=r"objective=tk\.GRPO\(reward=\.\.\.\)"):
                infer_objective(fmt)
            continue
        assert fmt in infer_objective(fmt).data_formats
    # demonstrations train SFT / CausalLM exactly as before
    assert {f: infer_objective(f).name for f in ("text", "prompt_completion", "alpaca", "messages", "sharegpt")} == {
        "text": "CausalLM",
        "prompt_completion": "SFT",
        "alpaca": "SFT",
        "messages": "SFT",
        "sharegpt": "SFT",
    }
    assert infer_objective("preference").name == "DPO" and infer_objective("unpaired_preference").name == "KTO"


def test_misspelled_options() -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.SFT(train_on_promt=True)
    assert str(info.value) == (
        "SFT(train_on_promt=True): unknown option 'train_on_promt'; did you mean 'train_on_prompt'?"
    )
    with pytest.raises(tk.ConfigError) as info:
        tk.CausalLM(add_eos="perhaps")
    assert str(info.value) == "CausalLM(add_eos='perhaps'): add_eos must be True or False"


def test_sft_option_on_causal_lm_is_unknown() -> None:
    with pytest.raises(tk.ConfigError, match=r"^CausalLM\(train_on_prompt=True\): unknown option"):
        tk.CausalLM(train_on_prompt=True)
