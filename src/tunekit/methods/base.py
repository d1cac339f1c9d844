"""The Method base: which parameters train. Pure configuration, no torch or peft import."""

from __future__ import annotations

from typing import Any, ClassVar

from tunekit._config import Config

__all__ = ["Method", "registry"]

_REGISTRY: dict[str, type[Method]] = {}


class Method(Config):
    """Base class of methods. Subclasses declare their capabilities as class variables.

    Capabilities (read by the backend and by ``tunekit methods``):

    - ``mergeable``: the trained weights can be merged into the base weights.
    - ``supports_gradient_checkpointing``: works with activation recomputation.
    - ``needs_step_callback``: the backend must call it every step (AdaLoRA's budget).
    - ``objectives``: names of the objectives it supports (``None`` means all).
    - ``default_learning_rate``: used when ``Training.learning_rate`` is None.
    - ``is_adapter``: saves as a small adapter beside a base model, rather than a whole model.
    - ``family``: a short grouping for tables ("low-rank", "prompt", "scaling", ...).
    - ``summary``: one line saying what trains, for tables.
    - ``not_mergeable_because``: for methods that cannot merge, the reason, in the user's words.
    - ``trains_token_rows``: can train chosen rows of the embedding matrices alone (LoRA and AdaLoRA
      through peft's ``trainable_token_indices``; Full trains every weight), which template tokens
      the base model never trained need.

    Example:
        >>> import tunekit as tk
        >>> isinstance(tk.LoRA(), tk.Method), tk.LoRA.mergeable, tk.PromptTuning.mergeable
        (True, True, False)
        >>> tk.PromptTuning().supports("DPO")
        False
    """

    mergeable: ClassVar[bool] = True
    supports_gradient_checkpointing: ClassVar[bool] = True
    needs_step_callback: ClassVar[bool] = False
    objectives: ClassVar[frozenset[str] | None] = None
    default_learning_rate: ClassVar[float] = 2e-4
    is_adapter: ClassVar[bool] = True
    family: ClassVar[str] = "other"
    summary: ClassVar[str] = ""
    not_mergeable_because: ClassVar[str] = ""
    trains_token_rows: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only tunekit's own methods are registered: a user's subclass named like one of ours must
        # not replace the entry that tk.load() reads. Names starting with "_" are shared bases.
        if cls.__module__.startswith("tunekit.methods.") and not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def quantization(self) -> str | None:
        """How the frozen base is quantized (``"nf4"``, ``"int8"``: QLoRA, ``LoRA(quantize=...)``), or None."""
        q = getattr(self, "quantize", None)
        return q if isinstance(q, str) else None

    def record(self) -> dict[str, Any]:
        """``{"name": ..., "options": {...}}`` (JSON): how saves, checkpoints and exports record the method."""
        return {"name": self.name, "options": self.model_dump(mode="json")}

    def supports(self, objective_name: str) -> bool:
        return self.objectives is None or objective_name in self.objectives

    def describe(self) -> dict[str, object]:
        """Capabilities as a plain dict, for tables and manifests."""
        return type(self).capabilities()

    @classmethod
    def capabilities(cls) -> dict[str, object]:
        """The class's capabilities as a plain dict (what ``tunekit methods`` lists)."""
        return {
            "mergeable": cls.mergeable,
            "gradient_checkpointing": cls.supports_gradient_checkpointing,
            "needs_step_callback": cls.needs_step_callback,
            "objectives": sorted(cls.objectives) if cls.objectives is not None else "all",
            "adapter": cls.is_adapter,
        }


def registry() -> dict[str, type[Method]]:
    """Every method class by name (a copy), in the order they are defined."""
    return dict(_REGISTRY)
