"""AdaLoRA: LoRA whose rank budget is re-allocated across layers during training."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods._targets import check_target_modules
from tunekit.methods.base import Method

__all__ = ["AdaLoRA"]


class AdaLoRA(Method):
    """Adaptive LoRA: starts every targeted module at rank ``init_r`` and, as training goes,
    prunes the least important singular directions until the average rank is ``target_r``, so
    the budget goes where the task needs it. Mergeable.

    The budget is updated after every optimizer step; the backend does this, with the schedule
    (``warmup_share``, ``final_share``) placed on the run's real number of steps.

    Example:
        >>> import tunekit as tk
        >>> tk.AdaLoRA(init_r=12, target_r=4).alpha
        24
    """

    summary: ClassVar[str] = "LoRA whose rank budget moves to the layers that need it"
    family: ClassVar[str] = "low-rank"
    trains_token_rows: ClassVar[bool] = True
    needs_step_callback: ClassVar[bool] = True
    default_learning_rate: ClassVar[float] = 5e-4

    init_r: int = Field(12, ge=1, le=4096, description="Rank every targeted module starts with.")
    target_r: int = Field(8, ge=1, le=4096, description="Average rank kept at the end of the budget schedule.")
    alpha: int | None = Field(None, ge=1, description="Scaling numerator; None means 2 * init_r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."
    )
    warmup_share: float = Field(
        0.1, ge=0, lt=1, description="Share of the steps trained at full rank before pruning starts (peft's tinit)."
    )
    final_share: float = Field(
        0.2, ge=0, lt=1, description="Share of the steps trained at the final ranks after pruning (peft's tfinal)."
    )
    update_every: int = Field(1, ge=1, description="Re-allocate the budget every N steps during pruning (deltaT).")
    beta1: float = Field(0.85, gt=0, lt=1, description="Smoothing of the importance scores.")
    beta2: float = Field(0.85, gt=0, lt=1, description="Smoothing of the importance uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser on A and B.")

    _aliases: ClassVar[dict[str, str]] = {
        "r": "init_r",
        "rank": "init_r",
        "lora_alpha": "alpha",
        "lora_dropout": "dropout",
        "tinit": "warmup_share",
        "tfinal": "final_share",
        "deltat": "update_every",
        "targets": "target_modules",
    }

    _targets = field_validator("target_modules", mode="before")(lambda cls, v: check_target_modules(v))

    @model_validator(mode="after")
    def _check(self) -> AdaLoRA:
        if self.target_r > self.init_r:
            raise ValueError(
                f"target_r ({self.target_r}) must not exceed init_r ({self.init_r}): the budget only shrinks; "
                f"e.g. init_r={self.target_r + self.target_r // 2}, target_r={self.target_r}"
            )
        if self.warmup_share + self.final_share >= 1:
            raise ValueError(
                f"warmup_share + final_share must leave steps for pruning (got {self.warmup_share} + "
                f"{self.final_share}); e.g. warmup_share=0.1, final_share=0.2"
            )
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.init_r)
        return self
