"""LyCORIS low-rank relatives of LoRA: LoHa (Hadamard product) and LoKr (Kronecker product)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from typing_extensions import Self

from tunekit.methods._targets import check_target_modules
from tunekit.methods.base import Method

__all__ = ["LoHa", "LoKr"]

_TARGETS_HELP = "'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."


def _rank(v: object) -> object:
    if isinstance(v, int) and not isinstance(v, bool) and v < 1:
        raise ValueError("r must be at least 1 (typical values: 4, 8, 16)")
    return v


class _Lycoris(Method):
    """What LoHa and LoKr share: a rank, its scaling, two dropouts and the modules to adapt."""

    family: ClassVar[str] = "low-rank"
    default_learning_rate: ClassVar[float] = 5e-4

    r: int = Field(8, ge=1, le=4096, description="Rank of the low-rank factors; 4-16 covers most tasks.")
    alpha: int | None = Field(None, ge=1, description="Scaling numerator (update scaled by alpha / r); None means r.")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the rank dimension during training.")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Probability of skipping a whole adapted module.")
    target_modules: Literal["all-linear"] | list[str] = Field("all-linear", description=_TARGETS_HELP)

    _aliases: ClassVar[dict[str, str]] = {"rank": "r", "lora_alpha": "alpha", "targets": "target_modules"}

    _r = field_validator("r", mode="before")(lambda cls, v: _rank(v))
    _targets = field_validator("target_modules", mode="before")(lambda cls, v: check_target_modules(v))

    @model_validator(mode="after")
    def _alpha(self) -> Self:
        if self.alpha is None:
            object.__setattr__(self, "alpha", self.r)
        return self


class LoHa(_Lycoris):
    """Low-rank Hadamard product: the update is ``(B1 @ A1) * (B2 @ A2)`` (element-wise), which
    reaches a higher effective rank than LoRA for the same number of parameters. Mergeable.

    Example:
        >>> import tunekit as tk
        >>> tk.LoHa(r=8).alpha
        8
    """

    summary: ClassVar[str] = "low-rank Hadamard-product update of each weight"


class LoKr(_Lycoris):
    """Low-rank Kronecker product: the update is ``C ⊗ (B @ A)``, a very compact factorisation
    (fewer parameters than LoRA at the same rank). Mergeable.

    Example:
        >>> import tunekit as tk
        >>> tk.LoKr(r=8).decompose_factor
        -1
    """

    summary: ClassVar[str] = "low-rank Kronecker-product update of each weight"

    decompose_both: bool = Field(False, description="Also factorise the left Kronecker factor into low rank.")
    decompose_factor: int = Field(
        -1, description="Size of the Kronecker split of each dimension; -1 picks the most balanced split."
    )

    @field_validator("decompose_factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("decompose_factor must be -1 (automatic) or a positive whole number, e.g. 4 or 8")
        return v
