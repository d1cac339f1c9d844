"""`tunekit evaluate`, `tunekit predict` and `tunekit eval` on a saved tuner; Tuner.benchmark on a local
lm-evaluation-harness task (offline: a YAML task over a local jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import first_task, write_jsonl

from .helpers import cpu


@pytest.fixture(scope="module")
def saved(tiny_llama_init02, tmp_path_factory: pytest.TempPathFactory) -> tuple[tk.Tuner, Path, Path]:
    """A LoRA adapter that learned the first-digit task, saved; and held-out rows in a jsonl."""
    out = tmp_path_factory.mktemp("eval-cli")
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=16), training=cpu(max_steps=200, learning_rate=5e-3, batch_size=16)
    )
    tuner.fit(first_task(400, seed=1))
    return tuner, tuner.save(out / "adapter"), write_jsonl(first_task(20, seed=2), out / "held.jsonl")


def _choice_rows(n: int) -> list[dict]:
    rows = []
    for i, r in enumerate(first_task(n, seed=2)):
        wrong = str((int(r["completion"]) + 3) % 10)
        choices = [r["completion"], wrong] if i % 2 else [wrong, r["completion"]]
        rows.append({"prompt": r["prompt"], "choices": choices, "answer": choices.index(r["completion"])})
    return rows


def test_evaluate_prints_the_table_and_the_json(saved, tmp_path, capsys) -> None:
    _tuner, path, held = saved
    rows = tmp_path / "rows.jsonl"
    argv = ["evaluate", str(path), str(held), "--metrics", "exact_match,rouge_l", "--baseline", "-o", str(rows)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "exact_match" in out and "rouge_l" in out and "base" in out and "better" in out
    assert len(rows.read_text(encoding="utf-8").splitlines()) == 20
    assert main([*argv[:-2], "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["metrics"]["exact_match"] >= 0.9 > figures["baseline"]["exact_match"] + 0.5
    assert figures["rows"] == 20 and figures["better"] >= 15


def test_evaluate_refuses_an_unknown_metric_before_loading(saved, capsys) -> None:
    _tuner, path, held = saved
    assert main(["evaluate", str(path), str(held), "--metrics", "exact_match,blue"]) == 2
    assert "unknown metric 'blue'; did you mean 'bleu'?" in capsys.readouterr().err


def test_predict_writes_one_answer_per_row(saved, tmp_path, capsys) -> None:
    _tuner, path, held = saved
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in first_task(6, seed=3)], tmp_path / "prompts.jsonl")
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(path), str(prompts), "-o", str(out), "--max-new-tokens", "4"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = first_task(6, seed=3)
    assert [line["prompt"] for line in lines] == [r["prompt"] for r in expected]
    assert sum(line["prediction"] == r["completion"] for line, r in zip(lines, expected)) >= 5
    assert "reference" not in lines[0]
    assert main(["predict", str(path), str(held), "-o", str(out)]) == 0  # with references: written beside
    assert {"row", "prompt", "prediction", "reference"} == set(
        json.loads(out.read_text(encoding="utf-8").split("\n")[0])
    )


def _local_task(tmp_path: Path) -> Path:
    data = write_jsonl(_choice_rows(20), tmp_path / "first.jsonl")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "first_digit.yaml").write_text(
        "task: first_digit\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return tasks


def test_benchmark_runs_a_local_harness_task_on_the_tuned_model(saved, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tuner, path, _held = saved
    tasks = _local_task(tmp_path)
    scores = tuner.benchmark(["first_digit"], include_path=tasks)
    assert scores["first_digit"]["acc,none"] >= 0.9
    # The same figure from the command line, on the saved adapter.
    assert main(["eval", str(path), "--tasks", "first_digit", "--include-path", str(tasks), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["first_digit"]["acc,none"] == scores["first_digit"]["acc,none"]
    with pytest.raises(tk.ConfigError, match=r"has no such task"):
        tuner.benchmark(["no_such_task"], include_path=tasks)
