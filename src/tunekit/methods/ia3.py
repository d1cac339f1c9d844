"""IA3: learned scaling vectors on activations."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods._targets import check_module_list, check_target_modules
from tunekit.methods.base import Method

__all__ = ["IA3"]


class IA3(Method):
    """Infused adapters (IA3): one learned vector per targeted module rescales its activations
    (the outputs of attention keys and values, the inputs of the feed-forward projection). The
    fewest trainable parameters of any adapter, a higher learning rate, and mergeable.

    ``target_modules="auto"`` uses peft's choice for the architecture (for Llama: ``k_proj``,
    ``v_proj``, ``down_proj``, with ``down_proj`` as the feed-forward module).

    Example:
        >>> import tunekit as tk
        >>> tk.IA3().target_modules
        'auto'
    """

    summary: ClassVar[str] = "learned scaling vectors on activations"
    family: ClassVar[str] = "scaling"
    default_learning_rate: ClassVar[float] = 3e-3

    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        "auto", description="'auto' (peft's choice for the architecture), 'all-linear', or names of modules."
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="Which targets are feed-forward layers (scaled on their input); 'auto' follows target_modules.",
    )

    _aliases: ClassVar[dict[str, str]] = {"targets": "target_modules", "ff_modules": "feedforward_modules"}

    _targets = field_validator("target_modules", mode="before")(lambda cls, v: check_target_modules(v, auto=True))

    @field_validator("feedforward_modules", mode="before")
    @classmethod
    def _ff(cls, v: object) -> object:
        return v if v == "auto" else check_module_list("feedforward_modules", v, allow_none=False)

    @model_validator(mode="after")
    def _subset(self) -> IA3:
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list):
            extra = [m for m in ff if m not in targets]
            if extra:
                raise ValueError(
                    f"feedforward_modules {extra} are not in target_modules; every feed-forward module must also be "
                    f"a target, e.g. target_modules={[*targets, *extra]!r}"
                )
        if isinstance(ff, list) and targets == "auto":
            raise ValueError(
                "feedforward_modules is given but target_modules is 'auto'; name the targets too, "
                f"e.g. target_modules=['k_proj', 'v_proj', {ff[0]!r}]"
            )
        return self
