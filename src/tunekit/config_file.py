"""``tk.RunConfig``: a whole run (model, method, objective, training, data) as one validated config.

This is what ``tunekit fit config.yaml`` reads. The YAML mirrors the Python API::

    model: Qwen/Qwen2-0.5B
    method: {name: lora, r: 8}        # or just: method: lora
    objective: sft                    # optional: inferred from the data's columns
    training: {epochs: 3, learning_rate: 2.0e-4, batch_size: 8}
    data: data/train.jsonl            # relative paths are read from the YAML file's folder
    eval_data: data/val.jsonl         # or {path: data/val.jsonl, columns: {messages: dialog}, roles: {...}}
                                      # data may be a dataset name (org/name, with split/subset in {path: ...})
                                      # or a mixture: {sources: {a.jsonl: 0.7, b.json: 0.3}, size: 1000}
    output_dir: runs/qa               # the trained tuner is saved to runs/qa/final

Every level rejects unknown keys with the nearest valid name (``trainig`` -> ``training``,
``learning_rat`` -> ``learning_rate``), like the Python configs.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_serializer, field_validator
from pydantic.json_schema import GenerateJsonSchema

from tunekit._config import Config
from tunekit.data import load_rows
from tunekit.data.mapping import Data
from tunekit.data.mixture import Mix
from tunekit.data.sources import looks_like_name
from tunekit.data.templates import check_template_options
from tunekit.errors import ConfigError
from tunekit.methods import LoRA, Method, registry
from tunekit.objectives import OBJECTIVES, Objective
from tunekit.objectives.online_rl import PY_PREFIX, resolve_reward_name
from tunekit.output_dir import claim
from tunekit.testing import tiny_model
from tunekit.training import Training
from tunekit.tuner import Tuner

__all__ = ["TINY_MODEL", "RunConfig", "apply_overrides"]

# `model: tiny` (or `tiny:llama`, `tiny:qwen2`) builds a tiny random model with tunekit.testing: for
# trying a config and for testing one in CI, with no download. Its tokenizer is trained on the data.
TINY_MODEL = "tiny"

# Common names people write for a method or objective, mapped to tunekit's class names.
_ALIASES = {
    "full_finetuning": "Full",
    "fft": "Full",
    "prompt": "PromptTuning",
    "prefix": "PrefixTuning",
    "p_tuning": "PTuning",
    "reward": "RewardModeling",
    "reward_model": "RewardModeling",
    "rm": "RewardModeling",
    "clm": "CausalLM",
    "pretraining": "CausalLM",
    "causal_lm": "CausalLM",
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def _pick(kind: str, spec: Any, classes: Mapping[str, type[Config]]) -> tuple[type[Config], dict[str, Any]]:
    """The class and options a ``{name: ..., **options}`` mapping (or a bare name) asks for."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                f"{kind}: give the {kind}'s name, e.g. {{name: {next(iter(classes)).lower()}, ...}}, got {dict(spec)!r}"
            )
    else:
        raise ConfigError(f"{kind}: expected a name or a mapping with a 'name', got {type(spec).__name__} {spec!r}")
    by_key = {_key(n): cls for n, cls in classes.items()}
    by_key.update({_key(a): classes[n] for a, n in _ALIASES.items() if n in classes})
    cls = by_key.get(_key(name))
    if cls is None:
        names = {_key(n): n for n in classes} | {_key(a): n for a, n in _ALIASES.items() if n in classes}
        close = difflib.get_close_matches(_key(name), list(names), n=1, cutoff=0.6)
        hint = f"did you mean {names[close[0]]!r}?" if close else f"valid names are {', '.join(classes)}"
        command = " (`tunekit methods` lists them)" if kind == "method" else ""
        raise ConfigError(f"{kind}: unknown {kind} {name!r}; {hint}{command}")
    return cls, options


def _build(kind: str, spec: Any, classes: Mapping[str, type[Config]]) -> Any:
    cls, options = _pick(kind, spec, classes)
    try:
        if isinstance(options.get("reward"), (str, list)):
            options["reward"] = _import_rewards(options["reward"])
        return cls(**options)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{kind}: {e}") from None


