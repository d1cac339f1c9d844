"""Every supported data format and input kind trains through the same call, with real FitResult values."""

from __future__ import annotations

import json

import pytest

import tunekit as tk
from tunekit.testing import reverse_task, write_jsonl

from .helpers import cpu

FORMATS = ["prompt_completion", "alpaca", "messages", "sharegpt"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lora_fit_each_format(tiny_llama, fmt):
    rows = reverse_task(64, seed=3, fmt=fmt)
    tuner = tk.Tuner(tiny_llama, method=tk.LoRA(r=8), training=cpu(max_steps=30, learning_rate=5e-3, batch_size=8))
    result = tuner.fit(rows)
    assert tuner.objective_used.name == "SFT"
    assert result.steps == 30
    assert result.num_examples == 64 and result.num_tokens > 64 * 10
    assert result.runtime_s > 0 and result.tokens_per_s > 0
    assert 0 < result.trainable_params < result.total_params
    assert result.history[0]["step"] == 1 and len([h for h in result.history if "loss" in h]) >= 30
    assert result.train_loss < result.history[0]["loss"]


def test_text_rows_infer_causal_lm(tiny_llama):
    rows = reverse_task(32, seed=3, fmt="text")
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu(max_steps=20, learning_rate=3e-3, batch_size=8))
    result = tuner.fit(rows)
    assert isinstance(tuner.objective_used, tk.CausalLM)
    assert result.train_loss < result.history[0]["loss"]


def _write(rows, path):
    suffix = path.suffix
    if suffix == ".jsonl":
        write_jsonl(rows, path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False, encoding="utf-8")
    elif suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv", ".parquet", "dataset", "dataframe"])
def test_input_kinds(tiny_llama, tmp_path, kind):
    rows = reverse_task(16, seed=4, fmt="alpaca")
    rows[0]["instruction"] = "把这个序列倒过来：1 2 3"  # Chinese survives every reader (UTF-8 explicitly)
    if kind == "dataset":
        import datasets

        data = datasets.Dataset.from_list(rows)
    elif kind == "dataframe":
        import pandas as pd

        data = pd.DataFrame(rows)
    else:
        data = _write(rows, tmp_path / f"train{kind}")
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4))
    enc = tuner.prepare(data)
    assert len(enc.input_ids) == 16
    first = tuner.tokenizer.decode(enc.input_ids[0])
    assert "把这个序列倒过来：1 2 3" in first
    assert tuner.fit(data).steps == 2


def test_model_object_and_tokenizer_object(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tuner = tk.Tuner(model, tokenizer=tokenizer, method=tk.Full(), training=cpu(max_steps=3, batch_size=4))
    assert tuner.model is model and tuner.tokenizer is tokenizer
    assert tuner.fit(reverse_task(8)).steps == 3


def test_model_object_without_tokenizer_source():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(tk.ConfigError, match="pass tokenizer="):
        tk.Tuner(model).tokenizer  # noqa: B018
