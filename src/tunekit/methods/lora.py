"""LoRA: low-rank adapters beside frozen weights."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods._targets import check_target_modules
from tunekit.methods.base import Method

__all__ = ["LoRA"]


class LoRA(Method):
    """Low-rank adaptation: each targeted weight ``W`` is used as ``W + (alpha / r) * B @ A`` with
    small trainable ``A`` (r x in) and ``B`` (out x r); ``W`` stays frozen. The adapter holds only
    ``A`` and ``B``, ``r * (in + out)`` numbers per weight, stored in fp32: 17.6 MB for a 0.5B model at
    ``r=8``, about 80 MB for a 7B one (docs/guides/adapters.md).

    On a vision-language model LoRA adapts the language model only; ``vision_tower`` and ``projector`` say
    whether the image encoder and the projector stay frozen, get LoRA too, or train whole.

    Variants: ``dora=True`` (DoRA), ``rslora=True`` (rank-stabilised scaling), ``init="pissa"``
    (PiSSA) and ``quantize="nf4"`` or ``"int8"`` (QLoRA: the frozen base is loaded quantized by
    bitsandbytes; needs a CUDA GPU).

    Example:
        >>> import tunekit as tk
        >>> tk.LoRA(r=8).alpha
        16
    """

    summary: ClassVar[str] = "low-rank update B @ A beside each frozen weight (DoRA, rsLoRA, PiSSA, QLoRA)"
    family: ClassVar[str] = "low-rank"
    trains_token_rows: ClassVar[bool] = True

    r: int = Field(8, ge=1, le=4096, description="Rank of the update; 8-64 covers most tasks.")
    alpha: int | None = Field(None, ge=1, description="Scaling numerator; None means 2 * r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or names of modules to adapt, e.g. ['q_proj', 'v_proj']."
    )
    target_parameters: list[str] = Field(
        default_factory=list,
        description="Parameters to adapt beside the modules, by the end of their names, e.g. "
        "['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'] for gpt-oss's fused experts, which no linear module "
        "holds (peft's target_parameters; no dora, dropout or pissa with it).",
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): learns a magnitude per output too.")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.")
    init: Literal["default", "gaussian", "pissa"] = Field(
        "default", description="Initialisation: 'default' (B=0), 'gaussian', or 'pissa' (principal singular vectors)."
    )
    quantize: Literal["nf4", "int8"] | None = Field(
        None,
        description="QLoRA: load the frozen base in 4-bit NF4 or 8-bit through bitsandbytes (needs a CUDA GPU).",
    )
    vision_tower: Literal["frozen", "lora", "full"] = Field(
        "frozen",
        description="Vision-language models: the image encoder stays frozen (default), gets LoRA adapters too "
        "('lora', on its linear modules that target_modules names), or trains whole ('full', saved in the adapter).",
    )
    projector: Literal["frozen", "lora", "full"] = Field(
        "frozen",
        description="Vision-language models: the projector from image features to the language model (LLaVA's "
        "multi_modal_projector, Idefics3's connector, Qwen-VL's merger) stays frozen, gets LoRA, or trains whole.",
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
        "load_in_4bit": "quantize",
        "load_in_8bit": "quantize",
        "quantization": "quantize",
        "qlora": "quantize",
        "bits": "quantize",
    }

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: object) -> object:
        return check_target_modules(v)

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize(cls, v: object) -> object:
        if v is None or v in ("nf4", "int8"):
            return v
        hint = {"4bit": "nf4", "4": "nf4", "fp4": "nf4", "8bit": "int8", "8": "int8", "int4": "nf4"}.get(str(v).lower())
        fix = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(f"quantize must be 'nf4' (4-bit QLoRA), 'int8' (8-bit) or None{fix}")

    @field_validator("target_parameters", mode="before")
    @classmethod
    def _parameters(cls, v: object) -> object:
        if isinstance(v, str):
            raise ValueError(f"target_parameters must be a list of parameter names, e.g. [{v!r}]")
        if isinstance(v, list) and any(not isinstance(n, str) or not n.strip() or n != n.strip() for n in v):
            raise ValueError(f"target_parameters: every entry must be a parameter name without spaces, got {v!r}")
        return v

    @model_validator(mode="after")
    def _alpha(self) -> LoRA:
        if self.target_parameters:
            # peft's ParamWrapper (what adapts a bare parameter) refuses these; say so before anything loads.
            clash = [
                name
                for name, on in (
                    ("dora=True", self.dora),
                    ("dropout > 0", self.dropout > 0),
                    ("init='pissa'", self.init == "pissa"),
                )
                if on
            ]
            if clash:
                raise ValueError(
                    f"target_parameters cannot be combined with {', '.join(clash)}: peft adapts a bare parameter "
                    "without them; drop those options, or adapt modules only (target_modules)"
                )
        if self.init == "pissa" and self.quantize is not None:
            raise ValueError(
                "PiSSA initialisation reads the full-precision base weights, which a quantized base does not have; "
                "use init='default' with quantize, or quantize=None with init='pissa'"
            )
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.r)
        return self
