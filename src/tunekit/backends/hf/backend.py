"""The ``hf`` backend: transformers for models, peft for methods, trl for objectives."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tunekit._fs import check_writable
from tunekit._quiet import quiet
from tunekit.backends.hf.batch_size import train_fitting
from tunekit.backends.hf.callbacks import HookBridge
from tunekit.backends.hf.checkpoints import RunIdentity, data_fingerprint, install, mark_finished, run_config
from tunekit.backends.hf.distributed import check_distributed, gather_weights, join_group, rank_device, settle
from tunekit.backends.hf.fastpath import own_attention
from tunekit.backends.hf.guards import NonFiniteGuard
from tunekit.backends.hf.method_callbacks import method_callbacks
from tunekit.backends.hf.models import (
    check_head,
    head_kwargs,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_precision,
    torch_dtype,
)
from tunekit.backends.hf.peft_map import apply_method, count_parameters, load_adapter, merged_model, training_for
from tunekit.backends.hf.quantization import check_before_load, load_quantized, quantize_of
from tunekit.backends.hf.resume import check_identity, resolve_resume
from tunekit.backends.hf.rewards import score_items
from tunekit.backends.hf.safe_loading import check_weights
from tunekit.backends.hf.tracking import check_trackers, tracking_env
from tunekit.backends.hf.trainers import build_trainer, release_trainer, tokens_seen
from tunekit.backends.hf.untrained import fix_untrained_template_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.rows import TrainerRows
from tunekit.data.templates import PAD, ensure_template, render
from tunekit.distributed import shards_parameters, world
from tunekit.errors import ConfigError
from tunekit.hooks import HookDispatcher, RunContext
from tunekit.results import FitResult

__all__ = ["HFBackend", "Loaded"]


class Loaded:
    """What the backend keeps per tuner once loaded."""

    def __init__(self, model: Any, tokenizer: Any, template: Any, device: Any, precision: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.device = device
        self.precision = precision
        self.engine: Any = None  # the distributed engine of the last fit in several processes (tk.FSDP, ...)


@contextlib.contextmanager
def _own_rng(seed: int | None = None) -> Any:
    """Run with tunekit's own RNG state and give the caller's global state back afterwards."""
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if devices and world().distributed:  # each process owns one GPU: touching the others would open contexts there
        devices = [world().local_rank]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class HFBackend:
    name = "hf"

    def load(self, tuner: Any) -> Loaded:
        import torch

        training = tuner.training
        device = rank_device(training.device, resolve_device(training.device))  # cuda:LOCAL_RANK under torchrun
        precision = resolve_precision(training.precision, device)
        check_before_load(tuner.method, tuner.model_ref, device)  # e.g. QLoRA without CUDA: fail before loading
        check_distributed(tuner.method, training, device)  # e.g. DeepSpeed on CPU, QLoRA under FSDP
        # Adapters keep a frozen base in the compute dtype; full training keeps fp32 master weights.
        load_dtype = torch_dtype(precision) if (tuner.method.is_adapter and precision != "fp32") else torch.float32
        with quiet():
            ref = tuner.model_ref
            if isinstance(ref, (str, Path)) and quantize_of(tuner.method) is not None:
                with _own_rng(training.seed):  # a reward model's new score head is initialised here
                    model = load_quantized(
                        str(ref),
                        tuner.method,
                        compute_dtype=torch_dtype(precision),
                        device=device,
                        trust_remote_code=training.trust_remote_code,
                        **head_kwargs(tuner.objective_used),
                    )
            elif isinstance(ref, (str, Path)):
                with _own_rng(training.seed):  # a reward model's new score head is initialised here
                    model = load_model(
                        str(ref),
                        dtype=load_dtype,
                        trust_remote_code=training.trust_remote_code,
                        allow_pickle=training.allow_pickle,
                        **head_kwargs(tuner.objective_used),
                    )
            else:
                model = ref  # a transformers model object, used as it is
                check_head(model, tuner.objective_used)
            tok_ref = tuner.tokenizer_ref
            if tok_ref is None:
                tok_ref = str(ref) if isinstance(ref, (str, Path)) else getattr(model, "name_or_path", None)
            if not tok_ref:
                raise ConfigError(
                    "Tuner(model=<model object>): the model has no name_or_path to find its tokenizer; "
                    "pass tokenizer=... (a tokenizer object or a directory)"
                )
            if isinstance(tok_ref, (str, Path)):
                tokenizer = load_tokenizer(str(tok_ref), trust_remote_code=training.trust_remote_code)
            else:
                tokenizer = tok_ref
            template, added = ensure_template(tokenizer, tuner.template)
            new_ids = [tokenizer.convert_tokens_to_ids(t) for t in added if t != PAD]
            with _own_rng(training.seed):
                # New embedding rows are drawn from tunekit's seeded RNG, never the caller's global state.
                if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                    model.resize_token_embeddings(len(tokenizer))
                    model.config.vocab_size = len(tokenizer)
                if tuner.adapter_path is not None:
                    check_weights(tuner.adapter_path, allow_pickle=training.allow_pickle, what="adapter")
                    model = load_adapter(model, tuner.method, tuner.adapter_path, training=training)
                else:
                    # Template tokens the base model has but never trained train with those tunekit added.
                    untrained = fix_untrained_template_tokens(model, tokenizer, template.end_of_turn_id, tuner.method)
                    new_ids = sorted(set(new_ids) | set(untrained))
                    model = apply_method(model, tuner.method, new_ids, tokenizer=tokenizer, training=training)
            gen = getattr(model, "generation_config", None)
            if gen is not None:  # None for reward models (sequence classifiers), which do not generate
                gen.eos_token_id = sorted({template.end_of_turn_id, tokenizer.eos_token_id} - {None})
                gen.pad_token_id = tokenizer.pad_token_id
            model.config.pad_token_id = tokenizer.pad_token_id
            model.to(device)
        return Loaded(model, tokenizer, template, device, precision)

    def preflight(self, tuner: Any, *, resume: bool | str | Path) -> Path | None:
        """Checks that need nothing loaded (trackers installed, a checkpoint to resume from); returns the checkpoint."""
        check_trackers(tuner.training.report_to, tuner.output_dir)
        if tuner.output_dir is not None:
            check_writable(Path(tuner.output_dir), "Tuner(output_dir=...)")  # before training, not at the first save
        return resolve_resume(resume, tuner.output_dir, config=run_config(tuner), force=tuner.training.force_resume)

    def fit(
        self,
        tuner: Any,
        loaded: Loaded,
        train: Encoded | TrainerRows,
        eval_enc: Encoded | TrainerRows | None,
        *,
        hooks: HookDispatcher | None = None,
        resume_from: Path | None = None,
    ) -> FitResult:
        training = tuner.training
        if training.gradient_checkpointing == "auto":  # on only where plan() says the run would not fit without it
            from tunekit.backends.hf.planning import checkpointing_needed

            need = isinstance(train, Encoded) and checkpointing_needed(tuner, loaded.model, train)
            training = training.model_copy(update={"gradient_checkpointing": need})
        training = training_for(tuner.method, training)  # e.g. no gradient checkpointing for prefix tuning
        loaded.engine = training.distributed if world().distributed else None
        lr = training.learning_rate or tuner.method.default_learning_rate
        # The Tuner passes the dispatcher (hooks, context, hook_errors policy) and the checkpoint to resume from.
        hooks = hooks or HookDispatcher(
            list(tuner.hooks),
            RunContext(output_dir=tuner.output_dir, objective=tuner.objective_used.name, method=tuner.method.name),
        )
        ctx = hooks.ctx
        bridge = HookBridge(
            hooks, evaluate_at_end=eval_enc is not None, check_nonfinite=training.on_nonfinite == "error"
        )
        tuner._last_context = ctx
        # What a checkpoint records of this run, and what a resumed run must match (checkpoints.py).
        identity = RunIdentity(uuid.uuid4().hex, run_config(tuner), data_fingerprint(train))
        if resume_from is not None:
            identity.run_id = check_identity(resume_from, identity, force=training.force_resume)
        guard = NonFiniteGuard(
            training.on_nonfinite,
            sync_each_step=loaded.device.type == "cpu",
            check_grad_norm=loaded.precision != "fp16",
        )
        with contextlib.ExitStack() as stack:
            if tuner.output_dir is not None:
                out = Path(tuner.output_dir)
                out.mkdir(parents=True, exist_ok=True)
            else:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunekit-")))
            stack.enter_context(quiet())
            stack.enter_context(_own_rng())
            stack.enter_context(tracking_env(training.report_to, out))
            loaded.model.train()

            def build(t: Any) -> Any:
                trainer = build_trainer(
                    tuner.objective_used,
                    model=loaded.model,
                    tokenizer=loaded.tokenizer,
                    train_dataset=train.to_dataset(),
                    eval_dataset=eval_enc.to_dataset() if eval_enc is not None else None,
                    training=t,
                    output_dir=str(out),
                    precision=loaded.precision,
                    device=loaded.device,
                    learning_rate=lr,
                    callbacks=[bridge, *method_callbacks(tuner.method, loaded.model)],
                )
                return install(trainer, identity=identity, keep=t.keep_checkpoints, guard=guard)

            start = time.perf_counter()
            trainer, output = train_fitting(build, training, resume_from, lambda t: release_trainer(t, loaded.model))
            try:
                # A cancelled run, or one a failing hook stopped, ends at once: no final evaluation.
                finished = not (ctx.cancelled or ctx._hook_failed)  # the same on every process
                if finished and tuner.output_dir is not None and trainer.args.should_save:
                    mark_finished(out, identity.run_id, int(trainer.state.global_step))  # "auto" starts afresh
                if eval_enc is not None and finished:
                    eval_metrics = bridge.eval_at(trainer.state.global_step) or trainer.evaluate()
                else:
                    eval_metrics = {}
            finally:
                release_trainer(trainer, loaded.model)  # e.g. trl's reference adapter, its patched forward
            runtime = time.perf_counter() - start
            tokens = tokens_seen(trainer)
            loaded.model.eval()
        losses = [h["loss"] for h in bridge.history if "loss" in h]
        trainable, total = count_parameters(loaded.model)
        metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
        metrics["train_loss_mean"] = float(output.training_loss)
        metrics.update({k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float))})
        if training.on_nonfinite == "skip":
            metrics["nonfinite_skipped_steps"] = float(len(guard.skipped))
        steps = int(trainer.state.global_step)
        return FitResult(
            history=bridge.history,
            metrics=metrics,
            train_loss=float(losses[-1]) if losses else float(output.training_loss),
            eval_loss=float(eval_metrics["eval_loss"]) if "eval_loss" in eval_metrics else None,
            steps=steps,
            epochs=float(trainer.state.epoch or 0.0),
            runtime_s=runtime,
            tokens_per_s=tokens / runtime if runtime > 0 else 0.0,
            num_examples=len(train.rows),
            num_tokens=train.num_tokens,
            trainable_params=trainable,
            total_params=total,
            output_dir=Path(tuner.output_dir) if tuner.output_dir is not None else None,
            stopped_early=ctx.stop_requested,
            stop_reason=ctx.stop_reason,
            checkpoint=bridge.last_checkpoint if tuner.output_dir is not None else None,
            skipped_rows=sorted(r for r, _ in train.skipped),
            skipped_reasons=dict(sorted(train.skipped)),
        )

    def generate(self, loaded: Loaded, prompts: list[Any], *, chat: bool, options: dict[str, Any]) -> list[str]:
        import torch

        tok, model = loaded.tokenizer, loaded.model
        texts = []
        for p in prompts:
            if chat:
                msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
                texts.append(render(tok, msgs, add_generation_prompt=True))
            else:
                texts.append(p)
        opts = {"max_new_tokens": 256, "do_sample": False}
        if shards_parameters(loaded.engine):  # every process runs each forward until all are done
            opts["synced_gpus"] = True
        opts.update(options)
        if not opts.get("do_sample"):
            opts.pop("temperature", None)
            opts.pop("top_p", None)
        batch_size = int(opts.pop("batch_size", 16))
        was_training = model.training
        model.eval()
        out: list[str] = []
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            with quiet(), torch.no_grad(), own_attention(model):
                for i in range(0, len(texts), batch_size):
                    enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat)
                    enc = {k: v.to(loaded.device) for k, v in enc.items()}
                    gen = model.generate(
                        **enc,
                        eos_token_id=model.generation_config.eos_token_id,
                        pad_token_id=tok.pad_token_id,
                        **opts,
                    )
                    new = gen[:, enc["input_ids"].shape[1] :]
                    out += [s for s in tok.batch_decode(new, skip_special_tokens=True)]
        finally:
            tok.padding_side = old_side
            if was_training:
                model.train()
        return out

    def merge(self, loaded: Loaded, method: Any) -> Any:
        """A merged copy of the trained model (adapter folded into the base weights)."""
        with quiet():
            return merged_model(loaded.model, method)

    def score(self, loaded: Loaded, items: list[Any], *, max_length: int) -> list[float]:
        """One reward per item, from a reward model (a sequence classifier with one label)."""
        with quiet():
            return score_items(loaded.model, loaded.tokenizer, items, device=loaded.device, max_length=max_length)

    def gather_weights(self, loaded: Loaded, method: Any) -> dict[str, Any] | None:
        """Sharded weights (FSDP, ZeRO-3) gathered for a save; every process calls it (see Tuner.save)."""
        return gather_weights(loaded.model, loaded.engine, adapter=method.is_adapter)

    def join_processes(self, training: Any) -> None:
        """Under torchrun, make sure the processes' group exists (a save with no fit before it)."""
        join_group(training)

    def settle(self, error: BaseException | None, *, what: str) -> None:
        """Every process waits here until all reach it; an error on any one is raised on every one
        (several processes only; with one, ``error`` is raised if given)."""
        settle(error, what=what)

    def save(self, loaded: Loaded, path: Path, state_dict: dict[str, Any] | None = None) -> None:
        with quiet():
            if state_dict is not None:
                loaded.model.save_pretrained(path, state_dict=state_dict)
            else:
                loaded.model.save_pretrained(path)
            loaded.tokenizer.save_pretrained(path)
