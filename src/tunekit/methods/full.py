"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from typing import ClassVar

from tunekit.methods.base import Method

__all__ = ["Full"]


class Full(Method):
    """Train every parameter of the model. Best quality per step, most memory (weights, gradients
    and two AdamW moments: about 16 bytes per parameter in fp32), and it saves a whole model.

    Example:
        >>> import tunekit as tk
        >>> tk.Full().name
        'Full'
    """

    summary: ClassVar[str] = "every weight trains"
    family: ClassVar[str] = "full"
    trains_token_rows: ClassVar[bool] = True
    default_learning_rate: ClassVar[float] = 2e-5
    is_adapter: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False  # nothing to merge: the weights are the model
    not_mergeable_because: ClassVar[str] = (
        "it trains the model's own weights, so tuner.model already is the whole trained model; "
        "save it with tuner.save(path)"
    )
