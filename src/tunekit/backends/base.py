"""The seam between ``tk.Tuner`` and whatever trains the model: a run description and the ``Backend`` protocol.

:class:`RunSpec` is a frozen description of one run (the model and tokenizer references, template,
method, objective, training, output directory, adapter path, hooks), built by the Tuner for each
call; nothing below the Tuner receives the Tuner itself. :class:`Backend` lists exactly what callers
use of an engine. The ``hf`` backend (transformers + peft + trl) implements it, and mypy checks that
it does (``_check: type[Backend] = HFBackend`` in ``backends/hf/backend.py``); the test double
:class:`tunekit.testing.FakeBackend` implements it without a model, for applications' own tests.

Example:
    >>> import tunekit as tk
    >>> fake = tk.testing.FakeBackend(losses=[2.0, 1.0])
    >>> tuner = tk.Tuner("any-name", backend=fake, progress=False)
    >>> tuner.fit([{"prompt": "2+2=", "completion": "4"}]).steps
    2
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tunekit.errors import IncompatibleError
from tunekit.hooks import Hook, HookDispatcher, HookErrors
from tunekit.methods import Method
from tunekit.objectives import Objective
from tunekit.plan import SourceFigures
from tunekit.training import Training

if TYPE_CHECKING:
    from tunekit.data.encoding import Encoded
    from tunekit.data.formats import NormalisedData
    from tunekit.data.rows import TrainerRows
    from tunekit.data.templates import Template
    from tunekit.eval_result import EvalResult
    from tunekit.plan import Plan
    from tunekit.results import FitResult

__all__ = ["Backend", "LoadedModel", "RunSpec", "Trained", "VisionRows", "builder_for"]

_Builder = TypeVar("_Builder", bound=Callable[..., Any])


@dataclass
class VisionRows:
    """Rows with images for an objective tunekit tokenises (SFT, CausalLM): the backend encodes them with the model's
    processor (only it knows how many tokens an image becomes), with ``settings`` as for text rows (``max_length``,
    ``train_on``, ``add_eos``, ...). ``skipped``: the rows normalising dropped, with why."""

    examples: list[Any]
    settings: dict[str, Any]
    skipped: list[tuple[int, str]]
    sources: list[SourceFigures] = field(default_factory=list)  # none: rows with images come from one source

    @property
    def rows(self) -> list[int]:
        return [ex.row for ex in self.examples]

    @property
    def num_tokens(self) -> int:
        """0: how many tokens an image becomes is known once the backend's processor encodes the rows."""
        return 0

    def first_image_row(self) -> int:
        """The first row that holds an image."""
        return next(ex.row for ex in self.examples if getattr(ex, "images", ()))


@dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything a backend needs to know about one run, as the Tuner was configured for the call.

    ``objective`` is the objective the run trains: the one given to the Tuner, or the one inferred
    from the data. ``adapter_path`` is set for a tuner made by ``tk.load`` from an adapter save (the
    adapter is put back on ``model_ref``, its base). The field names are the Tuner's attribute names.
    """

    model_ref: Any  # a hub id, a local directory, or a model object
    method: Method
    objective: Objective
    training: Training
    tokenizer_ref: Any = None  # a tokenizer object or directory, when it is not beside the model
    template: str | None = None  # a Jinja chat template replacing the tokenizer's
    template_options: dict[str, Any] | None = None  # passed to the template with every render (enable_thinking=...)
    output_dir: Path | None = None
    reuse_output_dir: bool = False  # write beside files already in output_dir (never over them)
    adapter_path: Path | None = None
    hooks: tuple[Hook, ...] = ()
    hook_errors: HookErrors = "stop"
    progress: bool | None = None


class LoadedModel(Protocol):
    """What a backend's ``load`` returns: the model ready to train or generate, and what it was loaded with."""

    model: Any  # the transformers (or peft) model: Tuner.model
    tokenizer: Any  # with tunekit's chat template and pad token installed: Tuner.tokenizer
    template: Template  # the chat template and its end-of-turn token
    device: Any  # a torch.device
    precision: str  # "fp32", "bf16" or "fp16": what the run computes in


