"""OFT: orthogonal fine-tuning, a learned rotation of each targeted weight."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods._targets import check_target_modules
from tunekit.methods.base import Method

__all__ = ["OFT"]


class OFT(Method):
    """Orthogonal fine-tuning: each targeted weight is multiplied by a learned block-diagonal
    orthogonal matrix, which rotates the pretrained features without changing their norms (it
    keeps the base model's knowledge well). Mergeable.

    ``block_size`` must divide the input size of each targeted layer; peft picks the nearest
    size that does when it does not, with a warning.

    Example:
        >>> import tunekit as tk
        >>> tk.OFT(block_size=16).block_size
        16
    """

    summary: ClassVar[str] = "learned block-diagonal rotation of each weight"
    family: ClassVar[str] = "orthogonal"
    default_learning_rate: ClassVar[float] = 5e-4

    block_size: int = Field(32, ge=1, le=4096, description="Size of each orthogonal block (peft's oft_block_size).")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."
    )
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Probability of dropping whole blocks in training.")
    constrained: bool = Field(False, description="Constrained OFT (COFT): keep the rotation close to the identity.")
    eps: float = Field(6e-5, gt=0, description="How far COFT may move from the identity (constrained=True only).")
    block_share: bool = Field(False, description="Share one rotation between the blocks of a layer.")

    _aliases: ClassVar[dict[str, str]] = {
        "oft_block_size": "block_size",
        "coft": "constrained",
        "targets": "target_modules",
    }

    _targets = field_validator("target_modules", mode="before")(lambda cls, v: check_target_modules(v))

    @model_validator(mode="after")
    def _eps(self) -> OFT:
        if self.eps != type(self).model_fields["eps"].default and not self.constrained:
            raise ValueError("eps only applies to constrained OFT; set constrained=True, or leave eps out")
        return self
