"""VeRA: LoRA with frozen random projections shared by all layers and tiny trained scaling vectors."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tunekit.methods._targets import check_target_modules
from tunekit.methods.base import Method

__all__ = ["VeRA"]


class VeRA(Method):
    """Vector-based random matrix adaptation: one pair of frozen random matrices ``A`` and ``B``
    is shared by every targeted layer, and each layer trains only two scaling vectors (``d`` and
    ``b``). About ten times fewer parameters than LoRA; it wants a high rank and a higher
    learning rate. Mergeable.

    Example:
        >>> import tunekit as tk
        >>> tk.VeRA().r
        256
    """

    summary: ClassVar[str] = "shared frozen random projections, trained scaling vectors"
    family: ClassVar[str] = "low-rank"
    default_learning_rate: ClassVar[float] = 4e-3

    r: int = Field(256, ge=1, le=65536, description="Rank of the shared random projections; 256 is typical.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    d_initial: float = Field(0.1, gt=0, description="Initial value of the trained scaling vector d.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."
    )
    projection_seed: int = Field(0, ge=0, description="Seed of the shared random projections.")
    save_projection: bool = Field(
        True, description="Store the random projections in the adapter, so it loads identically everywhere."
    )

    _aliases: ClassVar[dict[str, str]] = {
        "vera_dropout": "dropout",
        "projection_prng_key": "projection_seed",
        "rank": "r",
        "targets": "target_modules",
    }

    @field_validator("r", mode="before")
    @classmethod
    def _r(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("r must be at least 1 (VeRA wants a high rank, typically 256)")
        return v

    _targets = field_validator("target_modules", mode="before")(lambda cls, v: check_target_modules(v))
