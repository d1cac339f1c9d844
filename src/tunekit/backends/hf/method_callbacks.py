"""Trainer callbacks that methods need every step (declared by ``Method.needs_step_callback``)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from tunekit.methods import AdaLoRA, Method

__all__ = ["AdaLoraStep", "method_callbacks"]


class AdaLoraStep(TrainerCallback):  # type: ignore[misc]
    """AdaLoRA's rank budget: schedule placed on the run's real length, update after every optimizer step.

    peft leaves both to the training loop (``update_and_allocate`` "after ``optimizer.step()`` and
    before ``zero_grad()``"), which transformers' ``on_optimizer_step`` is exactly.
    """

    def __init__(self, method: AdaLoRA, model: Any) -> None:
        self.method = method
        self.model = model

    def _config(self) -> Any:
        return self.model.peft_config[self.model.active_adapter]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        total = max(int(state.max_steps), 1)
        tinit = int(self.method.warmup_share * total)
        tfinal = int(self.method.final_share * total)
        if tinit >= total - tfinal:  # too few steps for the shares: start pruning at once
            tinit, tfinal = 0, min(tfinal, total - 1)
        config = self._config()
        # peft's RankAllocator reads this same config object, so the schedule takes effect at once.
        config.total_step, config.tinit, config.tfinal = total, tinit, tfinal

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # global_step is incremented after this event; peft counts steps from 1 to total_step.
        self.model.base_model.update_and_allocate(int(state.global_step) + 1)


def method_callbacks(method: Method, model: Any) -> list[Any]:
    """The callbacks ``method`` needs during training (none for most methods)."""
    if not method.needs_step_callback:
        return []
    if isinstance(method, AdaLoRA):
        return [AdaLoraStep(method, model)]
    raise NotImplementedError(f"{method.name} declares needs_step_callback but the hf backend has no callback for it")
