"""The ``hf`` backend: transformers for models, peft for methods, trl for objectives.

:class:`HFBackend` implements :class:`tunekit.backends.base.Backend`; each method is thin orchestration
of the modules beside it (models, peft_map, trainers, checkpoints, planning, processes).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
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
from tunekit.backends.hf.attention import own_attention
from tunekit.backends.hf.batch_size import train_fitting
from tunekit.backends.hf.callbacks import HookBridge
from tunekit.backends.hf.checkpoints import RunIdentity, data_fingerprint, install, mark_finished, run_config
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
from tunekit.data.control_tokens import control_tokens, encode_plain, find_control_token, plain_spans
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.replies import Reply, parse_reply
from tunekit.data.rows import TrainerRows
from tunekit.data.streaming import StreamedEncoded
from tunekit.data.templates import ensure_template, render
from tunekit.distributed import shards_parameters, world
from tunekit.errors import IncompatibleError
from tunekit.hooks import HookDispatcher
from tunekit.inference import prompt_images
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
        import torch

        hf = _hf(loaded)
        tok, model = hf.tokenizer, hf.model
        tools = options.get("tools")
        images = _images(hf, prompts)  # an image for a text-only model: refused before rendering
        texts, spans, opts = _prompts_and_options(hf, prompts, chat=chat, options=options)
        batch_size = int(opts.pop("batch_size", 16))
        limit = int(opts["max_new_tokens"])
        was_training = model.training
        model.eval()
        out: list[str] = []
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            with quiet(), torch.no_grad(), own_attention(model):
                for i in range(0, len(texts), batch_size):
                    batch = texts[i : i + batch_size]
                    enc = _encode(hf, batch, spans[i : i + batch_size], chat=chat, images=images[i : i + batch_size])
                    gen = model.generate(
                        **enc,
                        eos_token_id=model.generation_config.eos_token_id,
                        pad_token_id=tok.pad_token_id,
                        **opts,
                    )
                    new = gen[:, enc["input_ids"].shape[1] :]
                    plain = tok.batch_decode(new, skip_special_tokens=True)
                    read = enc["attention_mask"].sum(dim=1).tolist()
                    for row, text, n_prompt in zip(new.tolist(), plain, read):
                        out.append(_reply(hf, row, text, int(n_prompt), chat=chat, tools=bool(tools), limit=limit))
        finally:
            tok.padding_side = old_side
            if was_training:
                model.train()
        return out

    def stream(
        self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]
    ) -> Generator[str, None, Reply]:
        """Generation on a background thread, its text handed over by transformers' ``TextIteratorStreamer`` (for a
        chat prompt with special tokens kept, for :class:`~tunekit.data.replies.ReplyStream` to split); returns the
        whole reply, parsed as ``generate`` parses it. On close (or an error, or Ctrl-C while waiting) a stopping
        criterion ends the generation and the thread is joined before this returns."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        hf = _hf(loaded)
        tok, model = hf.tokenizer, hf.model
        tools = bool(options.get("tools"))
        images = _images(hf, [prompt])
        texts, spans, opts = _prompts_and_options(hf, [prompt], chat=chat, options=options)
        opts.pop("batch_size", None)
        limit = int(opts["max_new_tokens"])
        stop = threading.Event()
        failed: list[BaseException] = []
        written: list[int] = []

        class _Stopped(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        class _Streamer(TextIteratorStreamer):  # type: ignore[misc]
            """transformers' streamer, also keeping the generated ids (for the reply and its token counts)."""

            def put(self, value: Any) -> None:
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    written.extend(int(t) for t in value.reshape(-1).tolist())
                super().put(value)

        streamer = _Streamer(tok, skip_prompt=True, skip_special_tokens=not chat)

        def work(enc: dict[str, Any]) -> None:
            try:
                with torch.no_grad():
                    model.generate(
                        **enc,
                        eos_token_id=model.generation_config.eos_token_id,
                        pad_token_id=tok.pad_token_id,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Stopped()]),
                        **opts,
                    )
            except BaseException as e:  # handed to the reader, which raises it
                failed.append(e)
            finally:
                streamer.end()

        was_training = model.training
        model.eval()
        thread: threading.Thread | None = None
        try:
            with quiet(), own_attention(model):
                enc = _encode(hf, texts, spans, chat=chat, images=images)
                thread = threading.Thread(target=work, args=(enc,), name="tunekit-stream", daemon=True)
                thread.start()
                for piece in streamer:
                    if piece:
                        yield piece
                thread.join()
                thread = None
                if failed:
                    raise failed[0]
                plain = tok.decode(written, skip_special_tokens=True)
                n_prompt = int(enc["attention_mask"].sum())
                return _reply(hf, written, plain, n_prompt, chat=chat, tools=tools, limit=limit)
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            if was_training:
                model.train()

    def prompt_length(self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]) -> int:
        hf = _hf(loaded)
        images = _images(hf, [prompt])
        texts, spans, _ = _prompts_and_options(hf, [prompt], chat=chat, options=dict(options))
        with quiet():
            return int(_encode(hf, texts, spans, chat=chat, images=images)["attention_mask"].sum())

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
        import torch

        hf = _hf(loaded)
        tok, model = hf.tokenizer, hf.model
        encoded = [_continuation_ids(tok, hf.template.end_of_turn_id, p, c, chat=chat) for p, c in requests]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out: list[tuple[float, int]] = []
        was_training = model.training
        model.eval()
        try:
            with quiet(), torch.no_grad(), own_attention(model):
                for i in range(0, len(encoded), batch_size):
                    batch = encoded[i : i + batch_size]
                    width = max(len(ids) for ids, _ in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for j, (row, _) in enumerate(batch):
                        ids[j, : len(row)] = torch.tensor(row)
                        mask[j, : len(row)] = 1
                    logits = model(input_ids=ids.to(hf.device), attention_mask=mask.to(hf.device)).logits
                    for j, (row, start) in enumerate(batch):  # one row at a time: a vocabulary-wide softmax is big
                        target = torch.tensor(row[start:], device=logits.device)
                        logps = logits[j, start - 1 : len(row) - 1].float().log_softmax(-1)
                        out.append((float(logps.gather(-1, target[:, None]).sum()), len(row) - start))
        finally:
            if was_training:
                model.train()
        return out

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


def _continuation_ids(
    tok: Any, end_of_turn: int | None, prompt: Any, continuation: str, *, chat: bool
) -> tuple[list[int], int]:
    """``(ids, start)``: the prompt and continuation as one sequence of token ids, the continuation from ``start``.

    With ``chat`` the prompt is rendered with the template's generation prompt and the continuation is the
    assistant's answer, cut after its end-of-turn token (the template's trailing newline is not the answer's).
    """
    if chat:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        head_text = render(tok, msgs, add_generation_prompt=True)
        full_text = render(tok, [*msgs, {"role": "assistant", "content": continuation}], add_generation_prompt=False)
    else:
        head_text, full_text = str(prompt), str(prompt) + continuation
    head = tok(head_text, add_special_tokens=not chat)["input_ids"]
    full = tok(full_text, add_special_tokens=not chat)["input_ids"]
    if full[: len(head)] != head:  # the answer's first token merged with the prompt's last: tokenise them apart
        tail = full_text[len(head_text) :] if full_text.startswith(head_text) else continuation
        full = head + tok(tail, add_special_tokens=False)["input_ids"]
    if chat and end_of_turn is not None and end_of_turn in full[len(head) :]:
        full = full[: full.index(end_of_turn, len(head)) + 1]
    if len(full) == len(head):  # nothing to score (an empty continuation without a template)
        full = [*full, tok.eos_token_id if tok.eos_token_id is not None else 0]
    return full, max(len(head), 1)


_check: type[Backend] = HFBackend  # mypy checks that HFBackend implements the protocol


def _reply(hf: Loaded, row: list[int], plain: str, n_prompt: int, *, chat: bool, tools: bool, limit: int) -> Reply:
    """One generated row as a :class:`Reply`: cut at the end of turn (markers kept in ``raw``) and parsed for a chat
    prompt, with why it ended and the tokens read and written."""
    tok = hf.tokenizer
    eos = hf.model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos]) - {None}
    stops = ends | ({tok.pad_token_id} - {None})
    end = next((k for k, t in enumerate(row) if t in stops), None)
    if end is None:
        written, finish = len(row), "length" if len(row) >= limit else "stop"  # else a stop string ended it
    else:
        written, finish = end + (1 if row[end] in ends else 0), "stop"
    if chat:
        raw = tok.decode(row[: written if end is None else end], skip_special_tokens=False)
        reply = parse_reply(raw, control_tokens(tok), tools_offered=tools, plain=plain)
    else:
        reply = Reply(plain)
    return reply.counted(finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=written)


