"""Continued pre-training on raw text."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tunekit.objectives.base import Objective

__all__ = ["CausalLM"]


class CausalLM(Objective):
    """Next-token prediction on every token of raw ``text`` rows (continued pre-training).

    Example:
        >>> import tunekit as tk
        >>> tk.CausalLM().add_eos
        True
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"text"})
    add_eos: bool = Field(True, description="Append the EOS token to each text, so the model learns where texts end.")
