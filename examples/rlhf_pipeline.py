"""RLHF end to end on a CPU in a few minutes: SFT, a reward model, then GRPO against it.

The task is a toy one that a tiny model learns fast: sort a few digits ("sort: 3 1 2" -> "1 2 3").

1. SFT on demonstrations of sorting;
2. a reward model on preference pairs (the sorted answer over a shuffled one);
3. GRPO on prompts alone, rewarded by that reward model.

Everything is local: the model is a tiny random Llama written by ``tunekit.testing.tiny_model``.
Run it with ``python examples/rlhf_pipeline.py [output_dir]``.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tunekit as tk


def sort_prompt(rng: random.Random) -> tuple[str, list[str]]:
    digits = rng.sample("0123456789", rng.randint(3, 5))
    return "sort: " + " ".join(digits), digits


def sft_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, digits = sort_prompt(rng)
        rows.append({"prompt": prompt, "completion": " ".join(sorted(digits))})
    return rows


def wrong_answer(rng: random.Random, digits: list[str]) -> list[str]:
    """A near miss: the digits out of order, or in order with one digit dropped, repeated or changed."""
    kind = rng.choice(["shuffled", "dropped", "repeated", "changed"])
    answer = sorted(digits)
    if kind == "dropped":
        answer.pop(rng.randrange(len(answer)))
    elif kind == "repeated":
        answer.insert(0, answer[0]) if rng.random() < 0.5 else answer.append(answer[-1])
    elif kind == "changed":
        answer[rng.randrange(len(answer))] = rng.choice([d for d in "0123456789" if d not in digits])
        answer.sort()
    else:
        while answer == sorted(digits):
            rng.shuffle(answer)
    return answer


def preference_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, digits = sort_prompt(rng)
        rows.append(
            {"prompt": prompt, "chosen": " ".join(sorted(digits)), "rejected": " ".join(wrong_answer(rng, digits))}
        )
    return rows


def prompt_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": sort_prompt(rng)[0]} for _ in range(n)]


def sorted_share(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    """Share of held-out prompts answered with exactly the sorted digits (greedy decoding)."""
    outs = tuner.generate([r["prompt"] for r in rows], max_new_tokens=12)
    return sum(o == r["completion"] for o, r in zip(outs, rows)) / len(rows)


def main(output_dir: str | Path) -> tk.RLHFResult:
    out = Path(output_dir)
    texts = [f"{r['prompt']} {r['completion']}" for r in sft_rows(300, seed=100)]
    base = tk.testing.tiny_model(out / "base-model", texts=texts)
    held = sft_rows(40, seed=2)
    print(f"before: {sorted_share(tk.Tuner(base, method=tk.Full()), held):.0%} of held-out prompts sorted")

    def cpu(steps: int, lr: float, batch_size: int = 16) -> tk.Training:
        return tk.Training(max_steps=steps, learning_rate=lr, batch_size=batch_size, device="cpu", log_every=10)

    start = time.perf_counter()
    result = tk.rlhf(
        base,
        sft_data=sft_rows(600, seed=1),
        preference_data=preference_rows(512, seed=3),
        prompts=prompt_rows(256, seed=4),
        output_dir=out / "rlhf",
        method=tk.Full(),
        rl=tk.GRPO(num_generations=4, max_completion_length=12),
        # Learning rates for this tiny random model ONLY (it needs high ones to learn in a few steps); with a real
        # model, leave learning_rate out (None: the method's default, e.g. Full's 2e-5 for SFT).
        sft_training=cpu(100, 3e-3),
        reward_training=cpu(150, 1e-3),
        rl_training=cpu(40, 2e-5),
    )
    print(f"RLHF done in {time.perf_counter() - start:.0f}s: {result}")
    policy, reward_model = tk.load(result.policy_path), tk.load(result.reward_model_path)
    pairs = preference_rows(64, seed=5)
    chosen = reward_model.score([(p["prompt"], p["chosen"]) for p in pairs])
    rejected = reward_model.score([(p["prompt"], p["rejected"]) for p in pairs])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
    print(f"reward model: prefers the sorted answer in {accuracy:.0%} of held-out pairs")
    print(f"after SFT: {sorted_share(tk.load(result.sft_path), held):.0%} sorted")
    print(f"after GRPO: {sorted_share(policy, held):.0%} sorted")
    rl_rewards = [h["reward"] for h in result.rl.history if "reward" in h]
    print(f"GRPO mean reward: {rl_rewards[0]:.2f} at the first step, {rl_rewards[-1]:.2f} at the last")
    for prompt in ("sort: 4 1 3", "sort: 9 2 7 5"):
        print(f"  {prompt!r} -> {policy.generate(prompt, max_new_tokens=12)!r}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tunekit-rlhf-"))
