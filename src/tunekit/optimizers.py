"""The optimizer of a run: ``tk.Training(optimizer=..., optimizer_options=...)``.

Optimizers are chosen by name; those with settings take a typed options object of their own
(``tk.SGDOptions``, ``tk.LionOptions``, ``tk.GaLoreOptions``, ``tk.APOLLOOptions``, ``tk.MuonOptions``),
validated like every tunekit config. These are pure configs: they import neither torch nor the
optimizers' packages; the engine builds the optimizer (``backends/hf/optimizers.py``) and ``plan()``
counts its state.

The optimizers: ``"adamw"`` (default; fused), ``"adamw_8bit"`` and ``"paged_adamw_8bit"`` (bitsandbytes),
``"adafactor"``, ``"lion"``, ``"galore"``, ``"apollo"``, ``"muon"`` and ``"sgd"``. docs/guides/optimizers.md
gives each one's memory per parameter and when to use it.

Example:
    >>> import tunekit as tk
    >>> t = tk.Training(optimizer="galore", optimizer_options=tk.GaLoreOptions(rank=64))
    >>> t.optimizer, t.optimizer_options.rank
    ('galore', 64)
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunekit._config import Config

__all__ = [
    "OPTIMIZERS",
    "OPTIONS",
    "APOLLOOptions",
    "GaLoreOptions",
    "LionOptions",
    "MuonOptions",
    "OptimizerName",
    "OptimizerOptions",
    "SGDOptions",
    "options_for",
]

OptimizerName = Literal[
    "adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "lion", "galore", "apollo", "muon", "sgd"
]
OPTIMIZERS: tuple[str, ...] = (
    "adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "lion", "galore", "apollo", "muon", "sgd"
)  # fmt: skip

# Names users bring from transformers (``optim=``), LLaMA-Factory or Axolotl -> tunekit's name.
OPTIMIZER_ALIASES: dict[str, str] = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "adam": "adamw",
    "adamw_bnb_8bit": "adamw_8bit",
    "adamw8bit": "adamw_8bit",
    "bnb_8bit": "adamw_8bit",
    "paged_adamw": "paged_adamw_8bit",
    "paged_adamw8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_8bit",
    "lion_32bit": "lion",
    "lion_8bit": "lion",
    "galore_adamw": "galore",
    "apollo_adamw": "apollo",
    "apollo_mini": "apollo",
    "sgd_momentum": "sgd",
}


class _Options(Config):
    """The options of one optimizer; ``optimizer`` names it (in dumped configs and in errors)."""

    optimizer: ClassVar[str]


class SGDOptions(_Options):
    """``Training(optimizer="sgd")``: SGD with momentum (torch.optim.SGD).

    Example:
        >>> import tunekit as tk
        >>> tk.Training(optimizer="sgd", optimizer_options=tk.SGDOptions(momentum=0.8)).optimizer_options.momentum
        0.8
    """

    optimizer: ClassVar[str] = "sgd"

    momentum: float = Field(
        0.9, ge=0, lt=1, description="Momentum (0: plain SGD, no optimizer state at all; else one buffer a weight)."
    )
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")

    @model_validator(mode="after")
    def _check(self) -> SGDOptions:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return self


class LionOptions(_Options):
    """``Training(optimizer="lion")``: Lion (bitsandbytes' 32-bit implementation), the sign of an interpolated
    momentum. Use a learning rate 3-10x smaller than AdamW's.

    Example:
        >>> import tunekit as tk
        >>> tk.LionOptions(beta2=0.98).beta2
        0.98
    """

    optimizer: ClassVar[str] = "lion"

    beta1: float = Field(0.9, ge=0, lt=1, description="Interpolation of momentum and gradient for the update.")
    beta2: float = Field(0.99, ge=0, lt=1, description="Decay of the momentum.")


class _LowRank(_Options):
    rank: int = Field(128, ge=1, le=65536, description="Rank of the gradient projection of each weight matrix.")
    update_proj_gap: int = Field(200, ge=1, description="Recompute the projection every this many steps.")
    proj_type: Literal["std", "reverse_std", "right", "left"] = Field(
        "std", description="Which side is projected: 'std' the smaller dimension of each matrix."
    )
    target_modules: str | tuple[str, ...] = Field(
        "all-linear",
        description="The linear layers whose weights are projected: 'all-linear' (every linear layer of the decoder "
        "layers; not the output head) or module-name suffixes such as ('q_proj', 'v_proj'). Other trainable "
        "parameters train with plain AdamW.",
    )

    _aliases: ClassVar[dict[str, str]] = {
        "r": "rank",
        "galore_rank": "rank",
        "apollo_rank": "rank",
        "update_interval": "update_proj_gap",
        "galore_update_interval": "update_proj_gap",
        "apollo_update_interval": "update_proj_gap",
        "target": "target_modules",
        "galore_target": "target_modules",
        "apollo_target": "target_modules",
        "optim_target_modules": "target_modules",
        "galore_scale": "scale",
        "apollo_scale": "scale",
    }

    @model_validator(mode="before")
    @classmethod
    def _modules(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("target_modules"), list):
            data = {**data, "target_modules": tuple(data["target_modules"])}
        return data


class GaLoreOptions(_LowRank):
    """``Training(optimizer="galore")``: GaLore (galore-torch), AdamW on each weight matrix's gradient projected to
    ``rank`` dimensions by its top singular vectors, recomputed every ``update_proj_gap`` steps. For full
    fine-tuning (``tk.Full()`` / ``tk.Freeze()``): an adapter is low-rank already.

    Example:
        >>> import tunekit as tk
        >>> tk.GaLoreOptions(rank=64, target_modules=["q_proj", "v_proj"]).target_modules
        ('q_proj', 'v_proj')
    """

    optimizer: ClassVar[str] = "galore"

    scale: float = Field(0.25, gt=0, description="Scale of the projected-back update (GaLore's alpha).")


class APOLLOOptions(_LowRank):
    """``Training(optimizer="apollo")``: APOLLO (apollo-torch), AdamW-like learning-rate scaling estimated in a
    random low-rank projection; ``rank=1, scale_type="tensor", scale=128`` is APOLLO-Mini (SGD-like memory). For full
    fine-tuning (``tk.Full()`` / ``tk.Freeze()``).

    Example:
        >>> import tunekit as tk
        >>> tk.APOLLOOptions(rank=1, scale_type="tensor", scale=128).scale_type
        'tensor'
    """

    optimizer: ClassVar[str] = "apollo"

    proj: Literal["random", "svd"] = Field("random", description="Random projection (APOLLO) or SVD (as GaLore).")
    scale_type: Literal["channel", "tensor"] = Field(
        "channel", description="Scaling factor per channel (APOLLO) or per tensor (APOLLO-Mini)."
    )
    scale: float = Field(1.0, gt=0, description="Scale of the update (APOLLO-Mini: 128).")


class MuonOptions(_Options):
    """``Training(optimizer="muon")``: Muon (torch.optim.Muon) for the 2-D weight matrices of the hidden layers,
    AdamW for the rest (embeddings, output head, norms, biases). With ``adjust_lr="match_rms_adamw"`` (default) both
    share the learning rate tuned for AdamW.

    Example:
        >>> import tunekit as tk
        >>> tk.MuonOptions(ns_steps=6).ns_steps
        6
    """

    optimizer: ClassVar[str] = "muon"

    momentum: float = Field(0.95, ge=0, lt=1, description="Momentum of the matrices' update.")
    nesterov: bool = Field(True, description="Nesterov momentum.")
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations orthogonalising each update.")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw",
        description="'match_rms_adamw' (Moonshot's scaling: AdamW's learning rate carries over) or 'original' "
        "(Keller Jordan's: needs a larger learning rate, e.g. 0.02).",
    )


OptimizerOptions = SGDOptions | LionOptions | GaLoreOptions | APOLLOOptions | MuonOptions

# Optimizer name -> its options class (optimizers not listed take no options).
OPTIONS: dict[str, type[_Options]] = {
    cls.optimizer: cls for cls in (SGDOptions, LionOptions, GaLoreOptions, APOLLOOptions, MuonOptions)
}


def options_for(optimizer: str, options: OptimizerOptions | None) -> OptimizerOptions | None:
    """The options the run uses: those given, else the defaults of ``optimizer``'s options class (None if it has
    none)."""
    if options is not None:
        return options
    cls = OPTIONS.get(optimizer)
    return cls() if cls is not None else None  # type: ignore[return-value]
