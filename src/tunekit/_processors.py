"""Vision-language processors without their video processor, for the engine, export and the tiny test models.

transformers builds a family's video processor (Qwen-VL, SmolVLM) with torchvision only, so without torchvision a
processor that has one does not load at all; nor does one saved without it (no ``video_preprocessor_config.json``).
tunekit trains on images only: :func:`load_processor` loads such a processor without its video processor
(:func:`image_only`), which is what the engine loads, what export reloads, and what ``tunekit.testing`` writes and
reads. transformers is imported inside the functions, so ``import tunekit`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["ProcessorLoadError", "image_only", "load_processor", "video_processor_class"]


class ProcessorLoadError(OSError):
    """Neither ``AutoProcessor`` nor the processor without its video processor loaded; the message has both
    reasons (an ``OSError``, as transformers' own loading errors)."""


def image_only(processor_class: type) -> type:
    """``processor_class`` without its video processor (a subclass of the same name, so it saves as the family's
    own): what transformers can build when torchvision, which video processors need, is not installed.

    Example:
        >>> import transformers
        >>> from tunekit.testing.vision import image_only
        >>> image_only(transformers.Qwen2VLProcessor).get_attributes()
        ['image_processor', 'tokenizer']
    """

    # transformers reads the parameter names of __init__ (its code object, not a signature) to tell the
    # sub-processors and which saved settings (the chat template, image_seq_len) the processor takes.
    def __init__(
        self: Any,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        image_seq_len: int | None = None,
        **kwargs: Any,
    ) -> None:
        if image_seq_len is not None:
            kwargs["image_seq_len"] = image_seq_len
        # SmolVLM's __init__ requires a video processor argument: None here.
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)  # type: ignore[misc]
        # SmolVLM's apply_chat_template reads the video processor's frame defaults even for images.
        self.video_processor = SimpleNamespace(num_frames=None, fps=None)

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


def video_processor_class(ref: str | Path, model_type: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """The processor class of the model at ``ref`` (of the family ``model_type``, else the one its config names)
    when that class has a video processor; None otherwise, or when the family cannot be told."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    if model_type is None:
        try:
            model_type = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code).model_type
        except (OSError, ValueError):
            return None
    name = PROCESSOR_MAPPING_NAMES.get(model_type or "")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return cls if cls is not None and "video_processor" in cls.get_attributes() else None


def load_processor(ref: str | Path, *, model_type: str | None = None, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained(ref)``; where that fails and the family's processor has a video processor
    (:func:`video_processor_class`), the processor without it (:func:`image_only`). Images work the same.

    Raises ``AutoProcessor``'s own error where the family has no video processor to leave out, and
    :class:`ProcessorLoadError` (both reasons) where the processor without it does not load either.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError) as e:
        # Without torchvision a family's video processor cannot be built (ImportError), and a processor saved
        # without one has no video_preprocessor_config.json (OSError): load it without its video processor.
        cls = video_processor_class(ref, model_type, trust_remote_code=trust_remote_code)
        if cls is None:
            raise
        loader: Any = image_only(cls)
        try:
            return loader.from_pretrained(ref, trust_remote_code=trust_remote_code)
        except (ImportError, OSError, ValueError, TypeError) as e2:
            raise ProcessorLoadError(f"{e}; without its video processor: {e2}") from e2
