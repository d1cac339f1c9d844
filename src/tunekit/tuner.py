"""``tk.Tuner``: composes a model, a Method, an Objective and Training; holds no training logic."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from tunekit.backends import get_backend
from tunekit.backends.base import Backend, LoadedModel, RunSpec, Trained, VisionRows
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.rows import TrainerRows
from tunekit.data.summary import summarise_data
from tunekit.data.templates import check_template_options
from tunekit.errors import ConfigError, IncompatibleError
from tunekit.eval_result import EvalResult
from tunekit.evaluation import check_evaluation, evaluate, generation_options, read_items
from tunekit.export import ExportResult, Verification, check_request, export_format, export_trained, verify_trained
from tunekit.harness import check_tasks, run_benchmark
from tunekit.hooks import Hook, HookErrors, check_hook_errors
from tunekit.inference import check_items, check_options, check_prompts, generate, score, stream
from tunekit.methods import LoRA, Method
from tunekit.metrics import MetricFunction
from tunekit.model_access import AddedAdapters, ModelAccess
from tunekit.objectives import SFT, CausalLM, Objective
from tunekit.plan import Plan
from tunekit.results import FitResult
from tunekit.run import Prepared, Run, check_resume, execute, prepare
from tunekit.save_format import check_save, spec_from_save, write_save
from tunekit.training import Training
from tunekit.training_data import check_compatible, encode_for, normalise_for

__all__ = ["Tuner", "verify_export"]


class Tuner:
    """Fine-tune a language model with one call.

    Args:
        model: a hub id, a local directory, or a transformers model object. An object (and a
            tokenizer object) is used in place, not copied: tunekit may install a chat template and
            pad token on the tokenizer, resize the embeddings and wrap the model with peft.
        method: which parameters train (default ``LoRA()``).
        objective: what signal trains them (default: inferred from the data's columns).
        training: hyper-parameters (default ``Training()``).
        hooks: application callbacks (:class:`tunekit.Hook`).
        hook_errors: what a hook that raises does to the run: ``"stop"`` (default: end the run
            cleanly after that step, then raise ``TrainingError`` naming the hook) or ``"log"``
            (log it on the ``tunekit`` logger and keep training).
        progress: the automatic progress bar: ``None`` (default) shows it when stderr is a
            terminal, ``True`` always, ``False`` adds none. A ``tk.ProgressBar`` in ``hooks`` is
            used as given instead.
        output_dir: where checkpoints and logs go (default: a temporary directory, removed after). A new or
            empty directory, or one of an earlier tunekit run; one holding other files is refused before
            training (tunekit never writes over files it did not write).
        reuse_output_dir: write into an ``output_dir`` that holds other files, beside them: the run is
            still refused if it would write over one of them (e.g. a ``metrics.jsonl`` of your own).
        tokenizer: a tokenizer object or path, when it is not beside the model.
        template: a Jinja chat template to use instead of the tokenizer's, or ``"chatml"`` for tunekit's built-in one
            (which renders tools, tool calls and reasoning in one documented format, for models whose own template
            does not).
        template_options: options the chat template is rendered with, in training and generation alike, such
            as ``{"enable_thinking": False}`` for Qwen3-style templates (a model that answers without reasoning).
        backend: ``"hf"`` (transformers, peft and trl), or an object implementing
            :class:`tunekit.backends.base.Backend`, such as the test double
            :class:`tunekit.testing.FakeBackend` for an application's own tests.

    Example:
        >>> import tunekit as tk
        >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", method=tk.LoRA(r=8))  # loads nothing yet
        >>> result = tuner.fit("train.jsonl")  # doctest: +SKIP
        >>> tuner.generate("Translate to French: cheese")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        *,
        method: Method | None = None,
        objective: Objective | None = None,
        training: Training | None = None,
        hooks: Sequence[Hook] = (),
        output_dir: str | Path | None = None,
        reuse_output_dir: bool = False,
        tokenizer: Any = None,
        template: str | None = None,
        template_options: dict[str, Any] | None = None,
        backend: str | Backend = "hf",
        hook_errors: HookErrors = "stop",
        progress: bool | None = None,
    ) -> None:
        if model is None or (isinstance(model, str) and not model.strip()):
            raise ConfigError("Tuner(model=...): pass a hub id, a local model directory or a model object")
        for name, value, cls in (
            ("method", method, Method),
            ("objective", objective, Objective),
            ("training", training, Training),
        ):
            if value is not None and not isinstance(value, cls):
                raise ConfigError(
                    f"Tuner({name}={value!r}): expected a tunekit {cls.__name__}, got {type(value).__name__}"
                )
        if isinstance(hooks, Hook) or not isinstance(hooks, (list, tuple)):
            raise ConfigError(
                f"Tuner(hooks={hooks!r}): pass a list of hooks, e.g. hooks=[{type(hooks).__name__}(...)]"
                if isinstance(hooks, Hook)
                else f"Tuner(hooks=...): expected a list of tunekit.Hook instances, got {type(hooks).__name__}"
            )
        if reuse_output_dir not in (True, False):
            raise ConfigError(f"Tuner(reuse_output_dir={reuse_output_dir!r}): must be True or False")
        for h in hooks:
            if not isinstance(h, Hook):
                raise ConfigError(f"Tuner(hooks=...): {h!r} is not a tunekit.Hook subclass instance")
        self.model_ref = model
        self.method: Method = method or LoRA()
        self.objective: Objective | None = objective
        self.training: Training = training or Training()
        self.hooks: list[Hook] = list(hooks)
        self.hook_errors: HookErrors = check_hook_errors(hook_errors)
        if progress not in (None, True, False):
            raise ConfigError(f"Tuner(progress={progress!r}): must be None (when stderr is a terminal), True or False")
        self.progress = progress
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.reuse_output_dir = bool(reuse_output_dir)
        self.tokenizer_ref = tokenizer
        self.template = template
        self.template_options = check_template_options(template_options)
        self.adapter_path: Path | None = None  # set by tk.load for adapter checkpoints
        self.backend: Backend = get_backend(backend) if isinstance(backend, str) else backend
        self.last_result: FitResult | None = None
        self.last_evaluation: EvalResult | None = None  # the last evaluate(): the model card of an export shows it
        # Rows, formats and a few prompts of the last data fit saw: the model card and export verification use them.
        self.data_summary: dict[str, Any] | None = None
        self._loaded: LoadedModel | None = None
        self._objective_used: Objective | None = objective
        self._access = ModelAccess()  # one fit at a time; no two threads use the model at once
        self._adapters = AddedAdapters()  # adapters added beside this tuner's own (add_adapter), for serving
        if objective is not None:
            check_compatible(self.method, objective)
        if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise ConfigError(f"Tuner(output_dir={str(output_dir)!r}): this path is a file, not a directory")

    # --- lazily loaded escape hatches -------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        """The model, tokenizer and template the backend loaded (on first use)."""
        if self._loaded is None:
            self._loaded = self.backend.load(self._spec())
        return self._loaded

    @property
    def model(self) -> Any:
        """The underlying transformers (or peft) model, loaded on first use."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, with the chat template and pad token tunekit installed."""
        return self.loaded.tokenizer

    @property
    def objective_used(self) -> Objective:
        """The objective given, or the one inferred from the last data seen (default SFT)."""
        return self._objective_used or SFT()

    # --- the run description handed to the backend ------------------------------------------------
    def _spec(self) -> RunSpec:
        """This call's run, as the backend sees it (made per call: ``output_dir`` and the rest may change)."""
        return RunSpec(
            model_ref=self.model_ref,
            method=self.method,
            objective=self.objective_used,
            training=self.training,
            tokenizer_ref=self.tokenizer_ref,
            template=self.template,
            template_options=self.template_options,
            output_dir=self.output_dir,
            reuse_output_dir=self.reuse_output_dir,
            adapter_path=self.adapter_path,
            hooks=tuple(self.hooks),
            hook_errors=self.hook_errors,
            progress=self.progress,
        )

    def _trained(self) -> Trained:
        """The loaded model with what made it, for saving and exporting."""
        return Trained(
            self._spec(), self.backend, self.loaded, self.data_summary, self.last_result, self.last_evaluation
        )

    # --- data -------------------------------------------------------------------------------------
    def _normalise(self, data: Any, what: str) -> NormalisedData:
        # The objective is inferred from the training data until a run succeeds; after that the tuner keeps what
        # it trained, and eval data must suit it.
        keep = self.objective or (
            self._objective_used if (self.last_result is not None or what != "training") else None
        )
        norm, objective = normalise_for(data, training=self.training, method=self.method, objective=keep, what=what)
        self._objective_used = objective
        return norm

    def prepare(self, data: Any) -> Encoded | TrainerRows | VisionRows:
        """Validate, template and tokenise ``data`` as ``fit`` would, without training (rows with images come back
        as ``VisionRows``, which the backend encodes with the model's processor when it trains)."""
        norm = self._normalise(data, "training")
        return encode_for(self._spec(), norm, self.tokenizer)

    def plan(self, data: Any, eval_data: Any = None, *, device_memory_gib: float | None = None) -> Plan:
        """What ``fit(data)`` would cost, without training: a :class:`tunekit.Plan`.

        Exact trainable and total parameters, the examples, tokens and optimizer steps ``fit``
        will see, and the estimated peak memory (weights, gradients, optimizer state,
        activations), and whether it fits. The model's weights are not loaded when the tuner
        has not loaded them yet (the model is built on the meta device; a QLoRA base as the
        skeleton of its quantized load, its weights counted as bitsandbytes stores them).

        ``Training(device="cuda")`` plans for a CUDA GPU even on a machine without one (bf16 when
        ``precision="auto"``); ``device_memory_gib`` is the memory to compare with (e.g. 24 for a
        24 GB card), instead of the device's own or, on the CPU, the RAM available.

        Example:
            >>> plan = tk.Tuner("Qwen/Qwen2-0.5B").plan("train.jsonl")  # doctest: +SKIP
            >>> print(plan)  # doctest: +SKIP
            >>> gpu = tk.Tuner("Qwen/Qwen2-0.5B", training=tk.Training(device="cuda"))  # doctest: +SKIP
            >>> gpu.plan("train.jsonl", device_memory_gib=24).fits  # doctest: +SKIP
        """
        self._access.check_not_training("plan()")
        memory = device_memory_gib
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0):
            raise ConfigError(
                f"plan(device_memory_gib={memory!r}): give the device's memory in GiB as a positive number, e.g. 24"
            )
        train = self._normalise(data, "training")
        if eval_data is not None:
            self._normalise(eval_data, "eval")  # the checks fit makes
        device_memory = None if memory is None else int(memory * 2**30)
        return self.backend.plan(
            self._spec(), train, loaded=self._loaded, load=self._model_for_run, device_memory=device_memory
        )

    # --- the verbs ----------------------------------------------------------------------------------
    def fit(self, data: Any, *, eval_data: Any = None, resume: bool | str | Path | None = None) -> FitResult:
        """Train on ``data`` (a path, a dataset name or directory, list of dicts, datasets.Dataset, DataFrame,
        ``tk.Data`` or ``tk.Mix`` of several sources).

        Returns a :class:`FitResult`; the trained weights stay in ``tuner.model``, ready for
        :meth:`generate` and :meth:`save`. ``resume`` (default: ``Training.resume``, ``"auto"``)
        continues from a checkpoint: ``"auto"`` the newest complete one in ``output_dir`` of a run
        that did not finish (else start afresh), ``True`` the newest, or a ``checkpoint-N``
        directory; the optimizer, schedule, random state and position in the data are restored, so
        pass the same data (a different config or data raises ``CheckpointError``).
        """
        with self._access.lock:  # one activity at a time: a second fit, or a start, from another thread is refused
            prepared = self._prepare_run(data, eval_data, resume)
            self._access.begin_fit("fit()")
        try:
            return execute(prepared, self.backend, self._model_for_run, on_result=self._keep_result)
        finally:
            self._access.end_fit()

    def start(self, data: Any, *, eval_data: Any = None, resume: bool | str | Path | None = None) -> Run:
        """Like :meth:`fit`, in a background thread: returns a :class:`tunekit.Run` at once.

        The data, the resume request, trackers and hooks are checked before it returns (errors
        raise here); loading and training go on in the background. See :class:`tunekit.Run` for
        ``events()``, ``progress``, ``cancel()`` and ``wait()``.
        """
        with self._access.lock:
            prepared = self._prepare_run(data, eval_data, resume)
            self._access.check_free("start()")
            run = Run(prepared, self.backend, self._model_for_run, on_result=self._keep_result)
            self._access.active_run = weakref.ref(run)
        return run

    def _prepare_run(self, data: Any, eval_data: Any, resume: bool | str | Path | None) -> Prepared:
        """Everything ``fit`` and ``start`` check in the caller's thread, before anything loads."""
        self._adapters.check_single("fit()")
        self._access.check_can_fit()
        request = check_resume(resume, self.training, self.output_dir)
        train = self._normalise(data, "training")
        evaluation = self._normalise(eval_data, "eval") if eval_data is not None else None
        prepared = prepare(self._spec(), self.backend, train, evaluation, request)
        self.data_summary = summarise_data(train, evaluation)
        return prepared

    def _model_for_run(self) -> LoadedModel:
        return self.loaded

    def _keep_result(self, result: FitResult) -> None:
        self.last_result = result

    def generate(self, prompt: Any, *, adapter: str | None = None, **options: Any) -> Any:
        """Continue ``prompt`` with the training template; returns only the new text.

        ``prompt`` is a string, a list of chat messages, or a list of either (then a list comes
        back). Options go to ``transformers``' ``generate`` (greedy by default, at most 256 new
        tokens; ``max_new_tokens``, ``do_sample``, ``temperature``, ...). Generation stops at the
        template's end-of-turn token. ``temperature=0`` means greedy decoding, even with ``do_sample=True``.
        Options are checked before the model loads: an unknown name (``max_tokens``) or a value out of
        range raises ConfigError; a chat message with an unknown role raises DatasetError, as in training.
        A control token typed inside a prompt (``<|im_end|>``) is encoded as the text it is, unless
        ``allow_control_tokens=True`` (default: ``Training.allow_control_tokens``).

        A chat prompt's answer is a :class:`tk.Reply`: the text, with its reasoning, tool calls, ``finish_reason``
        (``"length"`` when ``max_new_tokens`` cut it) and token counts. ``adapter`` picks one of the adapters
        this tuner holds (:meth:`add_adapter`): ``"default"`` (its own), an added name, or ``"base"`` (none: the
        bare base model).
        """
        prompts, single = check_prompts(prompt, self.objective_used, ImageOptions.of(self.training))  # before loading
        options = check_options(options)
        self._adapters.check_pick(adapter, self.method)
        if not prompts:
            return []
        options.setdefault("allow_control_tokens", self.training.allow_control_tokens)  # typed control tokens are text
        with self._access.using("generate()"), self._adapter(adapter):
            return generate(self.backend, self.loaded, self.objective_used, prompts, single=single, **options)

    def stream(
        self, prompt: Any, *, adapter: str | None = None, parts: bool = False, **options: Any
    ) -> Generator[Any, None, None]:
        """Continue one prompt (a string or a list of chat messages) like :meth:`generate`, yielding the text as it
        is generated.

        The same template, options, checks and end-of-turn stop as ``generate``; joined, the pieces are the
        answer ``generate`` returns (reasoning and tool-call markup split off as ``generate`` splits them). With
        ``parts=True`` the pieces are :class:`tk.ReplyDelta` objects instead: the reasoning and the answer as they
        come, each tool call once complete, and last an ``"end"`` piece with the whole :class:`tk.Reply` (why
        generation ended, the tokens counted). ``adapter``: as in :meth:`generate`. Prompts and options are checked
        here, before anything loads. The model is generating (and this tuner's other uses wait) from the first
        piece until the iterator ends or is closed: breaking out of the loop, ``close()`` or dropping it stops the
        generation at once. Consume and close it in one thread.

        Example:
            >>> for piece in tuner.stream("first: 7 3 1", max_new_tokens=64):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        prompts, single = check_prompts(prompt, self.objective_used, ImageOptions.of(self.training))  # before loading
        if not single:
            raise ConfigError("stream(): pass one prompt (a string or a list of chat messages), not a list of prompts")
        if parts not in (True, False):
            raise ConfigError(f"stream(parts={parts!r}): must be True or False")
        options = check_options(options)
        self._adapters.check_pick(adapter, self.method)
        options.setdefault("allow_control_tokens", self.training.allow_control_tokens)
        return self._stream(prompts[0], options, adapter=adapter, parts=parts)

    def _stream(
        self, prompt: Any, options: dict[str, Any], *, adapter: str | None, parts: bool
    ) -> Generator[Any, None, None]:
        with self._access.using("stream()"), self._adapter(adapter), self._access.stream_open():
            for delta in stream(self.backend, self.loaded, self.objective_used, prompt, **options):
                if parts:
                    yield delta
                elif delta.kind == "content":
                    yield delta.text

    # --- several adapters on one base (for serving) ------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """The adapters ``generate(adapter=...)`` can pick: ``"default"`` (this tuner's own), those added with
        :meth:`add_adapter`, and ``"base"`` (no adapter); empty for a method that is no adapter."""
        return self._adapters.names(is_adapter=self.method.is_adapter)

    def add_adapter(self, name: str, path: str | Path, *, verify: bool = True) -> None:
        """Load the adapter saved at ``path`` (by ``Tuner.save``) beside this tuner's own, on the same copy of the
        base model, under ``name``; ``generate(..., adapter=name)`` and ``stream`` then use it.

        The save must be an adapter trained on this tuner's base (checked by its recorded fingerprint, like
        ``tk.load``), of the same low-rank kind (LoRA with LoRA), with the same tokenizer and template; anything
        else raises :class:`IncompatibleError` (load it as a tuner of its own). Its files are checked against its
        manifest (``verify``); trust (remote code, pickle files) is this tuner's ``training``'s. A tuner holding
        added adapters serves them: it does not fit, save, merge or export (load a save on its own for that).

        Example:
            >>> tuner = tk.load("runs/support-bot")  # doctest: +SKIP
            >>> tuner.add_adapter("sql", "runs/sql-bot")  # doctest: +SKIP
            >>> tuner.generate("List the tables", adapter="sql")  # doctest: +SKIP
        """
        self._adapters.check_new(name, self.method)
        self._access.check_not_training("add_adapter()")
        saved = spec_from_save(path, base_model=self.model_ref, training=self.training, verify=verify)
        other = saved.spec
        if other.adapter_path is None or not other.method.is_adapter:
            raise IncompatibleError(
                f"add_adapter({name!r}): {path} is a whole-model save ({other.method.name}), not an adapter; "
                "serve it as a tuner of its own"
            )
        if (other.template_options or {}) != (self.template_options or {}):  # the template itself: the backend's check
            raise IncompatibleError(
                f"add_adapter({name!r}): {path} was trained with other template options ({other.template_options}) "
                f"than this tuner ({self.template_options}); it reads prompts differently, so it cannot share this "
                "model: load it on its own"
            )
        with self._access.using("add_adapter()"):
            self.backend.add_adapter(self.loaded, name, other)
        self._adapters.paths[name] = Path(path)

    @contextlib.contextmanager
    def _adapter(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            yield
            return
        with self.backend.adapter(self.loaded, adapter):
            yield

    def score(self, texts: Sequence[Any]) -> list[float]:
        """Reward-model scores, one float per item (higher is better).

        Items are ``(prompt, completion)`` pairs, ``{"prompt": ..., "completion": ...}`` dicts or
        lists of chat messages, rendered with the chat template as in training; or plain strings,
        scored exactly as given. Needs a reward model: a tuner trained with ``tk.RewardModeling()``
        or ``tk.load`` of one.

        Example:
            >>> rm = tk.load("runs/reward-model")  # doctest: +SKIP
            >>> rm.score([("2 + 2 =", "4"), ("2 + 2 =", "5")])  # doctest: +SKIP
            [3.1, -2.7]
        """
        items = check_items(texts, self.objective_used)  # before anything loads
        if not items:
            return []
        with self._access.using("score()"):
            return score(self.backend, self.loaded, items, max_length=self.training.max_length)

    def merge(self) -> Any:
        """The trained model with the adapter merged into the base weights: a plain transformers model.

        It gives the same outputs as ``tuner.model`` and needs no peft to run or to export; save it
        with ``merged.save_pretrained(path)``. The tuner is left as it is (the merge runs on a copy,
        which needs memory for a second model), so it can still be saved as an adapter or trained on.

        Raises :class:`IncompatibleError`, before loading anything, for methods that cannot merge:
        prompt-based methods (their virtual tokens are inputs, not weights) and ``Full`` / ``Freeze``
        (``tuner.model`` already is the whole model).
        """
        if not self.method.mergeable:
            raise IncompatibleError(f"{self.method.name} cannot be merged: {self.method.not_mergeable_because}")
        self._adapters.check_single("merge()")
        with self._access.using("merge()"):
            return self.backend.merge(self.loaded, self.method)

    def evaluate(
        self,
        data: Any,
        *,
        metrics: str | Sequence[str | MetricFunction] = ("exact_match",),
        baseline: bool = False,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
    ) -> EvalResult:
        """Answer the prompts of ``data`` and score the answers against its references: a :class:`tk.EvalResult`.

        ``data`` is anything ``fit`` takes; each row's reference is its last assistant turn (``completion``,
        ``output``). Answers are generated greedily in batches (``batch_size``, default 16), with the training
        template, and stop at the end of turn; ``max_new_tokens`` defaults to the longest reference's length and 16
        tokens more (at most 1,024). ``metrics``: names from :mod:`tunekit.metrics` (``exact_match``, ``contains``,
        ``rouge_l``, ``bleu``, ``chrf``, ``accuracy`` for multiple-choice rows with ``choices`` and ``answer``,
        ``perplexity``) or functions ``(prediction, reference, row) -> float``. With ``baseline=True`` the base model
        answers too (the adapter disabled; for ``Full`` and ``Freeze`` the base reloaded beside the trained model),
        and the result reports both and the rows that got better and worse.

        Example:
            >>> result = tuner.evaluate("val.jsonl", metrics=["rouge_l"], baseline=True)  # doctest: +SKIP
            >>> print(result)  # doctest: +SKIP
            >>> result.to_jsonl("predictions.jsonl")  # doctest: +SKIP
        """
        checked = check_evaluation(  # before anything loads
            metrics, self.objective_used, baseline=baseline, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        items = read_items(data)
        with self._access.using("evaluate()"):
            options = generation_options(self.loaded, items, max_new_tokens=max_new_tokens, batch_size=batch_size)
            result = evaluate(
                self.backend, self._spec(), self.loaded, items, checked, baseline=baseline, options=options
            )
        self.last_evaluation = result
        return result

    def benchmark(
        self,
        tasks: str | Sequence[str],
        *,
        limit: float | None = None,
        include_path: str | Path | None = None,
        num_fewshot: int | None = None,
        batch_size: int = 8,
    ) -> dict[str, dict[str, Any]]:
        """Run lm-evaluation-harness tasks (MMLU, C-Eval, CMMLU, GSM8K, ... or your own YAML tasks in
        ``include_path``) on this tuner's model as it is in memory, with its tokenizer and chat template.

        ``limit`` caps the examples per task (a number, or a fraction below 1). Returns the harness's figures task by
        task, e.g. ``{"gsm8k": {"exact_match,strict-match": 0.41, ...}}``. Needs ``pip install "tunekit[eval]"``;
        the standard tasks download their datasets from the Hugging Face Hub on first use.

        Example:
            >>> scores = tuner.benchmark(["mmlu", "gsm8k"], limit=200)  # doctest: +SKIP
            >>> scores["mmlu"]["acc,none"]  # doctest: +SKIP
        """
        names = check_tasks(tasks, limit)
        if self.objective_used.model_head == "sequence_classification":
            raise IncompatibleError(f"benchmark(): this tuner is a reward model ({self.objective_used.name})")
        with self._access.using("benchmark()"):
            return run_benchmark(
                self.loaded,
                names,
                chat=not isinstance(self.objective_used, CausalLM),
                limit=limit,
                include_path=include_path,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
            )

    def save(self, path: str | Path) -> Path:
        """Write the adapter (or whole model for ``Full``), tokenizer, template and manifest."""
        target = Path(path)
        self._adapters.check_single("save()")
        with self._access.using("save()"):
            check_save(target, self._spec(), self.backend)  # before anything loads
            return write_save(self._trained(), target)

    def export(
        self,
        path: str | Path,
        *,
        format: str = "hf",
        merge: bool = True,
        dtype: str = "auto",
        golden_prompts: Any = None,
        verify: bool = True,
        max_new_tokens: int = 16,
    ) -> ExportResult:
        """Write the trained model for serving, with a model card, and prove it behaves like ``tuner.model``.

        ``format``: ``"hf"`` (a transformers directory with the adapter merged into a full-precision copy
        of the base: safetensors, tokenizer, chat template, generation config with the template's EOS),
        ``"adapter"`` (the peft adapter alone, template and manifest) or ``"gguf"`` (a GGUF file for
        llama.cpp and Ollama, with an Ollama Modelfile: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 and
        Phi-3 / Phi-4 architectures). ``dtype``: ``"auto"`` (the precision the weights are held in),
        ``"fp32"``, ``"bf16"``, ``"fp16"``; for GGUF ``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"``, and the
        k-quants ``"q4_k_m"``, ``"q5_k_m"``, ``"q6_k"`` (made by llama.cpp's quantizer: the ``gguf-quant``
        extra; the result's ``verification.llama_cpp_agreement`` says how often the quantized model's greedy
        answers are the trained model's).

        With ``verify`` (default) the export is reloaded from disk (transformers; llama.cpp too for GGUF
        when llama-cpp-python is installed) and its greedy tokens on the golden prompts (``golden_prompts``,
        or a few from the last fit's eval or training data) are compared with the in-memory model's; a
        mismatch raises :class:`ExportError` naming the prompt and both outputs, and nothing is written
        (a previous export at ``path`` is kept). Returns an :class:`ExportResult` with the sizes (adapter
        against merged model, and why they differ) and the comparison.

        Example:
            >>> result = tuner.export("out/merged", format="hf")  # doctest: +SKIP
            >>> print(result.size_report())  # doctest: +SKIP
            >>> tuner.export("out/gguf", format="gguf", dtype="q8_0")  # doctest: +SKIP
        """
        self._adapters.check_single("export()")
        with self._access.using("export()"):
            check_request(self._spec(), Path(path), format, merge, dtype, max_new_tokens=max_new_tokens)  # before load
            return export_trained(
                self._trained(),
                path,
                format=format,
                merge=merge,
                dtype=dtype,
                golden_prompts=golden_prompts,
                verify=verify,
                max_new_tokens=max_new_tokens,
            )

    def __repr__(self) -> str:
        return f"Tuner({self.model_ref!r}, method={self.method!r}, objective={self._objective_used!r})"


def verify_export(
    path: str | Path, tuner: Tuner, *, golden_prompts: Any = None, max_new_tokens: int = 16, num_prompts: int = 4
) -> Verification:
    """Reload an export from disk and check it against ``tuner``'s in-memory model; raises ExportError on a mismatch.

    Runs the same checks as ``Tuner.export(verify=True)``: the chat template is there, the EOS ids
    include the template's end-of-turn token, the tokenizer encodes the golden prompts as in training,
    and greedy decoding gives the reference tokens (see :mod:`tunekit.export.verify` for the rules).

    Example:
        >>> tuner.export("out/merged")  # doctest: +SKIP
        >>> tk.verify_export("out/merged", tuner).passed  # doctest: +SKIP
        True
    """
    export_format(path)  # not an export: fail before the model loads
    return verify_trained(
        path, tuner._trained(), golden_prompts=golden_prompts, max_new_tokens=max_new_tokens, num_prompts=num_prompts
    )
