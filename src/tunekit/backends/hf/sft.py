"""trl's SFTTrainer on the fast path (:mod:`.fastpath`): the packed collator, a loss-only step, Liger.

The trainer's step computes the loss and nothing else: through trl's chunked LM head (which never
materialises the full logits) where :func:`~.fastpath.fused_loss_applies`, else the model's own loss,
and it counts real tokens on the CPU, in the collator, so no per-step metric syncs the device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from tunekit._torch import unwrap_peft
from tunekit.backends.hf.args import Setup, training_args
from tunekit.backends.hf.attention import VARLEN, attention_of, varlen_attention
from tunekit.backends.hf.checkpoints import STREAM_POSITION
from tunekit.backends.hf.fastpath import FastPath, choose, fused_loss_applies, pack_to_budget
from tunekit.backends.hf.vision import VisionCollator, is_vision_model
from tunekit.data.streaming import POSITION

__all__ = ["ROUTER_FIELDS", "fast_sft_trainer", "packed_collator", "release", "router_settings_kept", "sft_trainer"]

logger = logging.getLogger("tunekit")


class _PackedCollator:
    """trl's padding-free collator, plus the boundaries as ints and a CPU-side count of real tokens."""

    def __init__(self, pad_token_id: int, packing: bool) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.packing = packing
        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=packing)
        self.tokens = 0  # real tokens of the training batches collated, read by tokens_seen()

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        position = None
        if examples and POSITION in examples[0]:  # a stream's: where it stood at the batch's last sequence
            position = tuple(int(x) for x in examples[-1][POSITION])
            examples = [{k: v for k, v in ex.items() if k != POSITION} for ex in examples]
        batch = self.inner(examples)
        if position is not None:
            batch[STREAM_POSITION] = position  # read by the trainer as it trains the batch (checkpoints.py)
        if self.packing:
            batch["tunekit_bounds"] = tuple(int(x) for x in batch["cu_seq_lens_q"].tolist())
            real = int(batch["input_ids"].shape[1])
        else:
            real = int(batch["attention_mask"].sum())
        batch["tunekit_real_tokens"] = real
        return batch


def packed_collator(tokenizer: Any, path: FastPath) -> _PackedCollator:
    return _PackedCollator(tokenizer.pad_token_id, path.packing)


def _collator(setup: Setup, path: FastPath) -> Any:
    """The processor's collation for rows with images (pixel values, image grids), else the packed collator."""
    found = [getattr(d, "tunekit_vision", None) for d in (setup.train_dataset, setup.eval_dataset)]
    sources = [s for s in found if s is not None]
    if sources:
        return VisionCollator(sources, setup.tokenizer.pad_token_id)
    return packed_collator(setup.tokenizer, path)


def fast_sft_trainer(base: Any, *, fused_head: bool) -> Any:
    """A subclass of trl's SFTTrainer ``base`` whose step computes the loss and nothing else.

    ``fused_head``: the loss through trl's chunked LM head (no full logits); otherwise the model's
    own loss (heads peft wraps, AdaLoRA's regulariser: see fastpath.fused_loss_applies).
    """
    import torch
    from transformers import Trainer

    class FastSFTTrainer(base):  # type: ignore[misc,valid-type]
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            real = inputs.pop("tunekit_real_tokens", 0)
            if model.training:
                self._total_train_tokens += int(real)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]  # logged, as trl does
            inputs["use_cache"] = False
            # self.model, not model: under DDP ``model`` is the wrapper, which has no config, and the boundaries
            # dropped here would be read back from the device in every layer.
            if attention_of(self.model) != VARLEN:  # the boundaries are for tunekit's attention only
                inputs.pop("tunekit_bounds", None)
            if not fused_head:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs, fused_lm_head=True)
            count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return (loss, outputs) if return_outputs else loss

        def floating_point_ops(self, inputs: Any) -> int:
            # transformers walks every parameter each step to count them; the count does not change.
            if not hasattr(self, "_tunekit_params"):
                count = getattr(self.model, "num_parameters", None)
                self._tunekit_params = int(count(exclude_embeddings=True)) if count is not None else 0
            ids = inputs.get("input_ids")
            return 6 * (int(ids.numel()) if ids is not None else 0) * self._tunekit_params

        def _prepare_inputs(self, inputs: Any) -> Any:
            extra = {k: inputs.pop(k) for k in ("tunekit_bounds", "tunekit_real_tokens") if k in inputs}
            prepared = super()._prepare_inputs(inputs)
            prepared.update(extra)
            return prepared

    FastSFTTrainer.__name__ = f"Fast{base.__name__}"
    return FastSFTTrainer


