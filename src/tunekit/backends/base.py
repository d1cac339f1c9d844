"""The Backend protocol: what a Tuner needs from whatever trains the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

__all__ = ["Backend"]


class Backend(Protocol):
    """Turns (model reference, Method, Objective, Training, data, hooks) into a run.

    The ``hf`` backend (transformers + peft + trl) is the only one today; the protocol is the seam
    for others and for mocks in users' tests.
    """

    def load(self, tuner: Any) -> tuple[Any, Any]:
        """Load and prepare (model, tokenizer) for ``tuner``'s method; called once, lazily."""
        ...

    def fit(self, tuner: Any, train: Any, eval_data: Any | None) -> Any:
        """Train on encoded data; returns a ``FitResult``."""
        ...

    def generate(self, tuner: Any, prompts: list[Any], options: dict[str, Any]) -> list[str]:
        """Greedy (or sampled) continuation of each prompt, new text only."""
        ...

    def save(self, tuner: Any, path: Path) -> None:
        """Write the trained weights and tokenizer into ``path``."""
        ...
