"""Helpers for tests, examples and applications' own tests: tiny local models (no network) and a test double.

- :func:`tiny_model` writes a tiny random causal LM with a trained tokenizer and a chat template into a
  directory, for tests that train for real in seconds; ``arch="qwen2_vl"`` and the other vision families
  (:mod:`tunekit.testing.vision`) write a tiny vision-language model with its processor instead, and
  :func:`load_processor` loads that processor (also without torchvision);
- :class:`FakeBackend` stands in for the engine, so code around ``tk.Tuner`` (hooks, run events, cancels,
  error handling) is tested without any model: ``tk.Tuner("name", backend=tk.testing.FakeBackend())``;
- :func:`reverse_task`, :func:`first_task` and :func:`write_jsonl` make toy data;
- :mod:`tunekit.testing.families` lists the model families tunekit is tested on (one ``tiny_model`` arch each), the
  source of the supported-models page.

Example:
    >>> import tunekit as tk
    >>> tuner = tk.Tuner("any-name", backend=tk.testing.FakeBackend(losses=[1.0, 0.5]), progress=False)
    >>> tuner.fit(tk.testing.reverse_task(4)).steps
    2
    >>> import tempfile
    >>> path = tk.testing.tiny_model(tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

from tunekit.testing.backend import FakeBackend, FakeModel
from tunekit.testing.models import CHATML, DEFAULT_TEXTS, first_task, reverse_task, tiny_model, write_jsonl
from tunekit.testing.vision import VISION_ARCHS, load_processor

__all__ = [
    "CHATML",
    "DEFAULT_TEXTS",
    "VISION_ARCHS",
    "FakeBackend",
    "FakeModel",
    "first_task",
    "load_processor",
    "reverse_task",
    "tiny_model",
    "write_jsonl",
]
