"""tk.compare: the same short run per method, a typed table, a text table and a PNG chart."""

from __future__ import annotations

import sys

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from ._threads import one_thread  # noqa: F401  (autouse)
from .helpers import cpu


@pytest.fixture(scope="module")
def table(tiny_llama_init02, tmp_path_factory) -> tuple[tk.Comparison, object]:
    png = tmp_path_factory.mktemp("compare") / "methods.png"
    result = tk.compare(
        tiny_llama_init02,
        methods=[tk.LoRA(), tk.LoRA(r=4, dora=True), tk.IA3(), tk.PromptTuning(num_virtual_tokens=4)],
        data=reverse_task(32, seed=1),
        eval_data=reverse_task(8, seed=2),
        training=cpu(max_steps=3, batch_size=8, learning_rate=1e-2),
        save_png=png,
    )
    return result, png


def test_rows_hold_the_trade_offs(table) -> None:
    result, _ = table
    assert isinstance(result, tk.Comparison) and len(result) == 4
    assert [r.label for r in result.rows] == [
        "LoRA",
        "LoRA(r=4, dora=True)",
        "IA3",
        "PromptTuning(num_virtual_tokens=4)",
    ]
    for row in result.rows:
        assert row.steps == 3
        assert 0 < row.trainable_params < row.total_params and 0 < row.trainable_share < 1
        assert row.wall_time_s > 0 and row.train_loss > 0 and row.eval_loss is not None and row.eval_loss > 0
        assert row.adapter_bytes > 0
    assert result["IA3"].trainable_params < result["LoRA"].trainable_params
    assert result["IA3"].adapter_bytes < result["LoRA"].adapter_bytes
    assert result.best in result.rows
    records = result.to_records()
    assert records[0]["method"] == "LoRA" and "trainable_share" in records[0]
    assert tk.Comparison.model_validate_json(result.model_dump_json()) == result


def test_prints_as_a_text_table(table) -> None:
    text = str(table[0])
    for header in ("method", "trainable", "share", "time", "train loss", "eval loss", "size on disk"):
        assert header in text
    assert "PromptTuning(num_virtual_tokens=4)" in text and "kB" in text


def test_writes_a_png_chart(table, tmp_path) -> None:
    result, png = table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = result.plot(tmp_path / "again.png")
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(tk.ConfigError, match=r"give a path ending in \.png"):
        result.plot(tmp_path / "chart.jpg")


def test_plot_without_matplotlib_says_what_to_install(table, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(tk.MissingDependencyError, match=r'pip install "tunekit\[plot\]"'):
        table[0].plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_bad_arguments_fail_before_training(tiny_llama_init02) -> None:
    with pytest.raises(tk.ConfigError, match=r"compare\(methods=\[\]\): give at least one method"):
        tk.compare(tiny_llama_init02, methods=[], data=reverse_task(4))
    with pytest.raises(tk.ConfigError, match="expected tunekit methods"):
        tk.compare(tiny_llama_init02, methods=["LoRA"], data=reverse_task(4))  # type: ignore[list-item]
    with pytest.raises(tk.ConfigError, match=r"save_png='c\.svg'"):
        tk.compare(tiny_llama_init02, methods=[tk.LoRA()], data=reverse_task(4), save_png="c.svg")


def test_a_model_object_is_copied_for_each_method(tiny_llama_init02) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_init02)
    result = tk.compare(
        model,
        methods=[tk.LoRA(), tk.IA3()],
        data=reverse_task(16, seed=1),
        tokenizer=AutoTokenizer.from_pretrained(tiny_llama_init02),
        training=cpu(max_steps=1, batch_size=8),
    )
    assert result["LoRA"].eval_loss is None
    assert not any("lora_" in n or "ia3_" in n for n, _ in model.named_parameters())  # untouched


def test_metrics_score_each_method_on_the_eval_data(tiny_llama_init02) -> None:
    """compare(metrics=[...]): each row carries tuner.evaluate's figures on eval_data (the same as evaluating the
    trained method by hand), and the table shows them."""
    seen: list[str] = []

    def answered(prediction: str, reference: str, row: dict) -> float:
        seen.append(reference)
        return float(bool(prediction.strip()))

    held = reverse_task(6, seed=2)
    table = tk.compare(
        tiny_llama_init02,
        methods=[tk.LoRA(), tk.IA3()],
        data=reverse_task(16, seed=1),
        eval_data=held,
        training=cpu(max_steps=2, batch_size=8, learning_rate=1e-2),
        metrics=["exact_match", answered],
    )
    for row in table.rows:
        assert set(row.eval_metrics) == {"exact_match", "answered"}
        assert 0.0 <= row.eval_metrics["exact_match"] <= 1.0
    assert sorted(seen) == sorted([r["completion"] for r in held] * 2)  # every held-out row, for each method
    assert "exact_match" in str(table) and "answered" in str(table)
    with pytest.raises(tk.ConfigError, match=r"compare\(metrics=\[\.\.\.\]\): the metrics score answers on eval_data"):
        tk.compare(tiny_llama_init02, methods=[tk.LoRA()], data=reverse_task(4), metrics=["exact_match"])
    with pytest.raises(tk.ConfigError, match="exact_mtch"):
        tk.compare(tiny_llama_init02, methods=[tk.LoRA()], data=reverse_task(4), eval_data=held, metrics=["exact_mtch"])
