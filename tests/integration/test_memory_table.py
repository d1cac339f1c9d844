"""The docs' memory tables (docs/guides/plan.md, docs/zh/plan.md, the model-size pages) are what ``plan()`` computes
now, and every other figure docs/guides/plan.md states is checked here.

The tables come from scripts/memory_table.py, which plans the published shapes of real models (scripts/
model_shapes.json) on the meta device. Planning them all takes about a minute, so the default suite recomputes the
rows of the smallest model and the slow suite (``pytest -m slow``) all of them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guides" / "plan.md"


@pytest.fixture(scope="module")
def table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "scripts" / "memory_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_table"] = module  # dataclass-free, but keep the usual import bookkeeping
    spec.loader.exec_module(module)
    return module


def _stale(page: str, what: str, table: ModuleType) -> str:
    return f"{page}: the {what} is stale; regenerate it with: {table.REGENERATE}"


def _pages(table: ModuleType) -> dict[str, str]:
    return {page: (ROOT / page).read_text(encoding="utf-8") for page in table.PAGES}


def test_the_shapes_and_the_tables_cover_the_same_models(table: ModuleType) -> None:
    shapes = table.load_shapes()
    for name in table.SIZES + table.ADAPTER_SHAPES:
        config = shapes[name]["config"]
        assert shapes[name]["hub_id"].endswith(name.split("-", 1)[1] + "-Instruct"), name
        for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            assert isinstance(config[key], (int, str)), (name, key)
    for page, text in _pages(table).items():
        for name, _ in table.PAGES[page]:
            block = table.read_block(text, name)
            models = [line.split("|")[1].strip() for line in block.splitlines()[2:]]
            assert models == (table.ADAPTER_SHAPES if name == "adapters" else table.SIZES), _stale(page, name, table)


def test_the_smallest_models_rows_are_current(table: ModuleType, tmp_path: Path) -> None:
    """Each table's first row, recomputed with plan() (Qwen2.5-0.5B: ten plans, a few seconds)."""
    name = table.SIZES[0]
    path = table.write_shape(name, tmp_path)
    fresh = {"memory": {name: table.memory_row(path)}, "adapters": {name: table.adapter_row(path)}}
    assert table.ADAPTER_SHAPES[0] == name
    for page, text in _pages(table).items():
        for block, render in table.PAGES[page]:
            row = render(fresh).splitlines()[2]
            committed = table.read_block(text, block).splitlines()[2]
            assert committed == row, _stale(page, f"{block} table ({name})", table)
    # Full fine-tuning with AdamW: fp32 weights, gradients and two moments, 16 bytes a parameter (plus a step
    # counter a tensor), as the page says.
    full = table.plan(path, table.method_for("full"), checkpointing=True)
    per_param = (full.weights_bytes + full.gradients_bytes + full.optimizer_bytes) / full.total_params
    assert 16 <= per_param < 16.001


@pytest.mark.slow
def test_every_table_is_current(table: ModuleType) -> None:
    """The whole regeneration (``python scripts/memory_table.py --check``), about a minute, and what the page says
    of the QLoRA column."""
    fresh = table.compute(table.SIZES, table.ADAPTER_SHAPES)
    for page, text in _pages(table).items():
        for block, render in table.PAGES[page]:
            assert table.read_block(text, block) == render(fresh), _stale(page, f"{block} table", table)
    memory = fresh["memory"]
    # "Without checkpointing [QLoRA's fp32 activations] outweigh the smaller weights on most sizes; with
    # checkpointing QLoRA needs the least memory on every size but the smallest."
    assert sum(row["qlora"] > row["lora"] for row in memory.values()) > len(memory) / 2
    smallest, *rest = memory.values()
    assert smallest["qlora+gc"] >= smallest["lora+gc"]
    assert all(row["qlora+gc"] < min(row["lora+gc"], row["full+gc"]) for row in rest)


def test_the_plan_output_on_the_page_is_what_tunekit_plan_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import torch

    from tunekit.cli import main
    from tunekit.testing import write_jsonl

    text = PAGE.read_text(encoding="utf-8")
    config = re.search(r"```yaml\n# plan.yaml\n(.*?)```", text, re.S)
    shown = re.search(r"<!-- plan-output: .*? -->\n```text\n\$ (tunekit plan .*?)\n(.*?)```", text, re.S)
    assert config and shown, "docs/guides/plan.md: the plan.yaml block or the plan-output block is missing"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # planned from a machine with no GPU
    write_jsonl(reverse_task(64), "train.jsonl")
    Path("plan.yaml").write_text(config.group(1), encoding="utf-8")
    assert main(shown.group(1).split()[1:]) == 0
    assert capsys.readouterr().out == shown.group(2), "the output docs/guides/plan.md shows is not tunekit's now"


def test_the_accuracy_the_page_states_is_what_was_measured() -> None:
    from tests.integration import test_plan_accuracy, test_plan_qlora

    text = PAGE.read_text(encoding="utf-8")
    stated = re.search(r"<!-- plan-accuracy -->([\d.]+)%<!-- /plan-accuracy -->", text)
    measured = re.search(r"^Worst error: ([\d.]+)%", (ROOT / "benchmarks" / "README.md").read_text("utf-8"), re.M)
    assert stated and measured and stated.group(1) == measured.group(1)
    assert "within 2%" in text and test_plan_accuracy.TOLERANCE == test_plan_qlora.TOLERANCE == 0.02
    assert "hence the 5% margin" in text  # fits: total <= 95% of the memory (the page's first snippet checks it)


def test_the_4bit_storage_the_page_states() -> None:
    """ "about half a byte a value (4 bits, and a scale of 8 bits for each block of 64 values)"."""
    import bitsandbytes as bnb
    import torch

    from tunekit.backends.hf.quantization import parameter_bytes

    n = 4096 * 4096
    weight = bnb.nn.Params4bit(torch.empty(n, 1, device="meta", dtype=torch.bfloat16), compress_statistics=True)
    assert weight.blocksize == 64 and 0.5 < parameter_bytes(weight) / n < 0.5 + 1.1 / 64


def test_saved_adapters_are_fp32_as_the_adapter_table_assumes(tiny_qwen: Path, tmp_path: Path) -> None:
    """The adapter table: 4 bytes a trainable parameter on disk, whatever the training precision (here bf16)."""
    from safetensors import safe_open

    rows = reverse_task(8)
    training = tk.Training(device="cpu", precision="bf16", batch_size=4, max_steps=1)
    tuner = tk.Tuner(str(tiny_qwen), method=tk.LoRA(r=8), training=training)
    plan = tuner.plan(rows)
    tuner.fit(rows)
    weights = tuner.save(tmp_path / "adapter") / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]
    assert {str(t.dtype) for t in tensors} == {"torch.float32"}
    assert sum(t.numel() for t in tensors) == plan.trainable_params
    assert 0 < weights.stat().st_size - 4 * plan.trainable_params < 16 * 1024  # the header: a few KB
