"""tk.Mix on a real tiny model: sources in three layouts train together and each one's rows are learned; a mixture of
preference layouts trains DPO; plan() and validate-data count each source's tokens as the run encodes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import first_task, reverse_task

from .helpers import StopAt, cpu, heldout_loss

DATA = Path(__file__).parent.parent / "data"


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_sft_on_three_layouts_learns_the_rows_of_each(tiny_llama_init02: Path, tmp_path: Path) -> None:
    """An Alpaca file, a ShareGPT file and an OpenAI-messages file, weighted 2:1:1: held-out rows of every source
    (each in its own layout) lose most of their loss."""
    sources = {
        write(tmp_path / "alpaca.json", first_task(200, seed=1, fmt="alpaca")): 0.5,
        write(tmp_path / "sharegpt.jsonl", first_task(100, seed=2, fmt="sharegpt")): 0.25,
        write(tmp_path / "openai.jsonl", first_task(100, seed=3, fmt="messages")): 0.25,
    }
    held = {fmt: first_task(16, seed=10 + k, fmt=fmt) for k, fmt in enumerate(("alpaca", "sharegpt", "messages"))}
    mix = tk.Mix(sources, size=320)
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=16), training=cpu(max_steps=60, learning_rate=5e-3, batch_size=16)
    )
    plan = tuner.plan(mix)
    assert [(s.rows, s.drawn) for s in plan.sources] == [(200, 160), (100, 80), (100, 80)]
    enc = tuner.prepare(mix)
    assert plan.tokens == enc.num_tokens == sum(s.tokens for s in plan.sources)
    before = {fmt: heldout_loss(tuner, rows) for fmt, rows in held.items()}
    result = tuner.fit(mix)
    after = {fmt: heldout_loss(tuner, rows) for fmt, rows in held.items()}
    assert result.num_examples == 320
    for fmt in held:
        assert after[fmt] < 0.5 * before[fmt], (fmt, before[fmt], after[fmt])


def test_dpo_on_a_mixture_of_preference_layouts(tiny_llama: Path) -> None:
    """TRL's conversational pairs, TRL's string pairs and OpenAI's preference rows, each read in its own layout."""
    mix = tk.Mix(
        [str(DATA / "mix_trl_preference.jsonl"), str(DATA / "mix_trl_preference_text.jsonl"),
         str(DATA / "openai_preference.jsonl")],
        counts=[8, 8, 8],
    )  # fmt: skip
    tuner = tk.Tuner(tiny_llama, method=tk.LoRA(r=8), training=cpu(max_steps=12, batch_size=8, learning_rate=1e-2))
    plan = tuner.plan(mix)
    assert plan.objective == "DPO" and [s.drawn for s in plan.sources] == [8, 8, 8]
    result = tuner.fit(mix, eval_data=tk.Mix([str(DATA / "mix_trl_preference.jsonl")]))
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0], losses  # the policy moved toward the chosen answers
    assert result.eval_loss is not None


def test_validate_data_counts_each_sources_tokens(tiny_llama: Path, capsys: Any) -> None:
    files = [str(DATA / "mix_alpaca.json"), str(DATA / "mix_sharegpt.jsonl")]
    alone = []
    for f in files:
        assert main(["validate-data", f, "--model", str(tiny_llama), "--json"]) == 0
        alone.append(json.loads(capsys.readouterr().out))
    args = ["validate-data", *files, "--counts", "12,5", "--model", str(tiny_llama), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "messages" and report["drawn_rows"] == 17
    for source, single in zip(report["sources"], alone):
        assert source["tokens"] == single["tokens"] and source["format"] == single["format"]
    assert [s["drawn"] for s in report["sources"]] == [12, 5]
    assert report["sources"][0]["drawn_tokens"] == round(alone[0]["tokens"]["mean"] * 12)
    assert main(["validate-data", *files, "--counts", "12,5", "--model", str(tiny_llama)]) == 0
    out = capsys.readouterr().out
    assert f"  {files[0]}: 12 rows drawn of 6 (repeated 2.0x), about " in out


def test_an_interrupted_run_on_a_mixture_resumes_exactly(tiny_llama: Path, tmp_path: Path) -> None:
    """The mixture is drawn again from the same seed on resume: same data, so the resumed run continues as the
    uninterrupted one (losses and final weights)."""
    import torch

    mix = tk.Mix(
        {
            write(tmp_path / "a.json", reverse_task(30, seed=1, fmt="alpaca")): 2,
            write(tmp_path / "b.jsonl", reverse_task(10, seed=2, fmt="messages")): 1,
        },
        size=24,
    )

    def run(out: Path, hooks: list[tk.Hook]) -> tuple[tk.Tuner, tk.FitResult | None]:
        training = cpu(max_steps=6, batch_size=4, learning_rate=1e-2, save_every=3)
        t = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), training=training, output_dir=out, hooks=hooks, progress=False)
        try:
            return t, t.fit(mix)
        except tk.TrainingError:
            return t, None

    reference, ref_result = run(tmp_path / "ref", [])
    _, stopped = run(tmp_path / "run", [StopAt(4)])
    assert stopped is None and (tmp_path / "run" / "checkpoint-3").is_dir()
    again, result = run(tmp_path / "run", [])  # a fresh Tuner resumes from checkpoint-3 (resume="auto")
    assert ref_result is not None and result is not None and result.steps == 6
    ref_losses = {h["step"]: h["loss"] for h in ref_result.history if "loss" in h}
    got = {h["step"]: h["loss"] for h in result.history if "loss" in h and h["step"] > 3}
    assert sorted(got) == [4, 5, 6] and got == {s: ref_losses[s] for s in got}
    for (name, a), (_, b) in zip(reference.model.named_parameters(), again.model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
