"""Regenerate the docs' memory tables from ``tuner.plan()``: memory by model size and method, adapter sizes by rank.

Every figure comes from ``tk.Tuner(path, method=..., training=...).plan(rows)`` on the published shape of a real model
(scripts/model_shapes.json: the config.json fields that set its parameters and memory), built on the meta device:
nothing is downloaded and no weights exist. Usage, from the repository root:

    python scripts/memory_table.py            # rewrites the tables between their markers in the pages below
    python scripts/memory_table.py --check    # exit 1 if a page's table differs from a fresh computation

tests/integration/test_memory_table.py checks the committed tables (a subset by default, all of them under ``-m slow``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "scripts" / "model_shapes.json"
REGENERATE = "python scripts/memory_table.py"

# The table's rows, and the shapes whose adapter sizes are listed.
SIZES = ["Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-7B", "Qwen2.5-14B", "Qwen2.5-32B", "Qwen2.5-72B"]
ADAPTER_SHAPES = ["Qwen2.5-0.5B", "Qwen2.5-7B", "Llama-3.1-8B"]
RANKS = (8, 16, 32, 64)
METHODS = ("lora", "qlora", "full")  # the table's columns, each with and without gradient checkpointing

# The workload: a CUDA GPU in bf16, micro-batches of 4,096 tokens (e.g. 4 sequences of 1,024, packed), AdamW.
MAX_LENGTH, TOKENS_PER_BATCH = 1024, 4096
ROWS = 400  # reverse-task rows: more tokens than one micro-batch, so that the largest one is full


def method_for(name: str, r: int = 16) -> Any:
    import tunekit as tk

    return {"lora": tk.LoRA(r=r), "qlora": tk.LoRA(r=r, quantize="nf4"), "full": tk.Full()}[name]


def training_for(checkpointing: bool) -> Any:
    import tunekit as tk

    return tk.Training(
        device="cuda",  # planned for a CUDA GPU, whether or not this machine has one
        precision="bf16",
        max_length=MAX_LENGTH,
        tokens_per_batch=TOKENS_PER_BATCH,
        gradient_checkpointing=checkpointing,
        optimizer="adamw",
        epochs=1,
        cache=False,
    )


def load_shapes() -> dict[str, dict[str, Any]]:
    shapes: dict[str, dict[str, Any]] = json.loads(SHAPES.read_text(encoding="utf-8"))["shapes"]
    return shapes


def write_shape(name: str, folder: Path) -> Path:
    """A model directory with ``name``'s published config.json and a tiny local tokenizer (ChatML, as the Instruct
    models' own template), no weights: what ``tk.Tuner(path).plan(rows)`` needs to build the model on the meta
    device."""
    from tunekit.testing import tiny_model

    path = tiny_model(folder / name, arch="qwen2")  # its tokenizer and chat template; the weights are removed
    (path / "model.safetensors").unlink()
    config = load_shapes()[name]["config"]
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def without_liger() -> Iterator[None]:
    """Plans as if liger-kernel were not installed, whatever this environment has: tunekit applies Liger's kernels on
    CUDA when it is installed (they keep less), and the tables state a run without them."""
    from tunekit.backends.hf import fastpath

    importable = fastpath.importable
    with mock.patch.object(fastpath, "importable", lambda name: name != "liger_kernel" and importable(name)):
        yield


def plan(path: Path, method: Any, *, checkpointing: bool) -> Any:
    import tunekit as tk
    from tunekit.testing import reverse_task

    with without_liger():
        return tk.Tuner(str(path), method=method, training=training_for(checkpointing)).plan(reverse_task(ROWS))


def memory_row(path: Path) -> dict[str, int]:
    """``{"lora": bytes, "lora+gc": bytes, ...}``: the estimated peak of each method, without and with checkpointing,
    and ``"params"``: the model's parameters."""
    row: dict[str, int] = {}
    for name in METHODS:
        for gc in (False, True):
            p = plan(path, method_for(name), checkpointing=gc)
            row[name + ("+gc" if gc else "")] = p.total_bytes
            if name == "full":
                row["params"] = p.total_params
    return row


def adapter_row(path: Path) -> dict[int, int]:
    """``{rank: trainable parameters}`` of LoRA on every linear layer (tunekit's default targets)."""
    return {r: plan(path, method_for("lora", r), checkpointing=True).trainable_params for r in RANKS}


