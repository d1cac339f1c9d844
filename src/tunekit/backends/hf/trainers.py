"""Objectives to trl trainers: one dispatch table, one builder per objective.

SFT and CausalLM train on data tunekit tokenised itself (``input_ids`` / ``labels``). The other
objectives hand trl conversational rows (see :mod:`tunekit.data.rows`) and let it tokenise them
with the tokenizer's chat template, which is the template tunekit installed, so training and
``generate`` see the same text.

The reference model of DPO, KTO and (with ``beta > 0``) GRPO / RLOO: with an adapter, trl keeps
none (it evaluates the reference through the same model, with a frozen copy of the starting
adapter weights, which for a new adapter is exactly the base); with full fine-tuning, tunekit
passes a frozen copy of the in-memory model, because trl would otherwise reload the checkpoint
from disk, which is not what tunekit trains when it added template tokens or trained in memory.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tunekit._torch import unwrap_peft
from tunekit.backends.base import builder_for
from tunekit.backends.hf.args import Setup, trainer_data, training_args
from tunekit.backends.hf.optimizers import install_optimizer
from tunekit.backends.hf.rewards import resolve_rewards
from tunekit.backends.hf.sft import release, sft_trainer
from tunekit.data.rows import IMAGES
from tunekit.errors import IncompatibleError
from tunekit.objectives import DPO, GRPO, KTO, ORPO, RLOO, SFT, CausalLM, Objective, OnlineRL, RewardModeling
from tunekit.training import Training

__all__ = [
    "OFFLOADS_ACTIVATIONS",
    "TRAINERS",
    "build_trainer",
    "offloads_activations",
    "release_trainer",
    "tokens_seen",
]


def _is_peft(model: Any) -> bool:
    return unwrap_peft(model) is not model


def _head_bias_visible(model: Any) -> None:
    """Let trl's fused LM head read ``lm_head.bias`` through peft's trainable-tokens wrapper.

    Models without a chat template get tunekit's ChatML tokens, whose rows of ``lm_head`` train
    through peft's ``TrainableTokensWrapper``. trl's fused log-prob head reads ``lm_head.weight``
    (which the wrapper returns merged, trainable rows included) and ``lm_head.bias``, which the
    wrapper does not forward; heads of causal LMs have no bias, so say so on the wrapper.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or type(head).__name__ != "TrainableTokensWrapper":
        return
    original = getattr(head, "original_module", None)
    if getattr(original, "bias", None) is None:
        head.__dict__["bias"] = None