def _prompts_and_options(
    hf: Loaded, prompts: list[Any], *, chat: bool, options: dict[str, Any]
) -> tuple[list[str], list[Any], dict[str, Any]]:
    """The prompts as text (rendered with the template when ``chat``), the plain-text spans of each (control tokens
    typed in a prompt are text unless ``allow_control_tokens``) and transformers' generation options."""
    tok = hf.tokenizer
    # A control token typed in a prompt is the text it is (data/control_tokens.py), unless the caller allows it.
    tokens = () if options.pop("allow_control_tokens", False) else control_tokens(tok)
    texts, spans = [], []
    tools = options.pop("tools", None)
    for p in prompts:
        if chat:
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            texts.append(render(tok, msgs, add_generation_prompt=True, tools=tools))
            spans.append(
                plain_spans(
                    lambda ms: render(tok, ms, add_generation_prompt=True, tools=tools),
                    msgs,
                    tokens,
                    where="generate()",
                )
            )
        else:
            texts.append(p)
            spans.append([(0, len(p))] if find_control_token([p], tokens) else [])
    opts: dict[str, Any] = {"max_new_tokens": 256, "do_sample": False}
    if shards_parameters(hf.engine):  # every process runs each forward until all are done
        opts["synced_gpus"] = True
    opts.update(options)
    if opts.get("stop_strings"):  # transformers matches stop strings on the tokenizer's pieces
        opts["tokenizer"] = tok
    if not opts.get("do_sample"):
        opts.pop("temperature", None)
        opts.pop("top_p", None)
    return texts, spans, opts


