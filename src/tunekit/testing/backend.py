"""A test double of the :class:`~tunekit.backends.base.Backend` protocol: ``tk.Tuner`` without a model.

Applications test their hooks, their handling of ``Run`` events, cancellation, errors and their own code
around a Tuner with it, in milliseconds: ``tk.Tuner("any-name", backend=tk.testing.FakeBackend())``. Data is
read, validated and tokenised exactly as in a real run (with a small tokenizer trained on the spot, no
model), the objective is inferred, hooks fire in the real order through the real dispatcher, stops,
cancels and hook failures behave as in a real run; only the training itself is scripted: the loss at
step ``k`` is ``losses[k - 1]``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.backends.base import Backend, LoadedModel, RunSpec, VisionRows
from tunekit.data.control_tokens import control_tokens
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.replies import Reply, parse_reply
from tunekit.data.rows import TrainerRows
from tunekit.data.templates import Template, ensure_template
from tunekit.errors import IncompatibleError, TrainingError
from tunekit.hooks import HookDispatcher
from tunekit.methods import Method
from tunekit.plan import Plan
from tunekit.results import FitResult
from tunekit.testing.models import DEFAULT_TEXTS, train_tokenizer
from tunekit.training import Training
from tunekit.training_data import encode_for

__all__ = ["FakeBackend", "FakeModel"]


@dataclass
class FakeModel:
    """What a :class:`FakeBackend` "trains": a record of the steps it took, and the losses it reported."""

    name: str
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    training: bool = False


@dataclass
class _Loaded:
    model: FakeModel
    tokenizer: Any
    template: Template
    device: Any = "cpu"
    precision: str = "fp32"


class FakeBackend:
    """A :class:`~tunekit.backends.base.Backend` that trains nothing, so tests of code around a Tuner run fast.

    - ``losses``: the loss at each step (the run takes ``Training.max_steps`` steps, else one per loss),
      logged as transformers logs it: at the first step and every ``Training.log_every`` steps; a NaN or
      inf fails the run with ``TrainingError`` as a real one would (``Training(on_nonfinite="error")``).
    - ``replies``: what ``generate`` answers: a mapping from the prompt's last user message to the reply,
      or a function of that message (default: ``"ok"``).
    - ``rewards``: ``score``'s function of each item (default: the length of its text).
    - ``step_gate``: a semaphore each step acquires first, so a test decides when steps happen
      (``gate.release(3)`` lets three steps run); ``fail_at``: the step that raises ``error``.
    - ``params``: (trainable, total) parameters the results and plans report.
    - ``max_length``: the context length it states (a prompt counts one token per word); None for no limit.
      Adapters added with ``Tuner.add_adapter`` are listed in ``adapters``, and ``active_adapter`` names the
      one a call is using (``"default"``, ``"base"`` or an added name), for a ``replies`` function to read.

    Every protocol call is recorded in ``calls`` (``"preflight"``, ``"load"``, ``"fit"``, ...) and the
    run descriptions ``fit`` received in ``specs``. ``save`` writes ``fake_model.json`` and the tokenizer,
    so ``tuner.save(path)`` writes a real tunekit save (one that only this backend can load back).

    Example:
        >>> import tunekit as tk
        >>> class Losses(tk.Hook):
        ...     def __init__(self):
        ...         self.seen = []
        ...     def on_log(self, ctx, logs):
        ...         self.seen.append((ctx.step, logs["loss"]))
        >>> hook = Losses()
        >>> backend = tk.testing.FakeBackend(losses=[2.0, 1.0, 0.5], replies={"hi": "hello"})
        >>> every_step = tk.Training(log_every=1)
        >>> tuner = tk.Tuner("any-name", backend=backend, hooks=[hook], training=every_step, progress=False)
        >>> result = tuner.fit([{"prompt": "hi", "completion": "hello"}])
        >>> hook.seen, result.train_loss, result.steps
        ([(1, 2.0), (2, 1.0), (3, 0.5)], 0.5, 3)
        >>> tuner.generate("hi"), backend.calls
        ('hello', ['preflight', 'load', 'fit', 'generate'])
    """

    name = "fake"

    def __init__(
        self,
        *,
        losses: Sequence[float] = (2.0, 1.5, 1.0, 0.8),
        replies: Mapping[str, str] | Callable[[str], str] | None = None,
        rewards: Callable[[Any], float] | None = None,
        step_gate: threading.Semaphore | None = None,
        gate_timeout_s: float = 30.0,
        fail_at: int | None = None,
        error: BaseException | None = None,
        params: tuple[int, int] = (1_000, 100_000),
        max_length: int | None = 2048,
    ) -> None:
        if not losses:
            raise ValueError("FakeBackend(losses=...): give at least one loss")
        self.losses = [float(x) for x in losses]
        self.replies = replies
        self.rewards = rewards
        self.step_gate = step_gate
        self.gate_timeout_s = gate_timeout_s
        self.fail_at = fail_at
        self.error = error if error is not None else RuntimeError(f"FakeBackend: scripted failure at step {fail_at}")
        self.params = params
        self.calls: list[str] = []
        self.specs: list[RunSpec] = []
        self.max_length = max_length
        self.adapters: list[str] = []  # added with Tuner.add_adapter
        self.active_adapter = "default"

    # --- lifecycle ----------------------------------------------------------------------------------
    def load(self, spec: RunSpec) -> LoadedModel:
        self.calls.append("load")
        tokenizer, template = self._tokenizer(spec)
        return _Loaded(FakeModel(str(spec.model_ref)), tokenizer, template)

    @staticmethod
    def _tokenizer(spec: RunSpec) -> tuple[Any, Template]:
        """The run's tokenizer object, or a small one trained here (no model, no network), with the template."""
        tokenizer = spec.tokenizer_ref
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            tokenizer = train_tokenizer([*DEFAULT_TEXTS, " ".join("0123456789")], 400, True, True)
        template, _ = ensure_template(tokenizer, spec.template, spec.template_options)
        return tokenizer, template

    def preflight(self, spec: RunSpec, *, resume: bool | str | Path) -> Path | None:
        self.calls.append("preflight")
        return None  # the fake writes no checkpoints to resume from

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
        self.calls.append("fit")
        self.specs.append(spec)
        model, training = loaded.model, spec.training
        ctx, control = dispatcher.ctx, dispatcher.control
        ctx.max_steps = training.max_steps or len(self.losses)
        model.training = True
        dispatcher.emit("fit_start")
        checkpoint: Path | None = None
        eval_loss: float | None = None
        while ctx.step < ctx.max_steps and not ctx.stop_requested:
            if self.step_gate is not None and not self.step_gate.acquire(timeout=self.gate_timeout_s):
                raise TrainingError(f"FakeBackend: step {ctx.step + 1} waited {self.gate_timeout_s}s for its gate")
            if self.fail_at is not None and ctx.step + 1 >= self.fail_at:
                # A copy, raised afresh (as a real run raises a new error): the backend's own instance would keep
                # the traceback of every run that raised it, and their frames, alive.
                raise copy.copy(self.error)
            ctx.step += 1
            ctx.epoch = ctx.step / ctx.max_steps
            loss = self.losses[min(ctx.step, len(self.losses)) - 1]
            if loss != loss or loss in (float("inf"), float("-inf")):
                raise TrainingError(f"non-finite loss ({loss}) at step {ctx.step} (FakeBackend's script)")
            model.steps += 1
            model.losses.append(loss)
            dispatcher.emit("step_end")
            if ctx.step % training.log_every == 0 or ctx.step == 1:  # as transformers logs: the first step, every N
                entry = {"step": ctx.step, "epoch": round(ctx.epoch, 4), "loss": loss}
                control.history.append(entry)
                ctx.metrics = {k: float(v) for k, v in entry.items()}
                dispatcher.emit("log", {"loss": loss})
            if evaluation is not None and training.eval_every and ctx.step % training.eval_every == 0:
                eval_loss = loss * 1.1
                dispatcher.emit("evaluate", {"eval_loss": eval_loss})
            due = training.save_every and ctx.step % training.save_every == 0
            stopping = ctx.stop_requested and control.checkpoint_on_stop
            if spec.output_dir is not None and (due or stopping):
                checkpoint = self._checkpoint(spec.output_dir, ctx.step, model)
                dispatcher.emit("checkpoint", checkpoint)
        model.training = False
        trainable, total = self.params
        losses = [h["loss"] for h in control.history if "loss" in h]
        return FitResult(
            history=control.history,
            metrics={"train_loss_mean": sum(model.losses) / max(1, len(model.losses))},
            train_loss=losses[-1] if losses else self.losses[0],
            eval_loss=eval_loss,
            steps=ctx.step,
            epochs=ctx.epoch,
            runtime_s=0.0,
            tokens_per_s=0.0,
            num_examples=len(train.rows),
            num_tokens=train.num_tokens,
            trainable_params=trainable,
            total_params=total,
            output_dir=spec.output_dir,
            stopped_early=ctx.stop_requested,
            stop_reason=ctx.stop_reason,
            checkpoint=checkpoint,
            skipped_rows=sorted(r for r, _ in train.skipped),
            skipped_reasons=dict(sorted(train.skipped)),
        )

    @staticmethod
    def _checkpoint(output_dir: Path, step: int, model: FakeModel) -> Path:
        path = Path(output_dir) / f"checkpoint-{step}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "fake_model.json").write_text(json.dumps({"steps": model.steps}), encoding="utf-8")
        return path

    # --- use of the trained model -------------------------------------------------------------------
    def generate(self, loaded: LoadedModel, prompts: list[Any], *, chat: bool, options: dict[str, Any]) -> list[str]:
        self.calls.append("generate")
        options.pop("allow_control_tokens", None)  # what the engine's encoding takes; nothing to encode here
        tools = options.pop("tools", None)
        return [self._parsed(loaded, p, chat=chat, tools=bool(tools)) for p in prompts]

    def stream(
        self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]
    ) -> Generator[str, None, str]:
        """The scripted reply in pieces of at most four characters."""
        self.calls.append("stream")
        options.pop("allow_control_tokens", None)
        tools = options.pop("tools", None)
        reply = self._reply(prompt)
        for i in range(0, len(reply), 4):
            yield reply[i : i + 4]
        return self._parsed(loaded, prompt, chat=chat, tools=bool(tools))

    def _parsed(self, loaded: LoadedModel, prompt: Any, *, chat: bool, tools: bool) -> Reply:
        """The scripted reply as generate returns it: parsed for tool calls and reasoning (a chat prompt), one token
        per word counted."""
        text = self._reply(prompt)
        reply = parse_reply(text, control_tokens(loaded.tokenizer), tools_offered=tools) if chat else Reply(text)
        n_prompt = self.prompt_length(loaded, prompt, chat=chat, options={})
        return reply.counted(finish_reason="stop", prompt_tokens=n_prompt, completion_tokens=len(text.split()))

    def prompt_length(self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]) -> int:
        """One token per whitespace-separated word of the prompt's text."""
        texts = [prompt] if isinstance(prompt, str) else [str(m.get("content", "")) for m in prompt]
        return sum(len(t.split()) for t in texts)

    def context_length(self, loaded: LoadedModel) -> int | None:
        return self.max_length

    def add_adapter(self, loaded: LoadedModel, name: str, spec: RunSpec) -> None:
        self.calls.append(f"add_adapter:{name}")
        self.adapters.append(name)

    @contextlib.contextmanager
    def adapter(self, loaded: LoadedModel, name: str) -> Iterator[None]:
        """``active_adapter`` is ``name`` for the length of the ``with`` (a ``replies`` function may read it)."""
        before, self.active_adapter = self.active_adapter, name
        try:
            yield
        finally:
            self.active_adapter = before

    def _reply(self, prompt: Any) -> str:
        text = (
            prompt
            if isinstance(prompt, str)
            else next((str(m.get("content", "")) for m in reversed(prompt) if m.get("role") == "user"), "")
        )
        if callable(self.replies):
            return str(self.replies(text))
        if self.replies is not None:
            return str(self.replies.get(text, "ok"))
        return "ok"

    def score(self, loaded: LoadedModel, items: list[Any], *, max_length: int) -> list[float]:
        self.calls.append("score")
        if self.rewards is not None:
            return [float(self.rewards(item)) for item in items]
        return [float(len(json.dumps(item, ensure_ascii=False))) for item in items]

    def loglikelihood(
        self, loaded: LoadedModel, requests: list[tuple[Any, str]], *, chat: bool, batch_size: int
    ) -> list[tuple[float, int]]:
        """A scripted likelihood: each character of the continuation costs 1 (shorter answers are likelier)."""
        self.calls.append("loglikelihood")
        return [(-float(len(c)), max(len(c), 1)) for _, c in requests]

    @contextlib.contextmanager
    def baseline(self, spec: RunSpec, loaded: LoadedModel) -> Iterator[LoadedModel]:
        """The same fake model (it has no adapter to disable)."""
        self.calls.append("baseline")
        yield loaded

    def merge(self, loaded: LoadedModel, method: Method) -> Any:
        self.calls.append("merge")
        model = loaded.model
        return FakeModel(model.name, model.steps, list(model.losses))

    def save(self, loaded: LoadedModel, path: Path, state_dict: dict[str, Any] | None = None) -> None:
        self.calls.append("save")
        model = loaded.model
        data = {"name": model.name, "steps": model.steps, "losses": model.losses}
        (Path(path) / "fake_model.json").write_text(json.dumps(data), encoding="utf-8")
        loaded.tokenizer.save_pretrained(path)

    # --- queries ------------------------------------------------------------------------------------
    def plan(
        self,
        spec: RunSpec,
        train: NormalisedData,
        *,
        loaded: LoadedModel | None,
        load: Callable[[], LoadedModel],
        device_memory: int | None = None,
    ) -> Plan:
        self.calls.append("plan")
        tokenizer = loaded.tokenizer if loaded is not None else self._tokenizer(spec)[0]  # plans load nothing
        enc = encode_for(spec, train, tokenizer)
        trainable, total = self.params
        steps = spec.training.max_steps or len(self.losses)
        memory = device_memory if device_memory is not None else 2**30  # a pretend device of 1 GiB
        return Plan(
            method=spec.method.name,
            objective=spec.objective.name,
            device="cpu",
            precision="fp32",
            trainable_params=trainable,
            total_params=total,
            examples=len(enc.rows),
            tokens=int(enc.num_tokens),
            sources=tuple(enc.sources),
            steps=steps,
            micro_batch_tokens=int(enc.num_tokens),
            packing=False,
            gradient_checkpointing=False,
            weights_bytes=4 * total,
            gradients_bytes=4 * trainable,
            optimizer_bytes=8 * trainable,
            activations_bytes=0,
            device_memory_bytes=memory,
            fits=4 * total + 12 * trainable <= 0.95 * memory,
        )

    def load_base(self, spec: RunSpec, *, precision: str) -> Any:
        raise IncompatibleError("FakeBackend has no base model to load; exports need a real backend")

    # --- several processes: the fake runs in one -----------------------------------------------------
    def gather_weights(self, loaded: LoadedModel, method: Method) -> dict[str, Any] | None:
        return None

    def join_processes(self, training: Training) -> None:
        return None

    def settle(self, error: BaseException | None, *, what: str) -> None:
        if error is not None:
            raise error


_check: type[Backend] = FakeBackend  # mypy checks that the double implements the protocol
