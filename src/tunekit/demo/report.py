"""What the demo returns (:class:`DemoReport`) and how it prints it (:class:`Show`, through rich)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tunekit.eval_result import EvalResult

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["DemoReport", "Sample", "Show"]

# LoRA parameters per unit of rank on every linear layer of Llama-2-7B (32 layers, 4096 wide,
# MLP 11008): 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008)); and that model's size.
_7B_LORA_PER_RANK = 2_498_560
_7B_PARAMS = 6_738_415_616


def _is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


class Sample(NamedTuple):
    """One held-out question, the answers before and after fine-tuning, and the right answer."""

    prompt: str
    answer_before: str
    answer_after: str
    expected: str

    @staticmethod
    def pick(samples: tuple[Sample, ...], n: int) -> tuple[Sample, ...]:
        """The first ``n`` samples, half English and half Chinese, in their original order."""
        english = [s for s in samples if not _is_chinese(s.prompt)][: n - n // 2]
        chinese = [s for s in samples if _is_chinese(s.prompt)][: n // 2]
        return tuple(sorted(english + chinese, key=samples.index))


@dataclass(frozen=True)
class DemoReport:
    """The demo's figures. Accuracies are exact match on the held-out questions (0 to 1)."""

    accuracy_before: float
    accuracy_after: float
    samples: tuple[Sample, ...]  # the few printed side by side
    held_out: tuple[Sample, ...]  # every held-out question
    trainable_params: int  # the adapter's parameters
    total_params: int  # base model and adapter
    base_params: int
    lora_r: int
    adapter_bytes: int  # the adapter's weight file
    adapter_dir_bytes: int  # the whole adapter directory: weights, config, tokenizer, manifest
    base_bytes: int  # the base model's weight file
    adapter_dir: Path
    base_dir: Path
    base_completions: tuple[tuple[str, str], ...]  # (plain-text prompt, the base model's continuation)
    runtime_s: float
    evaluation: EvalResult | None = None  # tuner.evaluate(held_out, baseline=True): where the accuracies come from

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KB" if n < 1024**2 else f"{n / 1024**2:,.1f} MB"


def _answer(got: str, expected: str) -> Text:
    """One answer as a short table cell: a tick or a cross, newlines shown, long ones cut."""
    from rich.text import Text

    ok = got == expected
    cell = Text(("✓ " if ok else "✗ ") + (got.replace("\n", "⏎") if got.strip() else "(nothing)"))
    cell.truncate(22, overflow="ellipsis")  # in terminal cells: a Chinese character takes two
    cell.stylize("green" if ok else "red")
    return cell


class Show:
    """Prints the demo's progress and results on a rich console; does nothing without one."""

    def __init__(self, console: Console | None) -> None:
        self.console = console

    def print(self, *things: object) -> None:
        if self.console is not None:
            self.console.print(*things)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """A spinner while ``what`` runs, then a tick and the time it took."""
        start = time.perf_counter()
        spinner = self.console.status(what + " ...") if self.console is not None else contextlib.nullcontext()
        with spinner:
            yield
        self.print(f"[green]✓[/] {what} [dim]({time.perf_counter() - start:.0f} s)[/]")

    def intro(self) -> None:
        self.print(
            "[bold]tunekit demo[/]: pretrain a tiny model, then teach it instructions with LoRA\n"
            "[dim]CPU only, no network, about a minute and a half[/]\n"
        )

    def pretrained(
        self, params: int, first_loss: float, last_loss: float, completions: tuple[tuple[str, str], ...]
    ) -> None:
        from rich.markup import escape

        self.print(f"  base model: {params:,} parameters, loss {first_loss:.2f} -> {last_loss:.2f}")
        for prompt, completion in completions:
            self.print(f"  it knows the skill in plain text: [cyan]{escape(prompt)}[/][bold]{escape(completion)}[/]")

    def results(self, r: DemoReport) -> None:
        if self.console is None:
            return
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        table = Table(title="Held-out questions (sequences never seen in training)", title_justify="left")
        table.add_column("Prompt", overflow="fold")  # wrap long prompts, never cut them
        for column in ("Expected", "Before LoRA", "After LoRA"):
            table.add_column(column)
        for s in r.samples:
            table.add_row(
                Text(s.prompt),
                Text(s.expected),
                _answer(s.answer_before, s.expected),
                _answer(s.answer_after, s.expected),
            )
        self.print()
        self.print(table)
        self.print(
            f"Exact match on all {len(r.held_out)} held-out questions: before [bold red]{r.accuracy_before:.0%}[/]"
            f", after [bold green]{r.accuracy_after:.0%}[/]\n"
        )
        if r.evaluation is not None:
            self.print(escape(str(r.evaluation)))
        self.print(
            f"Trainable: [bold]{r.trainable_params:,}[/] of {r.total_params:,} parameters "
            f"([bold]{r.trainable_share:.1%}[/]): the adapter's; the base model's {r.base_params:,} stayed frozen."
        )
        self.print(
            f"Adapter weights: [bold]{_size(r.adapter_bytes)}[/] on disk, against {_size(r.base_bytes)} for the "
            f"base model ({r.adapter_bytes / max(r.base_bytes, 1):.0%})."
        )
        share_7b = r.lora_r * _7B_LORA_PER_RANK / _7B_PARAMS
        self.print(
            "[dim]Why so small: the adapter holds only LoRA's low-rank A and B matrices, added beside the "
            "frozen weights. It is not a model on its own: it runs on top of the base model it was trained "
            "on (tk.load puts it back on it), and it can be merged into that model's weights. "
            f"The share is this large only because the base model is tiny: at rank {r.lora_r}, on a 7B "
            f"model, it would be about {share_7b:.2%}.[/]"
        )
        self.print(
            f"Adapter saved to [bold]{escape(str(r.adapter_dir))}[/] ({_size(r.adapter_dir_bytes)} with its config, "
            f"tokenizer and manifest); base model in {escape(str(r.base_dir))}.\n"
            f"Use it: [cyan]{escape(f'tk.load({str(r.adapter_dir)!r})')}.generate('Reverse the sequence: 2 7 1 8')[/]\n"
            f"[dim]The demo ran in {r.runtime_s:.0f} s.[/]"
        )
