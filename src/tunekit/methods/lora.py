"""LoRA: low-rank adapters beside frozen weights."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods.base import Method

__all__ = ["LoRA"]


class LoRA(Method):
    """Low-rank adaptation: each targeted weight ``W`` is used as ``W + (alpha / r) * B @ A`` with
    small trainable ``A`` (r x in) and ``B`` (out x r); ``W`` stays frozen. The adapter holds only
    ``A`` and ``B``, which is why it is a few MB however large the base model is.

    Example:
        >>> import tunekit as tk
        >>> tk.LoRA(r=8).alpha
        16
    """

    r: int = Field(8, ge=1, le=4096, description="Rank of the update; 8-64 covers most tasks.")
    alpha: int | None = Field(None, ge=1, description="Scaling numerator; None means 2 * r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): learns a magnitude per output too.")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.")
    init: Literal["default", "gaussian", "pissa"] = Field(
        "default", description="Initialisation: 'default' (B=0), 'gaussian', or 'pissa' (principal singular vectors)."
    )

    @field_validator("r", mode="before")
    @classmethod
    def _r(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("r must be at least 1 (typical values: 8, 16, 32)")
        return v

    # Option names users bring from peft, so the error suggests the tunekit name.
    _aliases: ClassVar[dict[str, str]] = {
        "rank": "r",
        "lora_r": "r",
        "lora_rank": "r",
        "lora_alpha": "alpha",
        "lora_dropout": "dropout",
        "use_dora": "dora",
        "use_rslora": "rslora",
        "init_lora_weights": "init",
        "targets": "target_modules",
        "target_module": "target_modules",
        "modules": "target_modules",
    }

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: object) -> object:
        if v == "all-linear":
            return v
        if isinstance(v, str):
            if v.lower().replace("_", "-").replace(" ", "-") in ("all-linear", "alllinear", "all"):
                raise ValueError("target_modules must be 'all-linear' (with a hyphen) or a list of module names")
            raise ValueError(f"target_modules must be 'all-linear' or a list of module names, e.g. [{v!r}]")
        if not isinstance(v, (list, tuple)) or not all(isinstance(m, str) for m in v):
            raise ValueError("target_modules must be 'all-linear' or a list of module names (strings)")
        if not v:
            raise ValueError("target_modules is empty; use 'all-linear' or name at least one module")
        return list(v)

    @model_validator(mode="after")
    def _alpha(self) -> LoRA:
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.r)
        return self
