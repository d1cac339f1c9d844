"""Exports: a merged transformers model (``hf``), the adapter alone (``adapter``) or a GGUF file for
llama.cpp and Ollama (``gguf``), each with a model card, and proof that it behaves like the trained model.

Example:
    >>> result = tuner.export("out/merged", format="hf")  # doctest: +SKIP
    >>> print(result.size_report())  # doctest: +SKIP
"""

from __future__ import annotations

from tunekit.export.core import EXPORT_MANIFEST, check_request, export_format, export_trained, verify_trained
from tunekit.export.result import ExportResult, PromptCheck, Verification

__all__ = [
    "EXPORT_MANIFEST",
    "ExportResult",
    "PromptCheck",
    "Verification",
    "check_request",
    "export_format",
    "export_trained",
    "verify_trained",
]
