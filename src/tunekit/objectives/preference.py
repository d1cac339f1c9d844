"""Offline preference optimisation: DPO (and its loss variants, SimPO included), KTO and ORPO."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunekit.objectives.base import Objective

__all__ = ["DPO", "KTO", "ORPO"]

DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "simpo",
]


class DPO(Objective):
    """Direct preference optimisation: raise the likelihood of each ``chosen`` answer relative to
    the ``rejected`` one, measured against a frozen reference (the model as it was before this
    run), with no reward model and no sampling.

    ``loss`` picks the variant trl implements: ``"sigmoid"`` (DPO), ``"ipo"``, ``"hinge"`` (SLiC),
    ``"robust"`` and ``"exo_pair"`` (noisy labels, with ``label_smoothing``), ``"nca_pair"``,
    ``"bco_pair"``, ``"sppo_hard"``, ``"aot"``, ``"aot_unpaired"``, ``"apo_zero"``, ``"apo_down"``,
    ``"discopop"``, ``"sigmoid_norm"``; and ``"simpo"`` (SimPO: reference-free, length-normalised,
    with a target margin ``simpo_gamma``; trl's CPO trainer).

    With an adapter (``tk.LoRA()``) the reference is the same model with its starting adapter
    weights: no second copy of the model is held. With ``tk.Full()`` the reference is a frozen copy.
    ``FitResult.history`` has ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen`` and ``logps/rejected``.

    Example:
        >>> import tunekit as tk
        >>> tk.DPO(beta=0.1, loss="ipo").loss
        'ipo'
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"preference"})
    tokenised_by_tunekit: ClassVar[bool] = False

    beta: float = Field(
        0.1,
        gt=0,
        description="How far the model may move from the reference: higher keeps it closer (IPO: the tau).",
    )
    loss: DPOLoss = Field("sigmoid", description="The loss variant; 'sigmoid' is the original DPO.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels ('robust'), or EXO's epsilon ('exo_pair')."
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin (loss='simpo' only).")

    _aliases: ClassVar[dict[str, str]] = {"loss_type": "loss", "gamma": "simpo_gamma", "tau": "beta"}

    @model_validator(mode="after")
    def _check(self) -> DPO:
        if self.loss == "exo_pair" and self.label_smoothing == 0:
            raise ValueError("loss='exo_pair' needs label_smoothing > 0 (the EXO paper suggests 1e-3)")
        return self


class KTO(Objective):
    """Kahneman-Tversky optimisation: learn from single answers labelled desirable or undesirable
    (``prompt``, ``completion``, ``label``) rather than from pairs; preference pairs also work (each
    pair becomes one desirable and one undesirable row).

    The reference is handled as in :class:`DPO`. ``FitResult.history`` has ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` and ``kl``.

    Example:
        >>> import tunekit as tk
        >>> tk.KTO(undesirable_weight=1.5).undesirable_weight
        1.5
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"unpaired_preference", "preference"})
    tokenised_by_tunekit: ClassVar[bool] = False

    beta: float = Field(0.1, gt=0, description="How far the model may move from the reference: higher keeps it closer.")
    desirable_weight: float = Field(
        1.0, gt=0, description="Weight of the desirable rows' loss (raise it when they are the minority)."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight of the undesirable rows' loss (raise it when they are the minority)."
    )
    loss: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="'kto', or the unpaired APO-zero loss.")

    _aliases: ClassVar[dict[str, str]] = {"loss_type": "loss"}


class ORPO(Objective):
    """Odds-ratio preference optimisation: supervised learning on the ``chosen`` answers plus a
    penalty on the odds of the ``rejected`` ones, in one stage and without a reference model.

    ``FitResult.history`` has ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` and ``nll_loss``.

    Example:
        >>> import tunekit as tk
        >>> tk.ORPO(beta=0.2).beta
        0.2
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"preference"})
    tokenised_by_tunekit: ClassVar[bool] = False
    reads_tools: ClassVar[bool] = False  # trl's ORPO renders the chat template without the row's tools

    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term (the paper's lambda).")

    _aliases: ClassVar[dict[str, str]] = {"lambda": "beta", "lam": "beta"}