class Backend(Protocol):
    """What tunekit's callers (the Tuner, ``tk.load``, export) use of an engine; nothing else is called.

    Lifecycle of a run: :meth:`preflight` (checks that need no model), :meth:`load` (once, lazily),
    :meth:`fit`. Use of the trained model: :meth:`generate`, :meth:`stream`, :meth:`score`, :meth:`loglikelihood`,
    :meth:`baseline`, :meth:`merge`, :meth:`save`. Queries: :meth:`plan`, :meth:`load_base`. Several processes
    (torchrun): :meth:`gather_weights`, :meth:`join_processes`, :meth:`settle`.
    """

    name: str

    def load(self, spec: RunSpec) -> LoadedModel:
        """Load the model and tokenizer, install the template, apply the method (or reload the adapter)."""
        ...

    def preflight(self, spec: RunSpec, *, resume: bool | str | Path) -> Path | None:
        """Checks that need nothing loaded (trackers, a writable output_dir); returns the checkpoint to resume."""
        ...

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
        """Train ``loaded.model`` on the encoded data, firing ``dispatcher``'s hook events; returns the result.

        The dispatcher's :class:`~tunekit.hooks.RunControl` carries what hooks ask for (a stop, a checkpoint on
        stop, a failure); the backend steers the run by it and appends the logged history to it.
        """
        ...

    def generate(self, loaded: LoadedModel, prompts: list[Any], *, chat: bool, options: dict[str, Any]) -> list[str]:
        """The new text for each prompt (a string, or chat messages rendered with the template when ``chat``)."""
        ...

    def stream(
        self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]
    ) -> Generator[str, None, str]:
        """The new text for one prompt, in pieces as it is generated (for a chat prompt the raw text, markers and
        special tokens included, for :class:`~tunekit.data.replies.ReplyStream` to split); returns what
        :meth:`generate` returns for it. Closing the iterator early stops the generation."""
        ...

    def prompt_length(self, loaded: LoadedModel, prompt: Any, *, chat: bool, options: dict[str, Any]) -> int:
        """How many tokens ``prompt`` is, rendered and encoded as :meth:`generate` would (``options``: its ``tools``
        and ``allow_control_tokens``)."""
        ...

    def context_length(self, loaded: LoadedModel) -> int | None:
        """The most tokens (prompt and answer together) the model takes; None when its config states no limit."""
        ...

    def add_adapter(self, loaded: LoadedModel, name: str, spec: RunSpec) -> None:
        """Put the adapter of another save (``spec``, as :func:`~tunekit.save_format.spec_from_save` read it,
        trained on the same base) on ``loaded``'s model beside its own, under ``name``; IncompatibleError when it
        cannot sit there (another adapter type, another tokenizer or template)."""
        ...

    def adapter(self, loaded: LoadedModel, name: str) -> AbstractContextManager[None]:
        """For the length of a ``with``, ``name``'s adapter is the active one (``"default"``: the model's own,
        ``"base"``: none, the bare base model)."""
        ...

    def score(self, loaded: LoadedModel, items: list[Any], *, max_length: int) -> list[float]:
        """A reward model's score of each item."""
        ...

    def loglikelihood(
        self, loaded: LoadedModel, requests: list[tuple[Any, str]], *, chat: bool, batch_size: int
    ) -> list[tuple[float, int]]:
        """For each ``(prompt, continuation)``: the summed log-probability of the continuation's tokens after the
        prompt (with ``chat``, the continuation is the assistant's answer, end of turn included) and their count."""
        ...

    def baseline(self, spec: RunSpec, loaded: LoadedModel) -> AbstractContextManager[LoadedModel]:
        """The base model, for the length of a ``with``: the adapter disabled (peft's ``disable_adapter``), or for
        methods that change the weights themselves (Full, Freeze) the base reloaded beside the trained model."""
        ...

    def merge(self, loaded: LoadedModel, method: Method) -> Any:
        """A copy of the trained model with the adapter merged into the base weights."""
        ...

    def save(self, loaded: LoadedModel, path: Path, state_dict: dict[str, Any] | None = None) -> None:
        """Write the weights (the adapter, or the whole model) and the tokenizer into the directory ``path``."""
        ...

    def plan(
        self,
        spec: RunSpec,
        train: NormalisedData,
        *,
        loaded: LoadedModel | None,
        load: Callable[[], LoadedModel],
        device_memory: int | None = None,
    ) -> Plan:
        """What fitting ``train`` would cost. ``loaded``: the model, when the caller has loaded it already; else the
        backend builds what it needs without the weights where it can, and calls ``load()`` (which loads the model
        once, for the caller to keep) where it cannot. ``device_memory``: the bytes to compare the estimate with
        (``Plan.fits``), instead of the device's own memory."""
        ...

    def load_base(self, spec: RunSpec, *, precision: str) -> Any:
        """The run's base model alone (``spec.model_ref``, with no method and no adapter; for a ``tk.load`` of an
        adapter save, the base it was put back on), loaded as safely as :meth:`load` loads it, in ``precision``.
        Export merges QLoRA adapters into it and reloads exported adapters onto it."""
        ...

    def gather_weights(self, loaded: LoadedModel, method: Method) -> dict[str, Any] | None:
        """Sharded weights gathered for a save (a collective: every process calls it); None when not sharded."""
        ...

    def join_processes(self, training: Training) -> None:
        """Under torchrun, make sure the processes' group exists (a save with no fit before it)."""
        ...

    def settle(self, error: BaseException | None, *, what: str) -> None:
        """Every process waits here; an error on any one is raised on every one (with one process, ``error``)."""
        ...


@dataclass(frozen=True, eq=False)
class Trained:
    """A loaded model with what made it: what saving and exporting read of a Tuner.

    ``data_summary`` is what the last fit kept of its data (:mod:`tunekit.data.summary`; a loaded save
    carries the one it recorded), ``result`` that fit's result (None for a loaded save).
    """

    spec: RunSpec
    backend: Backend
    loaded: LoadedModel
    data_summary: dict[str, Any] | None = None
    result: FitResult | None = None
    evaluation: EvalResult | None = None  # the last Tuner.evaluate(), shown in an export's model card


def builder_for(table: Mapping[type, _Builder], config: Method | Objective, *, backend: str) -> _Builder:
    """The entry of a backend's dispatch table for ``config``'s class (or the nearest base class that has one).

    Both tables of a backend (methods to adapters, objectives to trainers) fail alike for a class they lack.
    """
    for cls in type(config).__mro__:
        if cls in table:
            return table[cls]
    kind = "method" if isinstance(config, Method) else "objective"
    raise IncompatibleError(
        f"the {backend!r} backend has no translation of the {kind} {config.name}; it knows "
        f"{sorted(c.__name__ for c in table)}"
    )
