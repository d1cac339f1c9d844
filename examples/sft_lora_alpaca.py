"""Instruction tuning (SFT) with LoRA on an Alpaca-style file, checked on held-out questions.

The data (``examples/data/alpaca_*.jsonl``) has rows like
``{"instruction": "Say the first digit of the list.", "input": "9 1 4", "output": "9"}``, half of
them with the instruction in Chinese. tunekit renders each row with the chat template, puts the
loss on the answer only (and its end-of-turn token, so the model learns to stop), and
``generate`` uses the same template.

Runs on a CPU in about 15 seconds with a tiny random model (no network):

    python examples/sft_lora_alpaca.py

With a real model: ``--model Qwen/Qwen2.5-0.5B-Instruct --lr 2e-4`` (and your own file).
Exits 1 if held-out accuracy did not rise to at least 80%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import tunekit as tk
from tunekit.testing import tiny_model

DATA = Path(__file__).resolve().parent / "data"


def accuracy(tuner: tk.Tuner, rows: list[dict[str, str]]) -> float:
    """Share of held-out rows answered exactly, with the prompt rendered as in training."""
    prompts = [f"{r['instruction']}\n\n{r['input']}" for r in rows]
    answers = tuner.generate(prompts, max_new_tokens=8)
    return sum(a.strip() == r["output"] for a, r in zip(answers, rows)) / len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or directory (default: a tiny random model, no network)")
    parser.add_argument("--workdir", type=Path, help="where the model and adapter go (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument(
        "--lr", type=float, help="learning rate (default: 5e-3 on the tiny model; with --model, LoRA's default 2e-4)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread; drop this line for a real one

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunekit-sft-"))
    train_file, eval_file = DATA / "alpaca_train.jsonl", DATA / "alpaca_eval.jsonl"
    held_out = [json.loads(line) for line in eval_file.read_text(encoding="utf-8").splitlines()]
    # A tiny model's tokenizer is trained on the data's own text; initializer_range=0.2 gives its random
    # weights a scale at which an adapter can learn a toy task from scratch.
    texts = [" ".join(r.values()) for r in held_out] + train_file.read_text(encoding="utf-8").splitlines()
    model = args.model or tiny_model(workdir / "base", texts=texts, initializer_range=0.2)

    # The tiny random model needs 25x LoRA's default rate to learn in a few steps; a real model (--model) trains at
    # the method's default (None: LoRA's 2e-4), which is what you want: the tiny model's rate would ruin it.
    tiny_model_lr = 5e-3  # for the tiny random model ONLY
    lr = args.lr if args.lr is not None else (None if args.model else tiny_model_lr)
    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=16),
        objective=tk.SFT(),
        training=tk.Training(max_steps=args.steps, learning_rate=lr, batch_size=16, log_every=20),
    )
    before = accuracy(tuner, held_out)  # LoRA starts as a no-op: this is the base model
    result = tuner.fit(train_file, eval_data=eval_file)
    after = accuracy(tuner, held_out)
    saved = tuner.save(workdir / "adapter")
    size_kb = sum(f.stat().st_size for f in saved.glob("*.safetensors")) / 1024

    print(result)
    print(f"held-out accuracy: {before:.0%} before, {after:.0%} after fine-tuning")
    print(f"adapter: {saved} ({size_kb:.0f} KB of weights, {result.trainable_share:.1%} of the parameters)")
    print("sample:", repr(tuner.generate("请说出列表中的第一个数字。\n\n5 0 3", max_new_tokens=8)))
    return 0 if after >= 0.8 and after > before else 1


if __name__ == "__main__":
    sys.exit(main())
