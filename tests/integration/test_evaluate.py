"""Tuner.evaluate: metrics after training against the base model, CJK text metrics, callables, multiple choice,
bad input."""

from __future__ import annotations

import json
import math

import pytest

import tunekit as tk
from tunekit.metrics import text_tokens
from tunekit.testing import FakeBackend, first_task

from .helpers import cpu


def _choices(rows):
    """Multiple choice over the first-digit task: the right first digit, and a wrong one."""
    out = []
    for i, r in enumerate(rows):
        wrong = str((int(r["completion"]) + 3) % 10)
        choices = [r["completion"], wrong] if i % 2 else [wrong, r["completion"]]
        out.append({"prompt": r["prompt"], "choices": choices, "answer": choices.index(r["completion"])})
    return out


def test_exact_match_rises_after_training_and_the_baseline_shows_it(tiny_llama_init02, tmp_path):
    held = first_task(40, seed=2)
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=16), training=cpu(max_steps=200, learning_rate=5e-3, batch_size=16)
    )
    before = tuner.evaluate(held, metrics=["exact_match", "rouge_l", "perplexity"])
    tuner.fit(first_task(400, seed=1))
    result = tuner.evaluate(held, metrics=["exact_match", "rouge_l", "perplexity"], baseline=True, batch_size=7)
    assert before.metrics["exact_match"] <= 0.2
    assert result.metrics["exact_match"] >= 0.9, result
    # The base model (adapter disabled) answers as the untrained tuner did, and the rise shows against it.
    assert result.baseline == pytest.approx(before.metrics)
    assert [r.baseline_prediction for r in result.rows] == [r.prediction for r in before.rows]
    assert result.metrics["perplexity"] < 0.5 * result.baseline["perplexity"]
    assert len(result.better) >= 30 and len(result.worse) <= 2
    assert tuner.last_evaluation is result
    table = str(result)
    assert "exact_match" in table and "base" in table and "tuned" in table and "better" in table
    lines = result.to_jsonl(tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 40 and first["prompt"] == held[0]["prompt"] and first["reference"] == held[0]["completion"]
    assert {"prediction", "scores", "baseline_prediction", "baseline_scores"} <= set(first)
    assert result.plot(tmp_path / "eval.png").read_bytes().startswith(b"\x89PNG")
    # Multiple choice by log-likelihood: the trained model picks the right first digit.
    mc = tuner.evaluate(_choices(held), metrics=["accuracy"], baseline=True)
    assert mc.metrics["accuracy"] >= 0.9 and mc.metrics["accuracy"] > mc.baseline["accuracy"]
    assert all(r.prediction in r.choices for r in mc.rows)
    # An export's model card shows the last evaluation, base against fine-tuned.
    tuner.export(tmp_path / "export", format="adapter", verify=False)
    card = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    assert "### Evaluation" in card and "| accuracy |" in card and "base model" in card


def test_full_fine_tuning_baseline_reloads_the_base(tiny_llama):
    held = first_task(12, seed=2)
    base = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu())
    untrained = base.evaluate(held, metrics=["exact_match", "chrf"])
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu(max_steps=80, learning_rate=3e-3, batch_size=16))
    tuner.fit(first_task(400, seed=1))
    result = tuner.evaluate(held, metrics=["exact_match", "chrf"], baseline=True)
    assert [r.baseline_prediction for r in result.rows] == [r.prediction for r in untrained.rows]
    assert result.metrics["exact_match"] > result.baseline["exact_match"], result


def test_text_tokens_split_unspaced_scripts_into_characters():
    assert text_tokens("北京是中国的首都。") == ["北", "京", "是", "中", "国", "的", "首", "都"]
    assert text_tokens("東京はthe Capital, 2024") == ["東", "京", "は", "the", "capital", "2024"]
    assert text_tokens("Hello, world!", punctuation=True) == ["Hello", ",", "world", "!"]


