"""Typed results of an export: what was written, how big it is, and whether it behaves like the trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["ExportResult", "PromptCheck", "Verification", "human_size"]


def human_size(n: int | None) -> str:
    """``123456789`` -> ``'117.7 MiB'``."""
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # unreachable


class PromptCheck(BaseModel):
    """One golden prompt: the greedy tokens of the in-memory model against those of the reloaded export."""

    model_config = ConfigDict(frozen=True)

    prompt: Any
    runtime: str  # "transformers" or "llama.cpp"
    expected_ids: list[int]
    got_ids: list[int]
    expected: str
    got: str
    match: bool
    enforced: bool = True  # False: reported only (llama.cpp on f16/bf16/q8_0 weights)


class Verification(BaseModel):
    """The proof that an export behaves like the trained model.

    ``reference`` says what the export was compared with: ``"trained"`` (the in-memory model, for an
    export in its own precision or higher) or ``"trained, rounded to <dtype>"`` (a lower-precision
    export is compared with the trained weights rounded exactly as written; how far the rounding
    moved the trained model's outputs is in ``trained_agreement``, reported, never failed).
    ``passed`` counts the enforced checks; ``strict`` is false when some checks are only reported
    (llama.cpp on f16, bf16, q8_0 or k-quant weights, which it computes with rounded activations).

    For a GGUF checked in llama.cpp, ``llama_cpp_agreement`` is the share of golden prompts on which llama.cpp's
    greedy answer is token for token the trained model's, and ``llama_cpp_token_agreement`` the share of answer
    tokens that agree position by position (over the longer of the two answers): how far the exported precision
    (a k-quant above all) moved what the model says. Both are reported, never failed.
    """

    model_config = ConfigDict(frozen=True)

    passed: bool
    strict: bool
    reference: str
    checks: list[PromptCheck]
    trained_agreement: float | None = None
    llama_cpp_agreement: float | None = None
    llama_cpp_token_agreement: float | None = None
    notes: list[str] = []

    @property
    def mismatches(self) -> list[PromptCheck]:
        return [c for c in self.checks if not c.match]

    def __str__(self) -> str:
        runtimes = sorted({c.runtime for c in self.checks})
        ok = sum(c.match for c in self.checks)
        head = (
            f"{ok}/{len(self.checks)} checks of golden prompts give the reference greedy tokens ({', '.join(runtimes)})"
        )
        return head + ("" if self.strict else "; llama.cpp's reported, not enforced")


class ExportResult(BaseModel):
    """What ``Tuner.export`` returns: the files written, their size against the adapter's, and the proof.

    ``size_bytes`` is the whole export; ``adapter_size_bytes`` what the trained adapter alone
    takes (``None`` for full fine-tuning, which has no adapter); ``merged_size_bytes`` the size
    of the full model's weights at the export's precision. ``size_explanation`` says why they differ.

    Example:
        >>> result = tuner.export("out/merged", format="hf")  # doctest: +SKIP
        >>> print(result)  # doctest: +SKIP
        hf export at out/merged: ... MiB (adapter alone: 16.8 MiB), bf16; verified: ...
        >>> result.verification.passed  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(frozen=True)

    path: Path
    format: Literal["hf", "adapter", "gguf"]
    dtype: str
    files: list[str]
    size_bytes: int
    adapter_size_bytes: int | None
    merged_size_bytes: int | None
    trainable_params: int
    total_params: int
    size_explanation: str
    verification: Verification | None
    gguf_file: Path | None = None

    def size_report(self) -> str:
        """The sizes and why they differ, as printed by ``tunekit export``."""
        lines = [f"export: {human_size(self.size_bytes)} in {len(self.files)} files at {self.path}"]
        if self.adapter_size_bytes is not None:
            lines.append(f"adapter alone: {human_size(self.adapter_size_bytes)}")
        if self.merged_size_bytes is not None:
            lines.append(f"merged model weights ({self.dtype}): {human_size(self.merged_size_bytes)}")
        lines.append(self.size_explanation)
        return "\n".join(lines)

    def __str__(self) -> str:
        adapter = (
            f" (adapter alone: {human_size(self.adapter_size_bytes)})" if self.adapter_size_bytes is not None else ""
        )
        verified = f"; verified: {self.verification}" if self.verification is not None else "; not verified"
        return f"{self.format} export at {self.path}: {human_size(self.size_bytes)}{adapter}, {self.dtype}{verified}"
