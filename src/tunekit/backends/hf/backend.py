"""The ``hf`` backend: transformers for models, peft for methods, trl for objectives.

:class:`HFBackend` implements :class:`tunekit.backends.base.Backend`; each method is thin orchestration
of the modules beside it (models, peft_map, trainers, checkpoints, planning, processes).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

from tunekit._fs import check_writable
from tunekit._quiet import quiet
from tunekit._torch import count_parameters, torch_dtype, unwrap_peft
from tunekit.backends.base import Backend, LoadedModel, RunSpec, VisionRows
from tunekit.backends.hf import models
from tunekit.backends.hf.batch_size import train_fitting
from tunekit.backends.hf.callbacks import HookBridge
from tunekit.backends.hf.checkpoints import RunIdentity, data_fingerprint, install, mark_finished, run_config
from tunekit.backends.hf.generation import generate_replies, loglikelihood, prompt_length, stream_reply
from tunekit.backends.hf.guards import NonFiniteGuard
from tunekit.backends.hf.method_callbacks import method_callbacks
from tunekit.backends.hf.models import Loaded, own_rng
from tunekit.backends.hf.optimizers import check_optimizer
from tunekit.backends.hf.peft_map import merged_model, training_for
from tunekit.backends.hf.planning import checkpointing_needed, make_plan
from tunekit.backends.hf.processes import gather_weights, join_group, settle
from tunekit.backends.hf.resume import check_identity, resolve_resume
from tunekit.backends.hf.rewards import score_items
from tunekit.backends.hf.safe_loading import check_weights
from tunekit.backends.hf.tracking import check_trackers, tracking_env
from tunekit.backends.hf.trainers import build_trainer, offloads_activations, release_trainer, tokens_seen
from tunekit.backends.hf.vision import VisionEncoded, encode_vision
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.replies import Reply
from tunekit.data.rows import TrainerRows
from tunekit.data.streaming import StreamedEncoded
from tunekit.data.templates import ensure_template
from tunekit.distributed import world
from tunekit.errors import IncompatibleError
from tunekit.hooks import HookDispatcher
from tunekit.methods import Method
from tunekit.plan import Plan
from tunekit.results import FitResult
from tunekit.save_format import MANIFEST
from tunekit.training import Training

__all__ = ["HFBackend", "Loaded", "check_vision_model", "encode_images", "model_name"]

logger = logging.getLogger("tunekit")


def _hf(loaded: LoadedModel) -> Loaded:
    """The backend's own record of a model it loaded (it keeps the distributed engine beside the model)."""
    if not isinstance(loaded, Loaded):
        raise TypeError(f"the hf backend was handed a model another backend loaded ({type(loaded).__name__})")
    return loaded


