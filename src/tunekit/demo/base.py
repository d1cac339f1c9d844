"""Step 1 of the demo: a tiny base model, pretrained at demo time on the bundled corpus."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tunekit as tk
from tunekit.demo.data import INSTRUCTIONS, SENTENCES, SMALL_TALK, DemoData, make_data
from tunekit.demo.recipe import Recipe
from tunekit.demo.report import Show
from tunekit.testing import tiny_model

__all__ = ["Pretrained", "pretrain_base"]


@dataclass(frozen=True)
class Pretrained:
    data: DemoData  # the corpus it was pretrained on, and the instruction and held-out sets
    params: int
    first_loss: float
    last_loss: float
    completions: tuple[tuple[str, str], ...]  # (plain-text prompt, the base model's continuation)


def _tokenizer_texts() -> list[str]:
    """Texts to train the demo's tokenizer on: every phrasing, with sequences using every digit.

    Each digit must appear often, with and without a space before it, so that each form of each
    digit becomes one token: a digit split over two tokens makes reversing much harder to learn.
    """
    digits = ("0 1 2 3 4", "5 6 7 8 9", "9 7 5 3 1", "8 6 4 2 0")
    texts = [s.format(x=x, y=x[::-1]) for s in SENTENCES + INSTRUCTIONS for x in digits]
    texts += [f"user\n{q}\nassistant\n{a}" for q, a in SMALL_TALK]
    return texts * 10  # repeated, so that whole words and phrases become tokens


def _chat_renderer(model_dir: Path) -> Any:
    """Render one (user, assistant) exchange with the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def render(user: str, assistant: str) -> str:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False))

    return render


def pretrain_base(out: Path, recipe: Recipe, seed: int, show: Show) -> Pretrained:
    """Write a tiny random llama, pretrain it with Full + CausalLM, and save it to ``out``."""
    with tempfile.TemporaryDirectory(prefix="tunekit-demo-") as tmp:
        init = tiny_model(
            Path(tmp) / "random",
            texts=_tokenizer_texts(),
            vocab_size=recipe.vocab_size,
            hidden_size=recipe.hidden_size,
            num_layers=recipe.num_layers,
            seed=seed,
        )
        data = make_data(
            _chat_renderer(init),
            seed=seed,
            corpus_size=recipe.corpus_size,
            train_size=recipe.train_size,
            held_out_size=recipe.held_out_size,
        )
        tuner = tk.Tuner(
            init,
            method=tk.Full(),
            objective=tk.CausalLM(),
            training=tk.Training(
                max_steps=recipe.pretrain_steps,
                learning_rate=recipe.pretrain_lr,
                batch_size=recipe.pretrain_batch,
                device="cpu",
                seed=seed,
                log_every=50,
                # The corpus holds conversations rendered with the chat template: its markers are meant.
                allow_control_tokens=True,
            ),
        )
        with show.step(f"Pretraining a tiny base model on {len(data.corpus):,} bundled texts (tk.Full + tk.CausalLM)"):
            result = tuner.fit(data.corpus)
        # A CausalLM tuner continues plain text (no chat template): show that the base knows the
        # skill when asked the way its corpus states it. A held-out answer read backwards is its
        # question's sequence.
        x, y = (" ".join(reversed(row["completion"].split())) for row in data.held_out[:2])
        prompts = [f"{x} reversed is", f"{y} 倒过来是"]
        completions = tuple(zip(prompts, tuner.generate(prompts, max_new_tokens=12)))
        tuner.save(out)
    losses = [h["loss"] for h in result.history if "loss" in h]
    return Pretrained(
        data=data,
        params=result.total_params,
        first_loss=losses[0] if losses else result.train_loss,
        last_loss=result.train_loss,
        completions=completions,
    )
