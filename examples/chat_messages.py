"""Chat fine-tuning on OpenAI-style ``messages``, with a system prompt and multi-turn conversations.

Rows look like ``{"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}``
(ShareGPT ``conversations`` rows work the same). Every assistant turn is supervised, each up to and
including its end-of-turn token; system and user turns are context only. At inference,
``generate`` takes the same list of messages and returns only the new assistant text.

Runs on a CPU in about 15 seconds with a tiny random model (no network):

    python examples/chat_messages.py

Exits 1 if held-out accuracy did not rise to at least 80%.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import tunekit as tk
from tunekit.testing import tiny_model

SYSTEM = "Answer with one digit."


def conversation(rng: random.Random, turns: int) -> list[dict[str, str]]:
    """A conversation of ``turns`` questions ("first digit of ...?") and their answers."""
    messages = [{"role": "system", "content": SYSTEM}]
    for _ in range(turns):
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5))]
        messages.append({"role": "user", "content": "First digit?\n\n" + " ".join(digits)})
        messages.append({"role": "assistant", "content": digits[0]})
    return messages


def rows(n: int, seed: int, *, multi_turn: float = 0.0) -> list[dict[str, Any]]:
    """Conversations, a share ``multi_turn`` of them with two questions (both answers are trained on)."""
    rng = random.Random(seed)
    return [{"messages": conversation(rng, turns=2 if rng.random() < multi_turn else 1)} for _ in range(n)]


def accuracy(tuner: tk.Tuner, held_out: list[dict[str, Any]]) -> float:
    """Ask each held-out conversation's last question, with the turns before it (the system prompt) as context."""
    prompts = [r["messages"][:-1] for r in held_out]  # everything up to the last assistant turn
    answers = tuner.generate(prompts, max_new_tokens=8)
    return sum(a.strip() == r["messages"][-1]["content"] for a, r in zip(answers, held_out)) / len(held_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or directory (default: a tiny random model, no network)")
    parser.add_argument("--workdir", type=Path, help="where the model and adapter go (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument(
        "--lr", type=float, help="learning rate (default: 5e-3 on the tiny model; with --model, LoRA's default 2e-4)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread; drop this line for a real one

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunekit-chat-"))
    train, held_out = rows(400, seed=1, multi_turn=0.1), rows(40, seed=2)
    texts = [m["content"] for r in train for m in r["messages"]]
    model = args.model or tiny_model(workdir / "base", texts=texts, initializer_range=0.2)

    # The tiny random model needs 25x LoRA's default rate to learn in a few steps; a real model (--model) trains at
    # the method's default (None: LoRA's 2e-4), which is what you want: the tiny model's rate would ruin it.
    tiny_model_lr = 5e-3  # for the tiny random model ONLY
    lr = args.lr if args.lr is not None else (None if args.model else tiny_model_lr)
    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=16),
        training=tk.Training(max_steps=args.steps, learning_rate=lr, batch_size=16, log_every=20),
    )
    before = accuracy(tuner, held_out)
    result = tuner.fit(train, eval_data=held_out)  # messages rows: the objective inferred is SFT
    after = accuracy(tuner, held_out)
    tuner.save(workdir / "adapter")

    print(result)
    print(f"objective inferred from the data: {tuner.objective_used.name}")
    print(f"held-out accuracy: {before:.0%} before, {after:.0%} after fine-tuning")
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "First digit?\n\n7 2 9"}]
    print("sample:", repr(tuner.generate(chat, max_new_tokens=8)))
    return 0 if after >= 0.8 and after > before else 1


if __name__ == "__main__":
    sys.exit(main())
