"""``tunekit demo``: pretrain a tiny model, teach it to follow instructions with LoRA, show the effect.

Everything runs on CPU with no network, in about a minute and a half on two cores:

1. write a tiny random llama with a tokenizer trained on the bundled phrasings
   (:func:`tunekit.testing.tiny_model`), and pretrain it with ``tk.Full()`` + ``tk.CausalLM()`` on
   sentences that state a skill (reversing digits) in English and Chinese (:mod:`.data`);
2. fine-tune a LoRA adapter with ``tk.SFT()`` on English and Chinese instructions;
3. ask the base model (adapter disabled) and the fine-tuned one, in chat form, to reverse held-out sequences
   (``tuner.evaluate(..., baseline=True)``): the base knows the skill, not the request; print both sets of
   answers side by side and the evaluation table, with the adapter's share and size (:mod:`.report`).

Example:
    >>> from rich.console import Console
    >>> from tunekit.demo import run_demo
    >>> report = run_demo("tunekit-demo", console=Console())  # doctest: +SKIP
    >>> report.accuracy_before, report.accuracy_after  # doctest: +SKIP
    (0.0, 1.0)
"""

from __future__ import annotations

import contextlib
import importlib.util
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


def held_out_metrics() -> list[str]:
    """What the demo scores its held-out answers with: exact match, and chrF where sacrebleu (the ``eval`` extra) is
    installed: the demo runs on a plain ``pip install tunekit``, which does not bring it."""
    return ["exact_match", "chrf"] if importlib.util.find_spec("sacrebleu") is not None else ["exact_match"]


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
        with show.step(
            f"Fine-tuning a LoRA adapter (r={recipe.lora_r}) on {len(data.train):,} English and Chinese "
            "instructions (tk.LoRA + tk.SFT)"
        ):
            result = tuner.fit(data.train)
        # baseline=True: the base model (adapter disabled) answers too: the "before" column.
        with show.step(f"Asking the base and the fine-tuned model to reverse {len(data.held_out)} held-out sequences"):
            evaluation = tuner.evaluate(
                data.held_out, metrics=held_out_metrics(), baseline=True, max_new_tokens=_MAX_NEW_TOKENS
            )
        adapter_dir = tuner.save(out / "adapter")

    held_out = tuple(
        Sample(str(r.prompt), r.baseline_prediction or "", r.prediction or "", r.reference) for r in evaluation.rows
    )
    assert evaluation.baseline is not None
    report = DemoReport(
        accuracy_before=evaluation.baseline["exact_match"],
        accuracy_after=evaluation.metrics["exact_match"],
        evaluation=evaluation,
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