def test_rouge_and_bleu_give_partial_credit_on_chinese():
    rows = [
        {"prompt": "中国的首都是哪里？", "completion": "北京是中国的首都"},
        {"prompt": "Capital of France?", "completion": "Paris is the capital of France"},
    ]
    replies = {"中国的首都是哪里？": "北京是首都", "Capital of France?": "the capital is Paris"}
    tuner = tk.Tuner("fake", backend=FakeBackend(replies=replies), progress=False)
    result = tuner.evaluate(rows, metrics=["exact_match", "rouge_l", "bleu", "chrf", "contains"])
    zh, en = result.rows
    assert zh.scores["exact_match"] == 0
    # LCS 北京是首都 (5 of 5 predicted, 5 of 8 referenced): F1 = 2 * 1 * 5/8 / (1 + 5/8)
    assert zh.scores["rouge_l"] == pytest.approx(2 * 5 / 8 / (1 + 5 / 8))
    assert 0 < zh.scores["bleu"] < 1 and 0 < zh.scores["chrf"] < 1
    assert 0 < en.scores["rouge_l"] < 1
    assert result.metrics["rouge_l"] == pytest.approx((zh.scores["rouge_l"] + en.scores["rouge_l"]) / 2)


def test_exact_match_and_contains_normalise_case_width_and_spaces():
    rows = [{"prompt": "a", "completion": "Hello  World"}, {"prompt": "b", "completion": "ＡＢＣ"}]
    tuner = tk.Tuner("fake", backend=FakeBackend(replies={"a": " hello world\n", "b": "it is abc."}), progress=False)
    result = tuner.evaluate(rows, metrics=["exact_match", "contains"])
    assert [r.scores for r in result.rows] == [
        {"exact_match": 1.0, "contains": 1.0},
        {"exact_match": 0.0, "contains": 1.0},
    ]


def test_a_metric_function_gets_prediction_reference_and_row():
    seen = []

    def starts_right(prediction, reference, row):
        seen.append(row["id"])
        return float(prediction[:1] == reference[:1])

    rows = [{"prompt": "x", "completion": "ok then", "id": 7}, {"prompt": "y", "completion": "no", "id": 8}]
    tuner = tk.Tuner("fake", backend=FakeBackend(), progress=False)
    result = tuner.evaluate(rows, metrics=["exact_match", starts_right])
    assert result.metrics == {"exact_match": 0.0, "starts_right": 0.5}
    assert seen == [7, 8]


def test_a_metric_function_that_raises_is_named_with_the_row():
    def fragile(prediction, reference, row):
        if row["prompt"] == "y":
            raise KeyError("label")
        return 1.0

    rows = [{"prompt": "x", "completion": "a"}, {"prompt": "y", "completion": "b"}]
    tuner = tk.Tuner("fake", backend=FakeBackend(), progress=False)
    with pytest.raises(tk.ConfigError, match=r"metric 'fragile' raised KeyError on row 2"):
        tuner.evaluate(rows, metrics=[fragile])
    with pytest.raises(tk.ConfigError, match=r"metric '<lambda>' returned nan on row 1"):
        tuner.evaluate(rows, metrics=[lambda p, r, row: math.nan])


def test_bad_input_is_refused_before_anything_loads():
    fake = FakeBackend()
    tuner = tk.Tuner("fake", backend=fake, progress=False)
    rows = [{"prompt": "x", "completion": "a"}]
    with pytest.raises(tk.ConfigError, match=r"unknown metric 'rouge'; did you mean 'rouge_l'\?"):
        tuner.evaluate(rows, metrics=["exact_match", "rouge"])
    with pytest.raises(tk.ConfigError, match=r"did you mean 'exact_match'\?"):
        tuner.evaluate(rows, metrics=["exact_mach"])
    with pytest.raises(tk.DatasetError, match=r"row 2: missing field 'completion'") as e:
        tuner.evaluate([{"prompt": "x", "completion": "a"}, {"prompt": "y"}])
    assert e.value.row == 2
    with pytest.raises(tk.DatasetError, match=r"row 1 of the evaluation data has no reference answer"):
        tuner.evaluate([{"text": "just text"}])
    with pytest.raises(tk.DatasetError, match=r"row 2, field 'answer': 5 is not one of the 2 choices"):
        tuner.evaluate(
            [{"prompt": "q", "choices": ["a", "b"], "answer": 1}, {"prompt": "q", "choices": ["a", "b"], "answer": 5}],
            metrics=["accuracy"],
        )
    with pytest.raises(tk.ConfigError, match=r"'accuracy' scores multiple-choice rows, and row 1 has no 'choices'"):
        tuner.evaluate(rows, metrics=["accuracy"])
    with pytest.raises(tk.ConfigError, match=r"batch_size must be a whole number"):
        tuner.evaluate(rows, batch_size=0)
    assert "generate" not in fake.calls and "loglikelihood" not in fake.calls