class HFBackend:
    """transformers + peft + trl behind the :class:`~tunekit.backends.base.Backend` protocol."""

    name = "hf"

    def load(self, spec: RunSpec) -> Loaded:
        return models.load(spec)

    def load_base(self, spec: RunSpec, *, precision: str) -> Any:
        if not isinstance(spec.model_ref, (str, Path)):
            raise IncompatibleError(
                "the base model was given as a model object; loading it again needs its hub id or directory"
            )
        training = spec.training
        # A vision-language model loads with its image-text-to-text class (a reward model's score head is not
        # reloaded here: its exports are of the trained model).
        kind = {} if models.head_kwargs(spec.objective) else models.model_class_kwargs(spec)
        with quiet():
            return models.load_model(
                str(spec.model_ref),
                dtype=torch_dtype(precision),
                trust_remote_code=training.trust_remote_code,
                allow_pickle=training.allow_pickle,
                **kind,
            )

    def preflight(self, spec: RunSpec, *, resume: bool | str | Path) -> Path | None:
        """Checks that need nothing loaded (trackers installed, a checkpoint to resume from); returns the checkpoint."""
        check_trackers(spec.training.report_to, spec.output_dir)
        device = models.resolve_device(spec.training.device)
        check_optimizer(spec.training, device, spec.method)  # its package and device, before any weights load
        check_offload(spec, device)
        if spec.output_dir is not None:
            check_writable(Path(spec.output_dir), "Tuner(output_dir=...)")  # before training, not at the first save
        return resolve_resume(resume, spec.output_dir, config=run_config(spec), force=spec.training.force_resume)

    def plan(
        self,
        spec: RunSpec,
        train: NormalisedData,
        *,
        loaded: LoadedModel | None,
        load: Callable[[], LoadedModel],
        device_memory: int | None = None,
    ) -> Plan:
        # A model object is in memory already: plan on the caller's own model then (loaded once, kept for fit);
        # otherwise build it on the meta device (a QLoRA base as its quantized skeleton, nothing loaded).
        if loaded is None and not isinstance(spec.model_ref, (str, Path)):
            loaded = load()
        return make_plan(spec, train, loaded, device_memory=device_memory)

    def fit(
        self,
        spec: RunSpec,
        loaded: LoadedModel,
        train: Encoded | TrainerRows | VisionRows,
        evaluation: Encoded | TrainerRows | VisionRows | None,
        *,
        dispatcher: HookDispatcher,
        resume_from: Path | None,
    ) -> FitResult:
        hf = _hf(loaded)
        training = spec.training
        data = encode_images(spec, hf, train)  # rows with images: encoded here, with the model's processor
        eval_data = encode_images(spec, hf, evaluation) if evaluation is not None else None
        if training.gradient_checkpointing == "auto":  # on only where plan() says the run would not fit without it
            need = isinstance(data, Encoded) and checkpointing_needed(spec, hf.model, data)
            training = training.model_copy(update={"gradient_checkpointing": need})
        training = training_for(spec.method, training)  # e.g. no gradient checkpointing for prefix tuning
        hf.engine = training.distributed if world().distributed else None
        lr = training.learning_rate or spec.method.default_learning_rate
        ctx, control = dispatcher.ctx, dispatcher.control
        bridge = HookBridge(
            dispatcher, evaluate_at_end=eval_data is not None, check_nonfinite=training.on_nonfinite == "error"
        )
        # What a checkpoint records of this run, and what a resumed run must match (checkpoints.py).
        identity = RunIdentity(uuid.uuid4().hex, run_config(spec), data_fingerprint(data))
        if resume_from is not None:
            identity.run_id = check_identity(resume_from, identity, force=training.force_resume)
        stream = data if isinstance(data, StreamedEncoded) else None  # its checkpoints record where it stood
        # A stream that starts reading where the checkpoint's stood: the trainer must not skip batches itself.
        seeks = stream is not None and resume_from is not None and stream.resume(resume_from)
        guard = NonFiniteGuard(
            training.on_nonfinite,
            sync_each_step=hf.device.type == "cpu",
            check_grad_norm=hf.precision != "fp16",
        )
        with contextlib.ExitStack() as stack:
            if spec.output_dir is not None:
                out = Path(spec.output_dir)
                out.mkdir(parents=True, exist_ok=True)
            else:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunekit-")))
            stack.enter_context(quiet())
            stack.enter_context(own_rng())
            stack.enter_context(tracking_env(training.report_to, out))
            hf.model.train()

            def build(t: Training) -> Any:
                trainer = build_trainer(
                    spec.objective,
                    model=hf.model,
                    tokenizer=hf.tokenizer,
                    train_dataset=data.to_dataset(),
                    eval_dataset=eval_data.to_dataset() if eval_data is not None else None,
                    training=t,
                    output_dir=str(out),
                    precision=hf.precision,
                    device=hf.device,
                    learning_rate=lr,
                    callbacks=[bridge, *method_callbacks(spec.method, hf.model)],
                    processor=hf.processor,
                )
                trainer.args.ignore_data_skip = seeks
                return install(
                    trainer, identity=identity, keep=t.keep_checkpoints, guard=guard, stream=stream, seeks=seeks
                )

            start = time.perf_counter()
            trainer, output = train_fitting(build, training, resume_from, lambda t: release_trainer(t, hf.model))
            try:
                # A cancelled run, or one a failing hook stopped, ends at once: no final evaluation.
                finished = control.finished  # the same on every process
                if finished and spec.output_dir is not None and trainer.args.should_save:
                    mark_finished(out, identity.run_id, int(trainer.state.global_step))  # "auto" starts afresh
                if eval_data is not None and finished:
                    eval_metrics = bridge.eval_at(trainer.state.global_step) or trainer.evaluate()
                else:
                    eval_metrics = {}
            finally:
                release_trainer(trainer, hf.model)  # e.g. trl's reference adapter, its patched forward
            runtime = time.perf_counter() - start
            tokens = tokens_seen(trainer)
            hf.model.eval()
        losses = [h["loss"] for h in bridge.history if "loss" in h]
        trainable, total = count_parameters(hf.model)
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
            num_examples=len(data.rows),
            num_tokens=data.num_tokens,
            trainable_params=trainable,
            total_params=total,
            output_dir=Path(spec.output_dir) if spec.output_dir is not None else None,
            stopped_early=ctx.stop_requested,
            stop_reason=ctx.stop_reason,
            checkpoint=bridge.last_checkpoint if spec.output_dir is not None else None,
            skipped_rows=sorted(r for r, _ in data.skipped),
            skipped_reasons=dict(sorted(data.skipped)),
        )

    def generate(self, loaded: LoadedModel, prompts: list[Any], *, chat: bool, options: dict[str, Any]) -> list[str]:
        return generate_replies(_hf(loaded), prompts, chat=chat, options=options)

    def stream(
        self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]
    ) -> Generator[str, None, Reply]:
        """Generation on a background thread (:func:`~.generation.stream_reply`); returns the whole reply."""
        return (yield from stream_reply(_hf(loaded), prompt, chat=chat, options=options))

    def prompt_length(self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]) -> int:
        return prompt_length(_hf(loaded), prompt, chat=chat, options=options)

    def context_length(self, loaded: LoadedModel) -> int | None:
        config = getattr(_hf(loaded).model, "config", None)
        config = getattr(config, "get_text_config", lambda: config)()
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def add_adapter(self, loaded: LoadedModel, name: str, spec: RunSpec) -> None:
        from peft import PeftConfig

        hf = _hf(loaded)
        model, path = hf.model, spec.adapter_path
        if path is None or not hasattr(model, "load_adapter") or not hasattr(model, "peft_config"):
            raise IncompatibleError(f"add_adapter({name!r}): only an adapter save goes beside this tuner's adapter")
        own = model.peft_config["default"]
        other = PeftConfig.from_pretrained(str(path))
        if own.is_prompt_learning or other.is_prompt_learning or other.peft_type != own.peft_type:
            raise IncompatibleError(
                f"add_adapter({name!r}): {path} is a {other.peft_type.value} adapter and this tuner's is "
                f"{own.peft_type.value}; peft keeps several adapters on one model only when they are of one "
                "low-rank kind (LoRA with LoRA, LoHa with LoHa, ...), never prompt-learning ones: load it on its own"
            )
        theirs = models.load_tokenizer(str(spec.tokenizer_ref), trust_remote_code=spec.training.trust_remote_code)
        ensure_template(theirs, spec.template, spec.template_options)
        tok = hf.tokenizer
        if theirs.get_vocab() != tok.get_vocab() or theirs.chat_template != tok.chat_template:
            what = "vocabulary" if theirs.get_vocab() != tok.get_vocab() else "chat template"
            raise IncompatibleError(
                f"add_adapter({name!r}): {path} was trained with another {what} than this tuner's adapter; "
                "it reads prompts differently, so it cannot share this model: load it on its own"
            )
        check_weights(path, allow_pickle=spec.training.allow_pickle, what="adapter")
        with quiet():
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        model.to(hf.device)

    @contextlib.contextmanager
    def adapter(self, loaded: LoadedModel, name: str) -> Iterator[None]:
        model = _hf(loaded).model
        if name == "base":
            if not hasattr(model, "disable_adapter"):
                raise IncompatibleError("adapter='base': this model has no adapter to turn off")
            with model.disable_adapter():
                yield
            return
        before = getattr(model, "active_adapter", "default")
        if name == before:
            yield
            return
        model.set_adapter(name)
        try:
            yield
        finally:
            model.set_adapter(before)

    def loglikelihood(
        self, loaded: LoadedModel, requests: list[tuple[Any, str]], *, chat: bool, batch_size: int
    ) -> list[tuple[float, int]]:
        """Summed log-probability and count of each continuation's tokens after its prompt (right padding)."""
        return loglikelihood(_hf(loaded), requests, chat=chat, batch_size=batch_size)

    @contextlib.contextmanager
    def baseline(self, spec: RunSpec, loaded: LoadedModel) -> Iterator[LoadedModel]:
        """The base model: the adapter disabled for adapter methods, else the base reloaded (Full, Freeze)."""
        hf = _hf(loaded)
        model = hf.model
        if spec.method.is_adapter:
            if not hasattr(model, "disable_adapter"):
                raise IncompatibleError(f"the {spec.method.name} adapter cannot be disabled on this model")
            with model.disable_adapter():
                yield hf
            return
        ref = spec.model_ref
        if isinstance(ref, (str, Path)) and (Path(ref) / MANIFEST).is_file():
            raise IncompatibleError(
                f"baseline=True: this tuner was loaded from a whole-model save ({spec.method.name}), which does not "
                "keep the model it was trained from; evaluate the base model with its own tk.Tuner(base) and compare"
            )
        base = self.load_base(spec, precision=hf.precision)
        tok = hf.tokenizer
        with quiet():
            if len(tok) > base.get_input_embeddings().num_embeddings:  # the template tokens tunekit added
                base.resize_token_embeddings(len(tok))
            base.generation_config.eos_token_id = model.generation_config.eos_token_id
            base.generation_config.pad_token_id = tok.pad_token_id
            base.to(hf.device)
        base.eval()
        try:
            yield Loaded(base, tok, hf.template, hf.device, hf.precision)
        finally:
            del base

    def merge(self, loaded: LoadedModel, method: Method) -> Any:
        """A merged copy of the trained model (adapter folded into the base weights)."""
        with quiet():
            return merged_model(loaded.model, method)

    def score(self, loaded: LoadedModel, items: list[Any], *, max_length: int) -> list[float]:
        """One reward per item, from a reward model (a sequence classifier with one label)."""
        with quiet():
            return score_items(loaded.model, loaded.tokenizer, items, device=loaded.device, max_length=max_length)

    def gather_weights(self, loaded: LoadedModel, method: Method) -> dict[str, Any] | None:
        """Sharded weights (FSDP, ZeRO-3) gathered for a save; every process calls it (see Tuner.save)."""
        return gather_weights(loaded.model, _hf(loaded).engine, adapter=method.is_adapter)

    def join_processes(self, training: Training) -> None:
        """Under torchrun, make sure the processes' group exists (a save with no fit before it)."""
        join_group(training)

    def settle(self, error: BaseException | None, *, what: str) -> None:
        """Every process waits here until all reach it; an error on any one is raised on every one
        (several processes only; with one, ``error`` is raised if given)."""
        settle(error, what=what)

    def save(self, loaded: LoadedModel, path: Path, state_dict: dict[str, Any] | None = None) -> None:
        with quiet():
            if state_dict is not None:
                loaded.model.save_pretrained(path, state_dict=state_dict)
            else:
                loaded.model.save_pretrained(path)
            processor = getattr(loaded, "processor", None)
            if processor is not None:  # a vision-language model: its image processor's settings and chat template
                processor.save_pretrained(path)
            loaded.tokenizer.save_pretrained(path)