def compute(sizes: list[str], adapter_shapes: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {name: write_shape(name, folder) for name in dict.fromkeys(sizes + adapter_shapes)}
        return {
            "memory": {name: memory_row(paths[name]) for name in sizes},
            "adapters": {name: adapter_row(paths[name]) for name in adapter_shapes},
        }


# --- rendering --------------------------------------------------------------------------------------------------
def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n < 1e10 else f"{n / 1e9:.1f} B"


# Adapter weights are saved as peft holds them: fp32, 4 bytes a value (tests/integration/test_memory_table.py).
ADAPTER_BYTES_PER_VALUE = 4

_HEAD = {
    "en": {
        "memory": "| model | parameters | LoRA r=16 | LoRA r=16, checkpointing | QLoRA r=16 "
        "| QLoRA r=16, checkpointing | full, AdamW | full, AdamW, checkpointing |",
        "compact": "| model | LoRA r=16 | QLoRA r=16 (nf4) | full fine-tuning, AdamW |",
        "adapters": "| model | r=8 | r=16 | r=32 | r=64 |",
    },
    "zh": {
        "memory": "| 模型 | 参数量 | LoRA r=16 | LoRA r=16 + 梯度检查点 | QLoRA r=16 | QLoRA r=16 + 梯度检查点 "
        "| 全参数 AdamW | 全参数 AdamW + 梯度检查点 |",
        "compact": "| 模型 | LoRA r=16 | QLoRA r=16（nf4） | 全参数微调 AdamW |",
        "adapters": "| 模型 | r=8 | r=16 | r=32 | r=64 |",
    },
}


def _separator(head: str) -> str:
    return "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"


def render_memory(rows: dict[str, dict[str, int]], lang: str) -> str:
    head = _HEAD[lang]["memory"]
    lines = [head, _separator(head)]
    for name, row in rows.items():
        cells = [_gib(row[m + gc]) for m in METHODS for gc in ("", "+gc")]
        lines.append(f"| {name} | {_billions(row['params'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_compact(rows: dict[str, dict[str, int]], lang: str) -> str:
    head = _HEAD[lang]["compact"]
    lines = [head, _separator(head)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{_gib(row[m + '+gc'])} GiB" for m in METHODS) + " |")
    return "\n".join(lines)


def render_adapters(rows: dict[str, dict[int, int]], lang: str) -> str:
    head = _HEAD[lang]["adapters"]
    lines = [head, _separator(head)]
    for name, row in rows.items():
        cells = [f"{row[r] * ADAPTER_BYTES_PER_VALUE / 2**20:.1f} MiB ({row[r] / 1e6:.1f} M)" for r in RANKS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# page -> [(block name, what it renders)]; a block sits between <!-- memory-table:NAME --> and <!-- /memory-table -->.
Render = Callable[[dict[str, Any]], str]
PAGES: dict[str, list[tuple[str, Render]]] = {
    "docs/guides/plan.md": [
        ("memory", lambda t: render_memory(t["memory"], "en")),
        ("adapters", lambda t: render_adapters(t["adapters"], "en")),
    ],
    "docs/zh/plan.md": [
        ("memory", lambda t: render_memory(t["memory"], "zh")),
        ("adapters", lambda t: render_adapters(t["adapters"], "zh")),
    ],
    "docs/guides/model-size.md": [("compact", lambda t: render_compact(t["memory"], "en"))],
    "docs/zh/model-size.md": [("compact", lambda t: render_compact(t["memory"], "zh"))],
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- memory-table:{name} (generated by `{REGENERATE}`; do not edit) -->\n", "<!-- /memory-table -->"


def read_block(text: str, name: str) -> str:
    start, end = _markers(name)
    if start not in text or end not in text[text.index(start) :]:
        raise ValueError(f"no {start.strip()} ... {end} block")
    body = text[text.index(start) + len(start) :]
    return body[: body.index(end)].strip("\n")


def replace_block(text: str, name: str, content: str) -> str:
    start, end = _markers(name)
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    return f"{before}{start}{content}\n{end}{after}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Compare instead of writing; exit 1 if stale.")
    args = parser.parse_args(argv)
    tables = compute(SIZES, ADAPTER_SHAPES)
    stale = []
    for page, blocks in PAGES.items():
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        new = text
        for name, render in blocks:
            if read_block(new, name) != render(tables):
                stale.append(f"{page} ({name})")
            new = replace_block(new, name, render(tables))
        if not args.check and new != text:
            path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"stale tables: {', '.join(stale)}; regenerate them with: {REGENERATE}", file=sys.stderr)
        return 1
    print(("up to date: " if args.check or not stale else "rewrote: ") + ", ".join(stale or list(PAGES)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