def test_multiple_choice_takes_an_index_a_letter_or_the_text():
    rows = [
        {"question": "q1", "choices": ["long answer", "no"], "answer": 1},
        {"prompt": "q2", "choices": ["yes", "longer"], "answer": "A"},
        {"prompt": "q3", "choices": ["longest one", "mid", "x"], "answer": "x"},
        {"prompt": "q4", "choices": ["ab", "abc"], "answer": 1},
    ]
    tuner = tk.Tuner("fake", backend=FakeBackend(), progress=False)  # the fake finds shorter answers likelier
    result = tuner.evaluate(rows, metrics=["accuracy"])
    assert [r.scores["accuracy"] for r in result.rows] == [1.0, 1.0, 1.0, 0.0]
    assert result.metrics["accuracy"] == 0.75
    assert [r.prediction for r in result.rows] == ["no", "yes", "x", "ab"]
    assert result.rows[3].reference == "abc"


def test_eval_metrics_are_recorded_during_training_and_rise(tiny_llama_init02):
    seen = []

    class Watch(tk.Hook):
        def on_evaluate(self, ctx, metrics):
            seen.append(dict(metrics))

    tuner = tk.Tuner(
        tiny_llama_init02,
        method=tk.LoRA(r=16),
        training=cpu(max_steps=200, learning_rate=5e-3, batch_size=16, eval_every=100, eval_metrics=["exact_match"]),
        hooks=[Watch()],
    )
    result = tuner.fit(first_task(400, seed=1), eval_data=first_task(20, seed=2))
    evals = [e for e in result.history if "eval_exact_match" in e]
    assert [e["step"] for e in evals] == [100, 200]
    assert all("eval_loss" in e for e in evals)  # one entry per evaluation: the loss and the metrics together
    assert evals[-1]["eval_exact_match"] >= 0.9
    assert [m["eval_exact_match"] for m in seen] == [e["eval_exact_match"] for e in evals]
    assert result.metrics["eval_exact_match"] == evals[-1]["eval_exact_match"]


def test_early_stopping_on_a_generation_metric():
    answers = iter(["1", "1", "x", "x", "x", "x", "x", "x", "x", "x"])  # right twice, then wrong from the third eval

    def reply(prompt):
        return next(answers)

    stop = tk.EarlyStopping("exact_match", patience=2)
    assert stop.mode == "max"
    tuner = tk.Tuner(
        "fake",
        backend=FakeBackend(losses=[1.0] * 20, replies=reply),
        training=tk.Training(eval_every=2, eval_metrics=["exact_match"]),
        hooks=[stop],
        progress=False,
    )
    result = tuner.fit([{"prompt": "a", "completion": "b"}] * 4, eval_data=[{"prompt": "q", "completion": "1"}])
    assert result.stopped_early and "eval_exact_match did not improve" in (result.stop_reason or "")
    assert [e["eval_exact_match"] for e in result.history if "eval_exact_match" in e] == [1.0, 1.0, 0.0]
    assert result.steps == 6


def test_eval_metrics_are_checked_before_the_run():
    with pytest.raises(tk.ConfigError, match=r"unknown metric 'rogue_l'; did you mean 'rouge_l'\?"):
        tk.Training(eval_metrics=["rogue_l"])
    assert tk.Training(eval_metrics="bleu").eval_metrics == ("bleu",)
    tuner = tk.Tuner("fake", backend=FakeBackend(), training=tk.Training(eval_metrics=["exact_match"]), progress=False)
    with pytest.raises(tk.ConfigError, match=r"there is no eval data to score them on"):
        tuner.fit([{"prompt": "a", "completion": "b"}])
    stop = tk.EarlyStopping("exact_match")
    tuner = tk.Tuner("fake", backend=FakeBackend(), training=tk.Training(eval_every=1), hooks=[stop], progress=False)
    with pytest.raises(tk.ConfigError, match=r"pass Training\(eval_metrics=\['exact_match'\]\)"):
        tuner.fit([{"prompt": "a", "completion": "b"}], eval_data=[{"prompt": "a", "completion": "b"}])
