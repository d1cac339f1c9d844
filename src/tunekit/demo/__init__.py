"""``tunekit demo``: pretrain a tiny model, teach it to follow instructions with LoRA, show the effect.

Everything runs on CPU with no network, in about a minute and a half on two cores:

1. write a tiny random llama with a tokenizer trained on the bundled phrasings
   (:func:`tunekit.testing.tiny_model`), and pretrain it with ``tk.Full()`` + ``tk.CausalLM()`` on
   sentences that state a skill (reversing digits) in English and Chinese (:mod:`.data`);
2. ask it, in chat form, to reverse held-out sequences: it knows the skill, not the request;
3. fine-tune a LoRA adapter with ``tk.SFT()`` on English and Chinese instructions, ask again, and
   print both sets of answers side by side, with the adapter's share and size (:mod:`.report`).

Example:
    >>> from rich.console import Console
    >>> from tunekit.demo import run_demo
    >>> report = run_demo("tunekit-demo", console=Console())  # doctest: +SKIP
    >>> report.accuracy_before, report.accuracy_after  # doctest: +SKIP
    (0.0, 1.0)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import tunekit as tk
from tunekit.demo.base import pretrain_base
from tunekit.demo.recipe import RECIPE, Recipe
from tunekit.demo.report import DemoReport, Sample, Show

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["RECIPE", "DemoReport", "Recipe", "Sample", "run_demo"]

# The longest answer is 5 digit tokens and the end-of-turn token; a few more show an answer that
# does not stop, without waiting long for it.
_MAX_NEW_TOKENS = 24


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then give the caller's setting back.

    The model is so small that splitting its matrix products across threads costs more than it
    saves, and on a busy machine (a shared CI runner) waiting threads slow everything down many
    times over. One thread also makes the arithmetic, and so the figures, the same whatever the
    machine's core count.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _weights_bytes(path: Path) -> int:
    """Bytes of the weight files of a saved model or adapter (tunekit saves safetensors only)."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_demo(
    output_dir: str | Path = "tunekit-demo",
    *,
    console: Console | None = None,
    seed: int = 0,
    recipe: Recipe = RECIPE,
) -> DemoReport:
    """Pretrain a tiny base model, fine-tune a LoRA adapter on it, and report the difference.

    Writes the base model to ``output_dir/base`` and the adapter to ``output_dir/adapter``,
    replacing an earlier demo's. Prints through ``console`` (nothing when it is None) and returns
    the figures as a :class:`DemoReport`; the same seed gives the same figures. ``recipe`` holds
    the sizes and hyper-parameters (:class:`Recipe`).
    """
    start = time.perf_counter()
    out = Path(output_dir)
    show = Show(console)
    show.intro()
    with _one_thread():
        base_dir = out / "base"
        base = pretrain_base(base_dir, recipe, seed, show)
        show.pretrained(base.params, base.first_loss, base.last_loss, base.completions)
        data = base.data

        tuner = tk.Tuner(
            base_dir,
            method=tk.LoRA(r=recipe.lora_r),
            objective=tk.SFT(),
            training=tk.Training(
                max_steps=recipe.sft_steps,
                learning_rate=recipe.sft_lr,
                batch_size=recipe.sft_batch,
                device="cpu",
                seed=seed,
                log_every=50,
            ),
        )
        prompts = [row["prompt"] for row in data.held_out]
        # Before fit, the new adapter is a no-op (LoRA's B starts at zero): this is the base model.
        with show.step(f"Asking the base model to reverse {len(prompts)} held-out sequences, in chat form"):
            before = tuner.generate(prompts, max_new_tokens=_MAX_NEW_TOKENS)
        with show.step(
            f"Fine-tuning a LoRA adapter (r={recipe.lora_r}) on {len(data.train):,} English and Chinese "
            "instructions (tk.LoRA + tk.SFT)"
        ):
            result = tuner.fit(data.train)
        with show.step("Asking the fine-tuned model the same questions"):
            after = tuner.generate(prompts, max_new_tokens=_MAX_NEW_TOKENS)
        adapter_dir = tuner.save(out / "adapter")

    held_out = tuple(Sample(row["prompt"], b, a, row["completion"]) for row, b, a in zip(data.held_out, before, after))
    report = DemoReport(
        accuracy_before=sum(s.answer_before == s.expected for s in held_out) / len(held_out),
        accuracy_after=sum(s.answer_after == s.expected for s in held_out) / len(held_out),
        samples=Sample.pick(held_out, recipe.samples),
        held_out=held_out,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        base_params=base.params,
        lora_r=recipe.lora_r,
        adapter_bytes=_weights_bytes(adapter_dir),
        adapter_dir_bytes=_dir_bytes(adapter_dir),
        base_bytes=_weights_bytes(base_dir),
        adapter_dir=adapter_dir,
        base_dir=base_dir,
        base_completions=base.completions,
        runtime_s=time.perf_counter() - start,
    )
    show.results(report)
    return report
