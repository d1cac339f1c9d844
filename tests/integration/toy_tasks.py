"""Toy preference and RL tasks a tiny model learns in seconds, and the measures the tests use."""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import tunekit as tk
from tunekit.data.templates import render

DIGITS = "0123456789"


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine two threads spin
    against other processes and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- preference: "sort: 3 1 2" prefers "1 2 3" over the same digits in another order -------------


def sort_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        digits = rng.sample(DIGITS, rng.randint(3, 5))
        wrong = digits[:]
        while wrong == sorted(digits):
            rng.shuffle(wrong)
        rows.append(
            {"prompt": "sort: " + " ".join(digits), "chosen": " ".join(sorted(digits)), "rejected": " ".join(wrong)}
        )
    return rows


def unpaired(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows: alternately the chosen answer (desirable) and the rejected one (undesirable)."""
    return [
        {"prompt": p["prompt"], "completion": p["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
        for i, p in enumerate(pairs)
    ]


def answer_logprob(model: Any, tokenizer: Any, prompt: str, answer: str) -> float:
    """Summed log-probability of the answer's tokens (end of turn included) given the templated prompt."""
    user = [{"role": "user", "content": prompt}]
    head = tokenizer(render(tokenizer, user, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    whole = render(tokenizer, [*user, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
    assert ids[: len(head)] == head
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logps = model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
    token_logps = logps.gather(-1, x[0, 1:, None])[:, 0]
    return float(token_logps[len(head) - 1 :].sum())


def prefers_chosen(tuner: tk.Tuner, pairs: list[dict[str, Any]]) -> float:
    """Share of pairs whose chosen answer the policy finds more likely than the rejected one."""
    model, tok = tuner.model, tuner.tokenizer
    was_training = model.training
    model.eval()
    wins = sum(
        answer_logprob(model, tok, p["prompt"], p["chosen"]) > answer_logprob(model, tok, p["prompt"], p["rejected"])
        for p in pairs
    )
    model.train(was_training)
    return wins / len(pairs)


def ranks_chosen(reward_model: tk.Tuner, pairs: list[dict[str, Any]]) -> float:
    """Pairwise accuracy of a reward model: share of pairs scored chosen above rejected."""
    chosen = reward_model.score([(p["prompt"], p["chosen"]) for p in pairs])
    rejected = reward_model.score([(p["prompt"], p["rejected"]) for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


# --- RL: say anything; the reward counts the 7s in the answer --------------------------------------


def say_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": "say: " + " ".join(rng.sample("abcdefghij", 3))} for _ in range(n)]


def sevens(prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
    """The verifiable reward: how many 7s the answer has, up to 4, scaled to 0..1."""
    return [min(c.count("7"), 4) / 4 for c in completions]


def sample_answers(tuner: tk.Tuner, prompts: list[dict[str, Any]], *, seed: int, max_new_tokens: int = 8) -> list[str]:
    """The policy's own sampled answers (seeded): what a reward model of that policy must score."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        outs = tuner.generate(
            [p["prompt"] for p in prompts],
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            batch_size=64,
        )
    return list(outs)


def _with_sevens(rng: random.Random, text: str, k: int) -> str:
    base = text.replace("7", "")
    chars = list(base if base.strip() else "x")
    chars += ["x"] * (4 - len(chars))  # room for up to 4 sevens: a short answer gets as many as asked
    for pos in rng.sample(range(len(chars)), min(k, len(chars))):
        chars[pos] = rng.choice(["7", " 7"])
    return "".join(chars)


def sevens_pairs(prompts: list[dict[str, Any]], answers: list[str], seed: int) -> list[dict[str, Any]]:
    """Preference pairs labelled by the verifiable reward, as RLHF labels the policy's own samples:
    each sampled answer with more 7s put in (chosen) and with fewer (rejected)."""
    rng = random.Random(seed)
    rows = []
    for p, answer in zip(prompts, answers):
        more = rng.randint(1, 4)
        rows.append(
            {
                **p,
                "chosen": _with_sevens(rng, answer, more),
                "rejected": _with_sevens(rng, answer, rng.randint(0, more - 1)),
            }
        )
    return rows


def mean_reward(tuner: tk.Tuner, prompts: list[dict[str, Any]], *, samples: int = 8, max_new_tokens: int = 8) -> float:
    """Mean verifiable reward of sampled answers to held-out prompts (seeded, so comparable)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        outs = tuner.generate(
            [p["prompt"] for p in prompts for _ in range(samples)],
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            batch_size=64,
        )
    return statistics.mean(sevens([], outs))
