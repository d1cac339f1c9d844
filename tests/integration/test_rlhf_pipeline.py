"""tk.rlhf: SFT, then a reward model, then online RL against it, each stage's output passed to the next;
and examples/rlhf_pipeline.py, which runs the whole recipe on CPU."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

import tunekit as tk

from .helpers import cpu
from .toy_tasks import one_thread, sort_pairs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rlhf_pipeline.py"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


class Recorder(tk.Hook):
    def __init__(self) -> None:
        self.objectives: list[str] = []

    def on_fit_start(self, ctx):
        self.objectives.append(ctx.objective)


def test_rlhf_pipeline_passes_each_stage_to_the_next(tiny_llama, tmp_path):
    rec = Recorder()
    sft_rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in sort_pairs(64, seed=1)]
    result = tk.rlhf(
        tiny_llama,
        sft_data=sft_rows,
        preference_data=sort_pairs(64, seed=2),
        prompts=[{"prompt": p["prompt"]} for p in sort_pairs(32, seed=3)],
        output_dir=tmp_path / "rlhf",
        method=tk.LoRA(r=4),
        rl=tk.RLOO(num_generations=4, max_completion_length=6),
        training=cpu(max_steps=3, batch_size=8, learning_rate=1e-2),
        rl_training=cpu(max_steps=1, batch_size=8, learning_rate=1e-12),  # RL barely moves: policy == SFT model
        hooks=[rec],
    )
    assert isinstance(result, tk.RLHFResult) and str(result).startswith("RLHFResult(")
    assert rec.objectives == ["SFT", "RewardModeling", "RLOO"]  # hooks see every stage
    assert [r.steps for r in result.stages.values()] == [3, 3, 1]
    assert "accuracy" in result.reward_model.history[-1] and "reward" in result.rl.history[-1]
    out = tmp_path / "rlhf"
    assert (result.sft_path, result.reward_model_path, result.policy_path) == (
        out / "sft",
        out / "reward_model",
        out / "policy",
    )
    # SFT -> reward model: the reward model starts from the SFT model, merged into full weights.
    assert (out / "sft-merged" / "model.safetensors").exists()
    assert tk.load(result.reward_model_path).score([("sort: 2 1", "1 2")])
    # reward model -> RL: the policy was trained against the saved reward model.
    manifest = json.loads((result.policy_path / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["objective"]["name"] == "RLOO"
    assert manifest["objective"]["options"]["reward"] == [str(result.reward_model_path)]
    # SFT -> RL: the policy started from the SFT adapter (one RL step at lr 1e-12 leaves it there).
    prompts = [p["prompt"] for p in sort_pairs(8, seed=9)]
    sft_answers = tk.load(result.sft_path).generate(prompts, max_new_tokens=6)
    assert tk.load(result.policy_path).generate(prompts, max_new_tokens=6) == sft_answers
    assert tk.Tuner(tiny_llama).generate(prompts, max_new_tokens=6) != sft_answers  # and SFT did change it


def test_rlhf_pipeline_errors(tiny_llama, tmp_path):
    with pytest.raises(tk.ConfigError, match=r"expected an online RL objective"):
        tk.rlhf(tiny_llama, sft_data=[], preference_data=[], prompts=[], output_dir=tmp_path, rl=tk.DPO())  # type: ignore[arg-type]
    with pytest.raises(tk.IncompatibleError, match=r"PromptTuning does not support the RewardModeling stage"):
        tk.rlhf(tiny_llama, sft_data=[], preference_data=[], prompts=[], output_dir=tmp_path, method=tk.PromptTuning())


def test_rlhf_example_runs_end_to_end(tmp_path, capsys):
    """examples/rlhf_pipeline.py: SFT, reward model and GRPO on CPU (a minute or less on two cores)."""
    with one_thread():
        result = runpy.run_path(str(EXAMPLE))["main"](tmp_path)
    out = capsys.readouterr().out
    assert "reward model: prefers the sorted answer" in out and "after GRPO" in out
    assert result.policy_path.exists() and result.reward_model_path.exists()
    assert result.runtime_s < 300