def _frozen_copy(model: Any) -> Any:
    """A frozen copy of the policy as it is now: the reference of full fine-tuning."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# --- supervised ---------------------------------------------------------------------------------


def _sft(setup: Setup) -> Any:
    # Padding-free batches, attention within each example, loss without per-step syncs (fastpath.py, sft.py).
    return sft_trainer(setup)


# --- reward model -------------------------------------------------------------------------------


def _reward(setup: Setup) -> Any:
    from trl import RewardConfig, RewardTrainer

    obj: RewardModeling = setup.objective
    args = RewardConfig(
        **training_args(setup),
        max_length=setup.training.max_length,
        center_rewards_coefficient=obj.center_rewards,
        activation_offloading=setup.training.activation_offload,
    )
    return RewardTrainer(
        model=setup.model,
        args=args,
        **trainer_data(setup),
    )


# --- offline preference -------------------------------------------------------------------------


def _dpo(setup: Setup) -> Any:
    obj: DPO = setup.objective
    if obj.loss == "simpo":
        return _simpo(setup)
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **training_args(setup),
        max_length=setup.training.max_length,
        beta=obj.beta,
        loss_type=[obj.loss],
        label_smoothing=obj.label_smoothing,
        activation_offloading=setup.training.activation_offload,
    )
    return DPOTrainer(
        model=setup.model,
        ref_model=None if _is_peft(setup.model) else _frozen_copy(setup.model),
        args=args,
        **_with_processor(setup, trainer_data(setup)),
    )


def _with_processor(setup: Setup, data: dict[str, Any]) -> dict[str, Any]:
    """Rows with images (an ``images`` column, :mod:`tunekit.data.rows`): trl's DPO trainer reads them with the
    model's processor (``DataCollatorForVisionPreference``: the prompt and its images through the processor, the
    answers through its tokenizer), which renders with the processor's chat template: tunekit's, the one ``generate``
    renders with."""
    columns = getattr(setup.train_dataset, "column_names", None) or []
    if setup.processor is None or IMAGES not in columns:
        return data
    setup.processor.chat_template = setup.tokenizer.chat_template
    return {**data, "processing_class": setup.processor}


def _simpo(setup: Setup) -> Any:
    # SimPO lives in trl's CPO trainer (loss_type="simpo" with no behaviour-cloning term).
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    obj: DPO = setup.objective
    args = CPOConfig(
        **training_args(setup),
        max_length=setup.training.max_length,
        beta=obj.beta,
        loss_type="simpo",
        cpo_alpha=0.0,
        simpo_gamma=obj.simpo_gamma,
        label_smoothing=obj.label_smoothing,
    )
    return CPOTrainer(
        model=setup.model,
        args=args,
        **trainer_data(setup),
    )


def _kto(setup: Setup) -> Any:
    from trl import KTOConfig, KTOTrainer

    obj: KTO = setup.objective
    args = KTOConfig(
        **training_args(setup),
        max_length=setup.training.max_length,
        beta=obj.beta,
        desirable_weight=obj.desirable_weight,
        undesirable_weight=obj.undesirable_weight,
        loss_type=obj.loss,
        activation_offloading=setup.training.activation_offload,
    )
    return KTOTrainer(
        model=setup.model,
        ref_model=None if _is_peft(setup.model) else _frozen_copy(setup.model),
        args=args,
        **trainer_data(setup),
    )


def _orpo(setup: Setup) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    obj: ORPO = setup.objective
    args = ORPOConfig(**training_args(setup), max_length=setup.training.max_length, beta=obj.beta)
    return ORPOTrainer(
        model=setup.model,
        args=args,
        **trainer_data(setup),
    )


# --- online RL ----------------------------------------------------------------------------------


def _check_group(setup: Setup) -> None:
    obj: OnlineRL = setup.objective
    t = setup.training
    per_step = t.batch_size * t.grad_accum
    if per_step % obj.num_generations:
        raise IncompatibleError(
            f"Training(batch_size={t.batch_size}, grad_accum={t.grad_accum}) with "
            f"{obj.name}(num_generations={obj.num_generations}): batch_size counts completions and "
            f"batch_size * grad_accum ({per_step}) must be a multiple of num_generations; use "
            f"batch_size={obj.num_generations * max(1, round(t.batch_size / obj.num_generations))} "
            f"or num_generations={_divisor(per_step, obj.num_generations)}"
        )
    if setup.eval_dataset is not None and t.batch_size % obj.num_generations:
        raise IncompatibleError(
            f"Training(batch_size={t.batch_size}) with {obj.name}(num_generations={obj.num_generations}): "
            "evaluation samples a whole group per prompt, so batch_size must be a multiple of num_generations"
        )


def _divisor(n: int, near: int) -> int:
    """The divisor of ``n`` (at least 2) closest to ``near``."""
    options = [d for d in range(2, n + 1) if n % d == 0] or [2]
    return min(options, key=lambda d: abs(d - near))


def _online_args(setup: Setup) -> dict[str, Any]:
    obj: OnlineRL = setup.objective
    return {
        **training_args(setup),
        "num_generations": obj.num_generations,
        "max_completion_length": obj.max_completion_length,
        "temperature": obj.temperature,
        "beta": obj.beta,
        "epsilon": obj.epsilon,
        "num_iterations": obj.num_iterations,
        "reward_weights": list(obj.reward_weights) if obj.reward_weights is not None else None,
        "remove_unused_columns": False,  # the prompt rows' other columns go to the reward functions
        "log_completions": False,
    }


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _reference_from_memory(module: Any, setup: Setup) -> Iterator[None]:
    """GRPO and RLOO build their reference by reloading the policy's checkpoint from disk, and take
    no ``ref_model`` argument; for full fine-tuning with a KL term, hand them the in-memory copy."""
    obj: OnlineRL = setup.objective
    if obj.beta == 0 or _is_peft(setup.model):
        yield
        return
    ref = _frozen_copy(setup.model)
    with _PATCH_LOCK:  # a module attribute: one trainer at a time builds through the patch
        original = module.create_model_from_path
        module.create_model_from_path = lambda *a, **k: ref
        try:
            yield
        finally:
            module.create_model_from_path = original


def _grpo(setup: Setup) -> Any:
    import trl.trainer.grpo_trainer as grpo_module
    from trl import GRPOConfig, GRPOTrainer

    obj: GRPO = setup.objective
    _check_group(setup)
    rewards, reward_tokenizers = resolve_rewards(obj.reward, setup)
    args = GRPOConfig(**_online_args(setup), loss_type=obj.loss, scale_rewards=obj.scale_rewards)
    with _reference_from_memory(grpo_module, setup):
        return GRPOTrainer(
            model=setup.model,
            reward_funcs=rewards,
            args=args,
            **trainer_data(setup),
            reward_processing_classes=reward_tokenizers,
        )


def _rloo(setup: Setup) -> Any:
    import trl.trainer.rloo_trainer as rloo_module
    from trl import RLOOConfig, RLOOTrainer

    obj: RLOO = setup.objective
    _check_group(setup)
    rewards, reward_tokenizers = resolve_rewards(obj.reward, setup)
    args = RLOOConfig(**_online_args(setup), normalize_advantages=obj.normalize_advantages)
    with _reference_from_memory(rloo_module, setup):
        return RLOOTrainer(
            model=setup.model,
            reward_funcs=rewards,
            args=args,
            **trainer_data(setup),
            reward_processing_classes=reward_tokenizers,
        )


# Objective class -> builder of its trl trainer.
TRAINERS: dict[type[Objective], Callable[[Setup], Any]] = {
    SFT: _sft,
    CausalLM: _sft,
    RewardModeling: _reward,
    DPO: _dpo,
    KTO: _kto,
    ORPO: _orpo,
    GRPO: _grpo,
    RLOO: _rloo,
}


# The objectives whose trl trainer offloads activations (its config's ``activation_offloading``); DPO's SimPO loss
# trains through trl's CPO trainer, which does not.
OFFLOADS_ACTIVATIONS: tuple[type[Objective], ...] = (SFT, CausalLM, RewardModeling, DPO, KTO)


def offloads_activations(objective: Objective) -> bool:
    """Whether ``Training(activation_offload=True)`` takes effect for ``objective``."""
    simpo = isinstance(objective, DPO) and objective.loss == "simpo"
    return isinstance(objective, OFFLOADS_ACTIVATIONS) and not simpo


def build_trainer(
    objective: Objective,
    *,
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any,
    training: Training,
    output_dir: str,
    precision: str,
    device: Any,
    learning_rate: float,
    callbacks: list[Any],
    processor: Any = None,
) -> Any:
    """The trl trainer for ``objective``, configured from ``training`` (``processor``: a vision-language model's)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    build = builder_for(TRAINERS, objective, backend="hf")
    setup = Setup(
        objective, model, tokenizer, train_dataset, eval_dataset, training, output_dir, precision, device,
        learning_rate, callbacks, processor,
    )  # fmt: skip
    if build is not _sft:
        _head_bias_visible(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hooks_before = _hook_ids(head)
    config_before = _trainer_written_config(model)
    trainer = build(setup)
    # trl's activation offloading hooks the output head for good; release_trainer removes what it added.
    trainer.__dict__["_tunekit_head_hooks"] = (head, hooks_before)
    trainer.__dict__["_tunekit_config"] = config_before
    install_optimizer(trainer, training, learning_rate)  # GaLore, APOLLO, Muon: tunekit builds them
    # The library never prints: progress and logs reach the application through hooks.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _trainer_written_config(model: Any) -> list[tuple[Any, str, Any]]:
    """The config fields transformers' Trainer sets for training, as the model has them: ``use_cache`` (off while
    training). release_trainer gives them back, so that saves and merged exports carry the model's own config."""
    config: Any = getattr(model, "config", None)
    return [(config, "use_cache", config.use_cache)] if hasattr(config, "use_cache") else []


def _hook_ids(module: Any) -> tuple[set[int], set[int]]:
    if module is None:
        return set(), set()
    return set(module._forward_pre_hooks), set(module._forward_hooks)


def tokens_seen(trainer: Any) -> int:
    """Real (non-pad) tokens the trainer processed, however it counts them."""
    counted = int(getattr(trainer, "_total_train_tokens", 0) or 0)
    return max(counted, int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0))


def release_trainer(trainer: Any, model: Any) -> None:
    """Undo what trl left on the model once training and evaluation are done.

    - The ``"ref"`` adapter (a frozen copy of the starting adapter) would otherwise stay in memory
      and be written by ``save``.
    - trl patches the model's ``forward`` (a fused LM head) as an instance attribute that closes
      over this model object; a later ``copy.deepcopy`` (the next run's reference) would call the
      original model through it.
    - transformers' Trainer turns the config's ``use_cache`` off; saves and exports carried it.
    """
    release(trainer)  # the model's own attention implementation back
    for config, name, value in getattr(trainer, "__dict__", {}).pop("_tunekit_config", []):
        setattr(config, name, value)  # use_cache: a merged export would otherwise load with its KV cache off
    head, (pre, post) = getattr(trainer, "__dict__", {}).pop("_tunekit_head_hooks", (None, (set(), set())))
    if head is not None:  # the forward hooks trl's activation offloading put on the output head
        for key in set(head._forward_pre_hooks) - pre:
            head._forward_pre_hooks.pop(key, None)
        for key in set(head._forward_hooks) - post:
            head._forward_hooks.pop(key, None)
            head._forward_hooks_always_called.pop(key, None)
    if _is_peft(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
    targets = [model]
    if _is_peft(model):
        targets.append(unwrap_peft(model))
    for m in targets:
        m.__dict__.pop("forward", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head).__name__ == "TrainableTokensWrapper":
        head.__dict__.pop("bias", None)