def fused_loss_only(model: Any) -> None:
    """Re-install trl's fused LM head computing log-probabilities only (no entropy, no top-1)."""
    from trl.trainer.utils import add_fused_lm_head

    target: Any = unwrap_peft(model)
    target.__dict__.pop("forward", None)
    add_fused_lm_head(target, outputs=("log_probs",))


def apply_liger(model: Any) -> bool:
    """Liger's layer kernels (RMSNorm, SwiGLU, RoPE) on ``model`` in place; False when it has none for it."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    target = unwrap_peft(model)
    try:
        # Not its fused linear cross-entropy: it replaces the forward trl's chunked LM head patches.
        _apply_liger_kernel_to_instance(model=target, fused_linear_cross_entropy=False, cross_entropy=False)
    except Exception as e:  # an architecture Liger does not know: train without it
        logger.info("Liger kernels not applied: %s", e)
        return False
    return True


def sft_trainer(setup: Setup) -> Any:
    """trl's SFTTrainer on the fast path for ``setup``; undone by :func:`release`."""
    from trl import SFTConfig, SFTTrainer

    t = setup.training
    vision = is_vision_model(setup.model)
    fused_head = fused_loss_applies(setup.model) and not vision
    path = choose(setup.model, t, setup.device)
    if vision:
        # Packing is off for every vision-language family: their position ids (Qwen-VL's 3-D M-RoPE), image-token
        # attention (Gemma 3's bidirectional image blocks) and image tensors are per sequence, and transformers
        # computes them for a padded batch only. trl's chunked LM head and Liger patch text decoders only.
        path = FastPath(
            packing=False,
            attention=None,
            liger=False,
            compile=path.compile,
            reason="vision-language models train unpacked (their image positions and tensors are per sequence)",
        )
    if not path.packing and t.packing is True:
        logger.warning("packing is off: %s", path.reason)
    train_dataset = setup.train_dataset
    batch = t.batch_size
    if t.tokens_per_batch is not None and path.packing:
        if POSITION in (getattr(train_dataset, "column_names", None) or ()):
            # Packing reorders a window of sequences: no batch ends at one position of the stream, so a resumed run
            # reads the stream again up to its step (data.streaming).
            train_dataset = train_dataset.remove_columns(POSITION)
        train_dataset = pack_to_budget(train_dataset, t.tokens_per_batch)
        batch = 1  # one packed row of at most tokens_per_batch tokens per micro-batch
    common = {**training_args(setup), "per_device_train_batch_size": batch}
    if path.compile:
        common["torch_compile"] = True
    args = SFTConfig(
        **common,
        max_length=t.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},  # tunekit tokenised and masked the data itself
        remove_unused_columns=False,
        activation_offloading=t.activation_offload,  # trl's OffloadActivations around each training step
    )
    if path.liger:
        apply_liger(setup.model)
    cls = fast_sft_trainer(SFTTrainer, fused_head=fused_head)
    with router_settings_kept(setup.model):
        trainer = cls(
            model=setup.model,
            args=args,
            data_collator=_collator(setup, path),
            train_dataset=train_dataset,
            eval_dataset=setup.eval_dataset,
            processing_class=setup.tokenizer,
            callbacks=setup.callbacks,
        )
    if fused_head:
        fused_loss_only(setup.model)
    stack = contextlib.ExitStack()
    stack.enter_context(varlen_attention(setup.model, path.attention))
    trainer._tunekit_release = stack.close  # an attribute of tunekit's own subclass, read by release()
    return trainer


# What trl's SFTTrainer writes into a mixture-of-experts model's config when it is built: it turns
# ``output_router_logits`` (the router's load-balancing loss) on whenever the config declares a coefficient.
ROUTER_FIELDS = ("output_router_logits", "router_aux_loss_coef")


@contextlib.contextmanager
def router_settings_kept(model: Any) -> Iterator[None]:
    """Give the model's config its own router settings back once trl's SFTTrainer is built.

    tunekit decides the router loss from the model's own config (:func:`~.fastpath.fused_loss_applies`: the
    fused loss has none), and the trainer's step is tunekit's, so trl's switch only changed the config: the
    model's own loss then included the router loss, and merged exports carried ``output_router_logits: true``.
    """
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    configs = {id(c): c for c in (config, get_text() if callable(get_text) else None) if c is not None}.values()
    saved = [(c, name, getattr(c, name)) for c in configs for name in ROUTER_FIELDS if hasattr(c, name)]
    try:
        yield
    finally:
        for c, name, value in saved:
            setattr(c, name, value)


def release(trainer: Any) -> None:
    """Give the model back its own attention implementation once the trainer is done."""
    done = trainer.__dict__.pop("_tunekit_release", None)
    if done is not None:
        done()