def model_name(spec: RunSpec, model: Any) -> str:
    """The model as the user named it (its hub id or directory), for messages."""
    if isinstance(spec.model_ref, (str, Path)):
        return repr(str(spec.model_ref))
    return f"{type(unwrap_peft(model)).__name__} ({getattr(model, 'name_or_path', '') or 'a model object'})"


def check_vision_model(spec: RunSpec, hf: Loaded, row: int, where: str) -> None:
    """An image sent to a text-only model: IncompatibleError naming the model and the fix."""
    if hf.processor is not None:
        return
    model_type = getattr(getattr(hf.model, "config", None), "model_type", None)
    raise IncompatibleError(
        f"{where} row {row} holds an image, but {model_name(spec, hf.model)} (model type {model_type!r}) is a "
        "text-only model: it has no vision tower to read images; use a vision-language model (one that "
        "transformers loads with AutoModelForImageTextToText, e.g. Qwen2.5-VL, Gemma 3, SmolVLM), or drop the images"
    )


def encode_images(
    spec: RunSpec, hf: Loaded, data: Encoded | TrainerRows | VisionRows
) -> Encoded | TrainerRows | VisionEncoded:
    """Rows with images encoded with the model's processor (:func:`~.vision.encode_vision`); other data as it is."""
    if not isinstance(data, VisionRows):
        return data
    check_vision_model(spec, hf, data.first_image_row(), "the training data's")
    with quiet():
        enc: VisionEncoded = encode_vision(hf.processor, hf.tokenizer, data.examples, **data.settings)
    for _row, reason in enc.skipped:
        logger.warning("skipped %s", reason)
    enc.skipped = data.skipped + enc.skipped
    if enc.truncated:
        logger.warning(
            "%d of %d examples were longer than max_length=%d and were truncated (after their images)",
            enc.truncated,
            len(enc.input_ids),
            data.settings["max_length"],
        )
    return enc


def check_offload(spec: RunSpec, device: Any) -> None:
    """``Training(activation_offload=True)``: only on a CUDA device, and with an objective whose trainer does it."""
    if not spec.training.activation_offload:
        return
    if device.type != "cuda":
        raise IncompatibleError(
            f"Training(activation_offload=True) moves activations from a CUDA device to CPU memory, and this run "
            f"trains on {device.type!r} (no CUDA device here); drop activation_offload, or train on a CUDA device"
        )
    if not offloads_activations(spec.objective):
        raise IncompatibleError(
            f"Training(activation_offload=True) is not supported with {spec.objective.name} (trl's trainer for it "
            "does not offload); it works with SFT, CausalLM, RewardModeling, DPO and KTO: drop activation_offload, "
            "or use gradient_checkpointing=True to save activation memory"
        )


_check: type[Backend] = HFBackend  # mypy checks that HFBackend implements the protocol