def _import_rewards(reward: str | list[Any]) -> list[Any]:
    """``py:module:function`` entries become the functions (imported now, while the YAML's folder is
    importable); other strings are reward model paths."""
    items = reward if isinstance(reward, list) else [reward]
    return [resolve_reward_name(r) if isinstance(r, str) and r.startswith(PY_PREFIX) else r for r in items]


def _dump(value: Config) -> dict[str, Any]:
    return {"name": type(value).__name__, **value.model_dump(mode="json", exclude_none=True)}


class RunConfig(Config):
    """A whole fine-tuning run as one config: what ``tunekit fit config.yaml`` reads.

    ``method`` and ``objective`` are given by name with their options (``{name: lora, r: 8}``, or
    ``lora`` alone) or as config objects; ``training`` takes :class:`tunekit.Training`'s fields.
    :meth:`from_yaml` reads a file, resolving relative paths against the file's folder, and applies
    command-line style overrides (``training.learning_rate=1e-4``). ``model: tiny`` builds a tiny
    random model with :func:`tunekit.testing.tiny_model` (no download) for trying a config out.

    Example:
        >>> import tunekit as tk
        >>> cfg = tk.RunConfig(model="Qwen/Qwen2-0.5B", method={"name": "lora", "r": 16}, data="train.jsonl")
        >>> cfg.method.r, cfg.training.epochs
        (16, 3.0)
        >>> tuner = cfg.to_tuner()  # loads nothing yet
        >>> result = tuner.fit(cfg.data, eval_data=cfg.eval_data)  # doctest: +SKIP
    """

    model: str = Field(
        description="A hub id, a local model directory, or 'tiny' / 'tiny:llama' / 'tiny:qwen2' for a tiny random "
        "model built locally (for trying a config; it learns only toy tasks)."
    )
    method: Method = Field(default_factory=LoRA, description="Which parameters train: {name: lora, r: 8}, or a name.")
    objective: Objective | None = Field(
        None, description="What signal trains them: {name: dpo, beta: 0.1}, or a name; default: inferred from data."
    )
    training: Training = Field(default_factory=Training, description="tk.Training's fields.")
    data: str | Data | Mix = Field(
        description="The training data file (.jsonl, .json, .csv, .parquet), a dataset directory or name (org/name), "
        "or {path: ..., columns: {...}, roles: {...}, split: ..., subset: ...} for one with its own column, key and "
        "role names or a split (tk.Data); several sources: {sources: [...], weights: [...], size: ...} (tk.Mix)."
    )
    eval_data: str | Data | Mix | None = Field(
        None,
        description="Held-out data, evaluated at the end (and every eval_every); a path or name, {path, columns, "
        "roles, split}, or {sources: [...]}.",
    )
    output_dir: str | None = Field(
        None, description="Checkpoints and logs; the trained tuner goes to <output_dir>/final."
    )
    reuse_output_dir: bool = Field(
        False,
        description="Write into an output_dir that holds other files, beside them (never over them); by default "
        "such a directory is refused.",
    )
    save: str | None = Field(None, description="Where to save the trained tuner; default <output_dir>/final.")
    template: str | None = Field(
        None, description="A Jinja chat template (or a .jinja file) to use instead of the tokenizer's."
    )
    template_options: dict[str, Any] | None = Field(
        None,
        description="Options the chat template is rendered with in training and generation, e.g. "
        "{enable_thinking: false} for a Qwen3-style model that answers without reasoning.",
    )

    _aliases: ClassVar[dict[str, str]] = {
        "model_name": "model",
        "base_model": "model",
        "model_name_or_path": "model",
        "peft": "method",
        "adapter": "method",
        "loss": "objective",
        "trainer": "objective",
        "train": "training",
        "args": "training",
        "training_args": "training",
        "train_data": "data",
        "train_file": "data",
        "dataset": "data",
        "eval": "eval_data",
        "eval_file": "eval_data",
        "validation_data": "eval_data",
        "output": "output_dir",
        "chat_template": "template",
        "chat_template_kwargs": "template_options",
        "enable_thinking": "template_options",
    }

    @field_validator("template_options", mode="before")
    @classmethod
    def _check_template_options(cls, value: Any) -> Any:
        try:
            return check_template_options(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Any:
        return v if isinstance(v, Method) else _build("method", v, registry())

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, Objective) else _build("objective", v, OBJECTIVES)

    @field_validator("data", "eval_data", mode="before")
    @classmethod
    def _data(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, list):  # several sources, all rows of each
            v = {"sources": v}
        if not isinstance(v, Mapping):
            return v
        try:
            return Mix(**v) if "sources" in v else Data(**v)
        except ConfigError as e:
            raise ConfigError(f"{info.field_name}: {e}") from None

    @field_validator("training", mode="before")
    @classmethod
    def _training(cls, v: Any) -> Any:
        if isinstance(v, Training):
            return v
        if not isinstance(v, Mapping):
            raise ConfigError(f"training: expected a mapping of Training options, got {type(v).__name__} {v!r}")
        try:
            return Training(**v)
        except ConfigError as e:
            raise ConfigError(f"training: {e}") from None

    @field_serializer("method", "objective")
    def _dump_named(self, value: Config | None) -> dict[str, Any] | None:
        return None if value is None else _dump(value)

    # --- files --------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RunConfig:
        """Read a YAML (or JSON) run config; relative paths in it are read from the file's folder.

        ``overrides`` are ``"section.key=value"`` strings (values parsed as YAML, then validated
        like the file's) or a mapping of dotted keys; their paths are relative to the current folder.

        Example:
            >>> import tunekit as tk
            >>> cfg = tk.RunConfig.from_yaml("run.yaml", ["training.learning_rate=1e-4"])  # doctest: +SKIP
        """
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a directory, not a config file; pass the YAML file, e.g. {path / 'run.yaml'}")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options (model:, method:, data:, ...), got {data!r:.80}")
        # Absolute: the config printed back (--print-config, to_yaml) loads the same from any folder.
        try:
            data = _resolve_paths(data, path.parent.resolve())
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        data = apply_overrides(data, overrides)
        try:
            with _importable(path.parent):  # `reward: py:rewards:fn` finds rewards.py beside the YAML
                cfg = cls(**data)
            cfg._template_text()  # a template file that is not there fails now, not after the model loads
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return cfg

    def to_yaml(self) -> str:
        """The config as YAML, loadable again with :meth:`from_yaml`."""
        import yaml

        return str(yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True))

    def to_tuner(self, **kwargs: Any) -> Tuner:
        """A :class:`tunekit.Tuner` for this config (a ``tiny`` model is built first); ``kwargs``
        (``hooks``, ``progress``, ...) go to the Tuner."""
        template = self._template_text()
        return Tuner(
            self._model_path(),
            method=self.method,
            objective=self.objective,
            training=self.training,
            output_dir=self.output_dir,
            reuse_output_dir=self.reuse_output_dir,
            template=template,
            template_options=self.template_options,
            **kwargs,
        )

    def _template_text(self) -> str | None:
        """The chat template: the file's text when ``template`` names a file (.jinja, .j2, .txt), else itself."""
        template = self.template
        if template is None or not template.endswith(_TEMPLATE_FILES):
            return template
        if not Path(template).is_file():
            raise ConfigError(f"template: file not found: {template}")
        return Path(template).read_text(encoding="utf-8")

    @property
    def save_path(self) -> Path | None:
        """Where ``tunekit fit`` saves the trained tuner: ``save``, else ``<output_dir>/final``."""
        if self.save is not None:
            return Path(self.save)
        return Path(self.output_dir) / "final" if self.output_dir is not None else None

    def _model_path(self) -> str:
        name, _, arch = self.model.partition(":")
        if name != TINY_MODEL:
            return self.model
        if arch not in ("", "llama", "qwen2"):
            raise ConfigError(f"model={self.model!r}: a tiny model is 'tiny', 'tiny:llama' or 'tiny:qwen2'")

        sources = self.data.sources if isinstance(self.data, Mix) else [self.data]
        texts = [" ".join(_strings(row)) for source in sources for row in load_rows(source)]
        if self.output_dir:
            claim(
                Path(self.output_dir), reuse=self.reuse_output_dir, write=True
            )  # the run's directory is tunekit's before it writes
            where = Path(self.output_dir) / "tiny-model"
        else:
            where = Path(tempfile.mkdtemp(prefix="tunekit-"))
        # initializer_range=0.2: random logits with a usable scale, so adapters learn a toy task from scratch.
        return str(tiny_model(where, arch=arch or "llama", texts=texts, initializer_range=0.2))  # type: ignore[arg-type]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _where(e: Any) -> str:
    mark = getattr(e, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "see the line above"


def read_yaml(path: Path) -> Any:
    """A YAML file's data; ConfigError (with the line and the cause) for text that is not UTF-8, not YAML, or that
    gives a key twice in one mapping (PyYAML keeps the last one silently)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise ConfigError(
                        f"{path}: key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); YAML would "
                        "keep only the last one: delete or merge one of them"
                    )
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not valid UTF-8 (byte {e.object[e.start]:#04x} on line {line}); save the file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        cause = f"{context}: {problem}" if context and problem and context not in problem else problem
        hint = "; indent with spaces, not tabs" if "'\\t'" in str(problem) else ""
        raise ConfigError(f"{path}: not valid YAML ({cause}; {_where(e)}){hint}") from None


_TEMPLATE_FILES = (".jinja", ".j2", ".txt")  # a template value ending so names a file, not template text


def _resolve_data(value: Any, base: Path) -> Any:
    """A config's data with relative paths read from ``base``; a dataset name (``org/name``) that is no file or
    directory there stays a name. Mixtures (``{sources: [...]}`` or a list) resolve each source."""
    if isinstance(value, str):
        if not value or Path(value).is_absolute() or (looks_like_name(value) and not (base / value).exists()):
            return value
        return os.path.normpath(base / value)
    if isinstance(value, list):
        return [_resolve_data(v, base) for v in value]
    if isinstance(value, Mapping) and "sources" in value:
        sources = value["sources"]
        if isinstance(sources, Mapping):  # {path: weight}
            sources = {_resolve_data(k, base): w for k, w in sources.items()}
        elif isinstance(sources, list):
            sources = [_resolve_data(v, base) for v in sources]
        return {**value, "sources": sources}
    if isinstance(value, Mapping):
        return {k: _resolve_data(v, base) if k in ("path", "source") else v for k, v in value.items()}
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data, output, saved-model, template-file, cache and checkpoint paths are read from the YAML's folder."""
    out = dict(data)
    for key in ("data", "eval_data"):  # a path or name, {path: ..., columns: ...}, or a mixture of them
        if key in out:
            out[key] = _resolve_data(out[key], base)
    for key in ("output_dir", "save", "template", "path", "source"):
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            if key != "template" or value.endswith(_TEMPLATE_FILES):
                out[key] = os.path.normpath(base / value)
    training = out.get("training")
    if isinstance(training, Mapping):
        training = dict(training)
        for key in ("cache_dir", "resume", "resume_from_checkpoint"):  # resume_from_checkpoint: resume's alias
            value = training.get(key)
            if isinstance(value, str) and value and value != "auto" and not Path(value).expanduser().is_absolute():
                training[key] = os.path.normpath(base / value)
        out["training"] = training
    model = out.get("model")
    if isinstance(model, str) and not Path(model).is_absolute() and (base / model).exists():
        out["model"] = os.path.normpath(base / model)  # a local directory; anything else stays a hub id
    elif isinstance(model, str) and _is_path(model) and not Path(model).expanduser().exists():
        where = Path(model).expanduser() if Path(model).expanduser().is_absolute() else base / model
        raise ConfigError(
            f"model: model path does not exist: {model!r} (read from the config file's folder: "
            f"{os.path.normpath(where)}); pass a local model directory or a hub id (organisation/name)"
        )
    objective = out.get("objective")
    if isinstance(objective, Mapping) and isinstance(objective.get("reward"), (list, str)):
        rewards = objective["reward"] if isinstance(objective["reward"], list) else [objective["reward"]]
        resolved = [
            os.path.normpath(base / r) if isinstance(r, str) and not r.startswith("py:") and (base / r).exists() else r
            for r in rewards
        ]
        out["objective"] = {**objective, "reward": resolved}
    return out


def _is_path(ref: str) -> bool:
    """Whether a model reference can only be a local path (a hub id is ``name`` or ``organisation/name``)."""
    return (
        ref.startswith((".", "~", "/", "\\"))
        or Path(ref).is_absolute()
        or ref.endswith(("/", "\\"))
        or ref.count("/") > 1
        or "\\" in ref
    )


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder.resolve()))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder.resolve()))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a config mapping: ``training.learning_rate=1e-4``, ``method.r=16``.

    String values are parsed as YAML (``1e-4``, ``true``, ``[q_proj, v_proj]``); pydantic then
    validates them like values in the file. A method or objective given by name alone becomes
    ``{name: ...}`` when one of its options is overridden.

    Example:
        >>> from tunekit.config_file import apply_overrides
        >>> apply_overrides({"method": "lora"}, ["method.r=16", "training.epochs=1"])
        {'method': {'name': 'lora', 'r': 16}, 'training': {'epochs': 1}}
    """
    import yaml

    items = overrides.items() if isinstance(overrides, Mapping) else (_split(o) for o in overrides)
    out: dict[str, Any] = _copy(data)
    for dotted, value in items:
        if isinstance(value, str) and value.strip():
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass  # not YAML: kept as the string it is
            # PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4); pydantic turns it into a float.
            if isinstance(value, str) and value.strip().lower() == "none":
                value = None
        keys = [k.replace("-", "_") for k in dotted.split(".")]
        if not all(keys):
            raise ConfigError(f"override {dotted!r}: expected section.key=value, e.g. training.learning_rate=1e-4")
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if isinstance(child, str) and k in ("method", "objective"):
                child = {"name": child}
            elif not isinstance(child, dict):
                if child is not None:
                    where = ".".join(keys[: i + 1])
                    raise ConfigError(f"override {dotted!r}: {where} is {child!r}, not a section with keys")
                child = {}
            node[k] = child
            node = child
        node[keys[-1]] = value
    return out


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _split(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. training.learning_rate=1e-4")
    return key.strip().removeprefix("--"), value


class _Schema(GenerateJsonSchema):
    """JSON Schema generation that describes function rewards by their YAML spelling."""

    def callable_schema(self, schema: Any) -> dict[str, Any]:
        return {"type": "string", "description": "'py:module:function' (a Python reward function)"}


def run_config_schema() -> dict[str, Any]:
    """The JSON Schema of a run config file, for editors (what ``tunekit schema`` prints).

    ``method`` and ``objective`` list every class with its own options, chosen by ``name``.
    """
    schema = RunConfig.model_json_schema(schema_generator=_Schema)
    schema["title"] = "tunekit run config"
    props = schema["properties"]
    props["method"] = _choices("method", registry(), props["method"].get("description"))
    objective = _choices("objective", OBJECTIVES, props["objective"].get("description"))
    props["objective"] = {"anyOf": [objective, {"type": "null"}], "description": objective.pop("description")}
    props["training"] = {**Training.model_json_schema(schema_generator=_Schema), "description": "tk.Training's fields."}
    schema.setdefault("$defs", {}).pop("Method", None)
    schema["$defs"].pop("Objective", None)
    schema["$defs"].pop("Training", None)
    if not schema["$defs"]:
        del schema["$defs"]
    return schema


def _choices(kind: str, classes: Mapping[str, type[Config]], description: str | None) -> dict[str, Any]:
    options: list[dict[str, Any]] = []
    for name, cls in classes.items():
        sub = cls.model_json_schema(schema_generator=_Schema)
        sub.pop("$defs", None)
        names = sorted({name, name.lower()})
        sub["properties"] = {"name": {"enum": names, "description": f"the {kind}"}, **sub.get("properties", {})}
        sub["required"] = ["name", *sub.get("required", [])]
        options.append(sub)
        options.append({"enum": names, "title": f"{name} with its defaults"})
    return {"oneOf": options, "description": description or kind}
