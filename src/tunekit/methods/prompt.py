"""Prompt-based methods: learned virtual tokens in front of the input (the base model is untouched)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunekit.methods.base import Method

__all__ = ["PTuning", "PrefixTuning", "PromptTuning"]

_PROMPT_OBJECTIVES = frozenset({"SFT", "CausalLM"})
_NOT_MERGEABLE = (
    "its virtual tokens are extra inputs in front of every sequence, not a change to the base weights, "
    "so there is nothing to merge into them"
)


def _num_virtual_tokens(v: object) -> object:
    if isinstance(v, int) and not isinstance(v, bool) and v < 1:
        raise ValueError("num_virtual_tokens must be at least 1 (typical values: 8 to 32)")
    return v


class PromptTuning(Method):
    """Prompt tuning: ``num_virtual_tokens`` learned embeddings are put in front of every input;
    only they train. Tiny adapters (a few thousand parameters); works best on larger models. Set
    ``init_text`` to start the virtual tokens from the embeddings of a task description.

    Not mergeable: the virtual tokens are extra inputs, not a change to the weights.

    Example:
        >>> import tunekit as tk
        >>> tk.PromptTuning(num_virtual_tokens=8, init_text="Reverse the digits").num_virtual_tokens
        8
    """

    summary: ClassVar[str] = "learned virtual token embeddings before the input"
    family: ClassVar[str] = "prompt"
    mergeable: ClassVar[bool] = False
    not_mergeable_because: ClassVar[str] = _NOT_MERGEABLE
    objectives: ClassVar[frozenset[str] | None] = _PROMPT_OBJECTIVES
    default_learning_rate: ClassVar[float] = 3e-2

    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="How many learned tokens go before the input.")
    init_text: str | None = Field(
        None, description="Initialise the virtual tokens from this text's token embeddings; None: random."
    )

    _aliases: ClassVar[dict[str, str]] = {
        "prompt_tuning_init_text": "init_text",
        "n_tokens": "num_virtual_tokens",
        "virtual_tokens": "num_virtual_tokens",
    }

    _n = field_validator("num_virtual_tokens", mode="before")(lambda cls, v: _num_virtual_tokens(v))

    @field_validator("init_text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("init_text is empty; give a short description of the task, or None for a random start")
        return v


class PrefixTuning(Method):
    """Prefix tuning: learned key and value vectors for ``num_virtual_tokens`` positions are put
    in front of the sequence in every attention layer; only they train. More capacity than prompt
    tuning for the same number of tokens. ``projection=True`` trains them through a small MLP
    (more stable, saved as the resulting vectors).

    Not mergeable, and it does not work with gradient checkpointing (the backend turns that off).

    Example:
        >>> import tunekit as tk
        >>> tk.PrefixTuning(num_virtual_tokens=10).projection
        False
    """

    summary: ClassVar[str] = "learned key/value prefixes in every attention layer"
    family: ClassVar[str] = "prompt"
    mergeable: ClassVar[bool] = False
    not_mergeable_because: ClassVar[str] = _NOT_MERGEABLE
    supports_gradient_checkpointing: ClassVar[bool] = False
    objectives: ClassVar[frozenset[str] | None] = _PROMPT_OBJECTIVES
    default_learning_rate: ClassVar[float] = 1e-2

    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="How many learned positions go before the input.")
    projection: bool = Field(False, description="Reparameterise the prefix through an MLP while training.")
    projection_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP; None means the model's hidden size."
    )

    _aliases: ClassVar[dict[str, str]] = {
        "prefix_projection": "projection",
        "encoder_hidden_size": "projection_hidden_size",
        "n_tokens": "num_virtual_tokens",
        "virtual_tokens": "num_virtual_tokens",
    }

    _n = field_validator("num_virtual_tokens", mode="before")(lambda cls, v: _num_virtual_tokens(v))

    @model_validator(mode="after")
    def _projection(self) -> PrefixTuning:
        if self.projection_hidden_size is not None and not self.projection:
            raise ValueError(
                "projection_hidden_size is set but projection is False; "
                "set projection=True to train through the MLP, or leave projection_hidden_size out"
            )
        return self


class PTuning(Method):
    """P-tuning: virtual tokens in front of the input, produced by a small trainable prompt
    encoder (an MLP or LSTM) from learned embeddings; after training, the adapter stores the
    encoder's output, so it loads as plain virtual tokens.

    Not mergeable: the virtual tokens are extra inputs, not a change to the weights.

    Example:
        >>> import tunekit as tk
        >>> tk.PTuning(encoder="lstm").encoder_layers
        2
    """

    summary: ClassVar[str] = "virtual tokens produced by a trained prompt encoder"
    family: ClassVar[str] = "prompt"
    mergeable: ClassVar[bool] = False
    not_mergeable_because: ClassVar[str] = _NOT_MERGEABLE
    objectives: ClassVar[frozenset[str] | None] = _PROMPT_OBJECTIVES
    default_learning_rate: ClassVar[float] = 1e-3

    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="How many learned tokens go before the input.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="Prompt encoder: 'mlp' (recommended) or 'lstm'.")
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of the prompt encoder; None means the model's hidden size."
    )
    encoder_layers: int = Field(
        2, ge=1, le=8, description="Layers of the LSTM encoder (encoder='lstm' only; the MLP has a fixed shape)."
    )
    encoder_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout between the LSTM encoder's layers (encoder='lstm' only)."
    )

    _aliases: ClassVar[dict[str, str]] = {
        "encoder_reparameterization_type": "encoder",
        "encoder_num_layers": "encoder_layers",
        "n_tokens": "num_virtual_tokens",
        "virtual_tokens": "num_virtual_tokens",
    }

    _n = field_validator("num_virtual_tokens", mode="before")(lambda cls, v: _num_virtual_tokens(v))

    @model_validator(mode="after")
    def _lstm_only(self) -> PTuning:
        # peft ignores these two for the MLP encoder; a silently ignored option is a bug report waiting.
        if self.encoder == "mlp" and (self.encoder_layers != 2 or self.encoder_dropout != 0.0):
            raise ValueError(
                "encoder_layers and encoder_dropout apply to the LSTM encoder only; "
                "set encoder='lstm', or leave them at their defaults with the MLP encoder"
            )
        return self
