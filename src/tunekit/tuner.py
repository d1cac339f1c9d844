"""``tk.Tuner``: composes a model, a Method, an Objective and Training; holds no training logic."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.backends import get_backend
from tunekit.data import encode_examples, load_rows, normalise
from tunekit.data.cache import cached_encode
from tunekit.data.encoding import Encoded
from tunekit.data.formats import NormalisedData
from tunekit.data.rows import TrainerRows, prepare_rows
from tunekit.errors import ConfigError, IncompatibleError
from tunekit.hooks import Hook, HookErrors, RunContext, check_hook_errors
from tunekit.methods import LoRA, Method
from tunekit.objectives import SFT, CausalLM, Objective, infer_objective
from tunekit.results import FitResult
from tunekit.training import Training

if TYPE_CHECKING:
    from tunekit.export import ExportResult
    from tunekit.plan import Plan
    from tunekit.run import Run

__all__ = ["Tuner"]

logger = logging.getLogger("tunekit")


def _infer_objective(fmt: str) -> Objective:
    return infer_objective(fmt)  # text -> CausalLM, preference pairs -> DPO, labelled rows -> KTO, else SFT


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
        output_dir: where checkpoints and logs go (default: a temporary directory, removed after).
        tokenizer: a tokenizer object or path, when it is not beside the model.
        template: a Jinja chat template to use instead of the tokenizer's.
        backend: ``"hf"``.

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
        tokenizer: Any = None,
        template: str | None = None,
        backend: str = "hf",
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
        self._active_run: Run | None = None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tokenizer_ref = tokenizer
        self.template = template
        self.adapter_path: Path | None = None  # set by tk.load for adapter checkpoints
        self.backend = get_backend(backend)
        self._loaded: Any = None
        self._objective_used: Objective | None = objective
        self._last_context: RunContext | None = None
        self.last_result: FitResult | None = None
        # Rows, formats and a few prompts of the last data fit saw: the model card and export verification use them.
        self.data_summary: dict[str, Any] | None = None
        if objective is not None:
            self._check_compatible(objective)
        if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise ConfigError(f"Tuner(output_dir={str(output_dir)!r}): this path is a file, not a directory")

    # --- lazily loaded escape hatches -------------------------------------------------------------
    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._loaded = self.backend.load(self)
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

    # --- data -------------------------------------------------------------------------------------
    def _check_compatible(self, objective: Objective) -> None:
        objective.check_ready()  # e.g. GRPO without a reward
        if not self.method.supports(objective.name):
            raise IncompatibleError(
                f"{self.method.name} does not support the {objective.name} objective; "
                f"it supports {sorted(self.method.objectives or [])}"
            )

    def _normalise(self, data: Any, what: str) -> NormalisedData:
        norm = normalise(load_rows(data), on_bad_rows=self.training.on_bad_rows)
        # Inferred from the data until a run succeeds; after that the tuner keeps what it trained.
        if self.objective is None and self.last_result is None and what == "training":
            self._objective_used = None
        objective = self._objective_used or _infer_objective(norm.format)
        if norm.format not in objective.data_formats:
            raise IncompatibleError(
                f"the {what} data is in the {norm.format!r} format, which {objective.name} cannot train on; "
                f"{objective.name} takes {sorted(objective.data_formats)}"
                + (" (raw text trains with tk.CausalLM())" if norm.format == "text" else "")
            )
        if self._objective_used is None:
            self._check_compatible(objective)
            self._objective_used = objective
        for _row, reason in norm.skipped:
            logger.warning("skipped %s", reason)
        return norm

    def _encode(self, norm: NormalisedData, *, tokenizer: Any = None) -> Encoded | TrainerRows:
        obj = self.objective_used
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if not obj.tokenised_by_tunekit:  # preference and RL rows: trl renders them with the same template
            rows = prepare_rows(
                tokenizer,
                norm,
                max_length=self.training.max_length,
                whole_pairs=obj.model_head == "sequence_classification",
                on_bad_rows=self.training.on_bad_rows,
            )
            rows.skipped = norm.skipped + rows.skipped
            for _row, reason in rows.skipped[len(norm.skipped) :]:
                logger.warning("skipped %s", reason)
            if rows.truncated:
                logger.warning(
                    "%d of %d rows are longer than max_length=%d; their answers will be truncated",
                    rows.truncated,
                    len(rows.records),
                    self.training.max_length,
                )
            return rows
        settings: dict[str, Any] = {
            "max_length": self.training.max_length,
            "train_on_prompt": getattr(obj, "train_on_prompt", False),
            "add_eos": getattr(obj, "add_eos", True),
            "on_bad_rows": self.training.on_bad_rows,
        }
        enc = cached_encode(  # a second run on the same data, tokenizer and settings skips tokenising
            lambda: encode_examples(tokenizer, norm.examples, **settings),
            tokenizer,
            norm.examples,
            {"objective": obj.name, **settings},
            enabled=self.training.cache,
            directory=self.training.cache_dir,
        )
        for _row, reason in enc.skipped:  # rows that tokenised to nothing to learn (normalise logged its own)
            logger.warning("skipped %s", reason)
        enc.skipped = norm.skipped + enc.skipped
        if enc.truncated:
            logger.warning(
                "%d of %d examples were longer than max_length=%d and were truncated",
                enc.truncated,
                len(enc.input_ids),
                self.training.max_length,
            )
        return enc

    def prepare(self, data: Any) -> Encoded | TrainerRows:
        """Validate, template and tokenise ``data`` as ``fit`` would, without training."""
        return self._encode(self._normalise(data, "training"))

    def plan(self, data: Any, eval_data: Any = None) -> Plan:
        """What ``fit(data)`` would cost, without training: a :class:`tunekit.Plan`.

        Exact trainable and total parameters, the examples, tokens and optimizer steps ``fit``
        will see, and the estimated peak memory (weights, gradients, optimizer state,
        activations); on CUDA, whether it fits. The model's weights are not loaded when the tuner
        has not loaded them yet (the model is built on the meta device).

        Example:
            >>> plan = tk.Tuner("Qwen/Qwen2-0.5B").plan("train.jsonl")  # doctest: +SKIP
            >>> print(plan)  # doctest: +SKIP
        """
        from tunekit.backends.hf.planning import make_plan

        self._check_not_training("plan()")
        return make_plan(self, data, eval_data)

    # --- the verbs ----------------------------------------------------------------------------------
    def fit(self, data: Any, *, eval_data: Any = None, resume: bool | str | Path | None = None) -> FitResult:
        """Train on ``data`` (a path, list of dicts, datasets.Dataset or DataFrame).

        Returns a :class:`FitResult`; the trained weights stay in ``tuner.model``, ready for
        :meth:`generate` and :meth:`save`. ``resume`` (default: ``Training.resume``, ``"auto"``)
        continues from a checkpoint: ``"auto"`` the newest complete one in ``output_dir`` of a run
        that did not finish (else start afresh), ``True`` the newest, or a ``checkpoint-N``
        directory; the optimizer, schedule, random state and position in the data are restored, so
        pass the same data (a different config or data raises ``CheckpointError``).
        """
        from tunekit.run import execute, prepare

        plan = prepare(self, data, eval_data, resume)
        self._remember_data(plan)
        return execute(self, plan)

    def start(self, data: Any, *, eval_data: Any = None, resume: bool | str | Path | None = None) -> Run:
        """Like :meth:`fit`, in a background thread: returns a :class:`tunekit.Run` at once.

        The data, the resume request, trackers and hooks are checked before it returns (errors
        raise here); loading and training go on in the background. See :class:`tunekit.Run` for
        ``events()``, ``progress``, ``cancel()`` and ``wait()``.
        """
        from tunekit.run import Run, prepare

        plan = prepare(self, data, eval_data, resume)
        self._remember_data(plan)
        return Run(self, plan)

    def _remember_data(self, plan: Any) -> None:
        from tunekit.export.prompts import summarise_data

        self.data_summary = summarise_data(plan.train, plan.eval)

    def _check_not_training(self, what: str) -> None:
        run = self._active_run
        if run is not None and not run.done and threading.current_thread() is not run._thread:
            raise ConfigError(
                f"{what}: this Tuner is training in the background; call it after run.wait() (or run.cancel() "
                "and run.wait()), or from a hook, which runs between steps"
            )

    def generate(self, prompt: Any, **options: Any) -> Any:
        """Continue ``prompt`` with the training template; returns only the new text.

        ``prompt`` is a string, a list of chat messages, or a list of either (then a list comes
        back). Options go to ``transformers``' ``generate`` (greedy by default, at most 256 new
        tokens; ``max_new_tokens``, ``do_sample``, ``temperature``, ...). Generation stops at the
        template's end-of-turn token.
        """
        self._check_not_training("generate()")
        single = isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            return []
        for p in prompts:
            if not isinstance(p, (str, list)):
                raise ConfigError(f"generate(): expected a string or a list of chat messages, got {type(p).__name__}")
        if self.objective_used.model_head == "sequence_classification":
            raise IncompatibleError(
                f"generate(): this tuner is a reward model ({self.objective_used.name}); it scores text and does "
                "not generate: use tuner.score([...])"
            )
        chat = options.pop("chat", not isinstance(self.objective_used, CausalLM))
        outs = self.backend.generate(self.loaded, prompts, chat=chat, options=options)
        return outs[0] if single else outs

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
        if self.objective_used.model_head != "sequence_classification":
            raise IncompatibleError(
                f"score() needs a reward model, and this tuner trains {self.objective_used.name}; train one with "
                "objective=tk.RewardModeling() or load one with tk.load(path)"
            )
        if isinstance(texts, (str, tuple, dict)) or (isinstance(texts, list) and texts and isinstance(texts[0], dict)):
            one = "conversation" if isinstance(texts, list) else type(texts).__name__
            raise ConfigError(f"score(): pass a list of items, e.g. score([item]), not a single {one}")
        items = list(texts)
        if not items:
            return []
        return list(self.backend.score(self.loaded, items, max_length=self.training.max_length))

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
        return self.backend.merge(self.loaded, self.method)

    def save(self, path: str | Path) -> Path:
        """Write the adapter (or whole model for ``Full``), tokenizer, template and manifest."""
        from tunekit.saving import save_tuner

        self._check_not_training("save()")
        return save_tuner(self, Path(path))

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
        llama.cpp and Ollama, Llama and Qwen2 architectures, with an Ollama Modelfile). ``dtype``:
        ``"auto"`` (the precision the weights are held in), ``"fp32"``, ``"bf16"``, ``"fp16"``; for GGUF
        ``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"``.

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
        from tunekit.export import export_tuner

        self._check_not_training("export()")
        return export_tuner(
            self,
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