def _images(hf: Loaded, prompts: list[Any]) -> list[list[Any]]:
    """Each prompt's images (:func:`~tunekit.inference.prompt_images`); an image for a text-only model is refused."""
    images = [prompt_images(p) for p in prompts]
    if any(images) and hf.processor is None:
        at = next(k for k, imgs in enumerate(images) if imgs) + 1
        model_type = getattr(getattr(hf.model, "config", None), "model_type", None)
        raise IncompatibleError(
            f"generate(): prompt {at} holds an image, but this model (model type {model_type!r}) is text-only: it has "
            "no vision tower to read images; use a vision-language model (one that transformers loads with "
            "AutoModelForImageTextToText, e.g. Qwen2.5-VL, Gemma 3, SmolVLM), or drop the images"
        )
    return images


def _encode(
    hf: Loaded, texts: list[str], spans: list[Any], *, chat: bool, images: list[list[Any]] | None = None
) -> dict[str, Any]:
    """A batch of prompts as input ids and attention mask on the model's device (padded on the tokenizer's side);
    with images, everything the processor makes for them too (pixel values, image grids, image-token types)."""
    tok = hf.tokenizer
    if images and any(images):
        # The processor expands each image placeholder into the image's tokens, as encode_vision did in training
        # (a control token typed in a text part is not kept as text here).
        enc = hf.processor(text=texts, images=images, padding=True, add_special_tokens=not chat, return_tensors="pt")
        return {k: v.to(hf.device) if hasattr(v, "to") else v for k, v in enc.items()}
    if any(spans):
        ids = [encode_plain(tok, t, sp, add_special_tokens=not chat) for t, sp in zip(texts, spans)]
        enc = tok.pad({"input_ids": ids}, return_tensors="pt", padding=True)
    else:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    return {k: v.to(hf.device) for k, v in enc.items()}
