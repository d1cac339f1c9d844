"""Freeze tuning: train only chosen blocks or modules of the model, freeze the rest."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from tunekit.methods._targets import check_module_list
from tunekit.methods.base import Method

__all__ = ["Freeze"]


class Freeze(Method):
    """Partial fine-tuning: the last ``last_layers`` transformer blocks and/or the modules named
    in ``modules`` train; every other weight is frozen. No adapter: it saves a whole model, like
    ``Full``, with a fraction of Full's optimizer memory. ``Freeze()`` trains the last 2 blocks.

    ``modules`` entries match a module by its full dotted name (``model.norm``), its last part
    (``lm_head``, ``mlp``) or a glob (``model.layers.*.mlp``).

    Example:
        >>> import tunekit as tk
        >>> tk.Freeze().last_layers
        2
        >>> tk.Freeze(modules=["lm_head"]).last_layers is None
        True
    """

    summary: ClassVar[str] = "only the last N blocks or the named modules train"
    family: ClassVar[str] = "full"
    is_adapter: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False
    not_mergeable_because: ClassVar[str] = (
        "it trains the model's own weights, so tuner.model already is the whole trained model; "
        "save it with tuner.save(path)"
    )
    default_learning_rate: ClassVar[float] = 5e-5

    last_layers: int | None = Field(
        None, ge=1, description="Train the last N transformer blocks; None with no modules means 2."
    )
    modules: list[str] | None = Field(
        None, description="Also train these modules: full names, last name parts or globs, e.g. ['lm_head']."
    )

    _aliases: ClassVar[dict[str, str]] = {
        "num_layers": "last_layers",
        "layers": "last_layers",
        "freeze_trainable_layers": "last_layers",
        "trainable_layers": "last_layers",
        "target_modules": "modules",
        "freeze_trainable_modules": "modules",
        "trainable_modules": "modules",
    }

    @field_validator("last_layers", mode="before")
    @classmethod
    def _layers(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("last_layers must be at least 1; to train every weight use tk.Full()")
        return v

    _modules = field_validator("modules", mode="before")(lambda cls, v: check_module_list("modules", v))

    @model_validator(mode="after")
    def _default(self) -> Freeze:
        if self.last_layers is None and self.modules is None:
            object.__setattr__(self, "last_layers", 2)
        return self
