"""Facts written once since the seam issue: the dispatch tables fail alike, one record of the method and objective
for every manifest, one manifest reader, one parameter count, one list of trl's reward keywords, capabilities as
class attributes, and the run description a Tuner hands its backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunekit as tk
from tunekit import _fs
from tunekit.backends.base import RunSpec, builder_for
from tunekit.data import normalise
from tunekit.methods import Method, registry


# --- the dispatch tables ----------------------------------------------------------------------------------
def test_an_unknown_method_and_an_unknown_objective_fail_alike() -> None:
    from tunekit.backends.hf.peft_map import TRANSLATIONS
    from tunekit.backends.hf.trainers import TRAINERS

    class Homemade(Method):
        pass

    class Mine(tk.Objective):
        pass

    with pytest.raises(tk.IncompatibleError, match=r"'hf' backend has no translation of the method Homemade"):
        builder_for(TRANSLATIONS, Homemade(), backend="hf")
    with pytest.raises(tk.IncompatibleError, match=r"'hf' backend has no translation of the objective Mine; it knows"):
        builder_for(TRAINERS, Mine(), backend="hf")

    class MySFT(tk.SFT):  # a subclass trains as its nearest known base
        pass

    assert builder_for(TRAINERS, MySFT(), backend="hf") is TRAINERS[tk.SFT]


# --- one record of "which method and objective" -----------------------------------------------------------
def test_saves_checkpoints_and_exports_record_the_method_and_objective_alike() -> None:
    from tunekit.backends.hf.checkpoints import run_config

    method, objective = tk.LoRA(r=4, dora=True), tk.DPO(beta=0.2)
    spec = RunSpec(model_ref="m", method=method, objective=objective, training=tk.Training())
    config = run_config(spec)
    assert config["method"] == method.record() == {"name": "LoRA", "options": method.model_dump(mode="json")}
    assert config["objective"] == objective.record() and objective.record()["options"]["beta"] == 0.2
    # A record reads back as the same config (what tk.load does with a manifest).
    assert registry()[method.record()["name"]](**method.record()["options"]) == method


# --- one manifest reader, one error behaviour ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not a tunekit save"), ("{not json", "is corrupt"), ("[1, 2]", "is corrupt"), (b"\xff\xfe", "is corrupt")],
    ids=["missing", "not-json", "not-an-object", "not-utf8"],
)
def test_every_manifest_reads_alike(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    from tunekit.backends.hf.checkpoints import read_manifest as read_checkpoint
    from tunekit.save_format import read_manifest as read_save
    from tunekit.tuner import verify_export

    for name in ("tunekit.json", "tunekit-checkpoint.json", "tunekit_export.json"):
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content is not None:
            (tmp_path / name).write_text(content, encoding="utf-8")
    expected = {"not a tunekit save": ("not a tunekit save", "no tunekit-checkpoint.json", "not a tunekit export")}
    save_msg, ckpt_msg, export_msg = expected.get(message, (message, message, message))
    with pytest.raises(tk.CheckpointError, match=save_msg):
        read_save(tmp_path)
    with pytest.raises(tk.CheckpointError, match=ckpt_msg):
        read_checkpoint(tmp_path)
    tuner = tk.Tuner("m", backend=tk.testing.FakeBackend(), progress=False)
    with pytest.raises(tk.ExportError, match=export_msg):
        verify_export(tmp_path, tuner)


def test_read_manifest_gives_the_object(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"a": 1}), encoding="utf-8")
    assert _fs.read_manifest(tmp_path / "m.json", missing="gone", fix="again") == {"a": 1}


# --- one parameter count ------------------------------------------------------------------------------------
def test_parameters_are_counted_once_when_tied() -> None:
    import torch

    from tunekit._torch import count_parameters, unique_parameters

    emb, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "other": torch.nn.Linear(4, 4)})
    model["other"].weight.requires_grad_(False)
    assert count_parameters(model) == (40 + 4, 40 + 16 + 4)
    assert len(unique_parameters(model)) == 3


def test_dtype_names_round_trip() -> None:
    import torch

    from tunekit._torch import dtype_name, torch_dtype

    for name in ("fp32", "bf16", "fp16"):
        assert dtype_name(torch_dtype(name)) == name
    assert torch_dtype("f32") is torch.float32 and torch_dtype("f16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        torch_dtype("q8_0")


# --- one list of trl's reward keywords ------------------------------------------------------------------------
def test_the_reward_wrapper_drops_exactly_the_columns_prompt_only_rows_refuse() -> None:
    from tunekit.backends.hf.rewards import wrap_reward
    from tunekit.data.formats import RESERVED_COLUMNS
    from tunekit.data.rows import PROMPT_TEXT

    seen = {}

    def reward(prompts, completions, **columns):
        seen.update(columns)
        return [1.0] * len(completions)

    extra = {name: [0] for name in RESERVED_COLUMNS if name not in ("prompts", "completions")}
    wrap_reward(reward)(["p"], ["c"], answer=["42"], **{PROMPT_TEXT: [None]}, **extra)
    assert seen == {"answer": ["42"]}
    for name in RESERVED_COLUMNS:  # the same names a prompt-only data set may not use as columns
        with pytest.raises(tk.DatasetError, match=f"field '{name}': this column name is reserved"):
            normalise([{"prompt": "p", name: 1}])


# --- capabilities as class attributes ----------------------------------------------------------------------
def test_which_methods_train_token_rows_is_a_class_attribute() -> None:
    trains = {name for name, cls in registry().items() if cls.trains_token_rows}
    assert trains == {"LoRA", "AdaLoRA", "Full"}


# --- the run description ------------------------------------------------------------------------------------
def test_the_backend_receives_a_run_description_not_the_tuner(tmp_path: Path) -> None:
    backend = tk.testing.FakeBackend(losses=[1.0])
    hook = tk.Hook()
    tuner = tk.Tuner(
        "base-name",
        method=tk.LoRA(r=2),
        training=tk.Training(max_steps=1),
        hooks=[hook],
        output_dir=tmp_path,
        template="{{ messages }}",
        backend=backend,
        progress=False,
    )
    tuner.fit(tk.testing.reverse_task(3, fmt="text"))
    (spec,) = backend.specs
    assert isinstance(spec, RunSpec) and not isinstance(spec, tk.Tuner)
    assert (spec.model_ref, spec.method, spec.training, spec.output_dir, spec.hooks) == (
        "base-name",
        tk.LoRA(r=2),
        tk.Training(max_steps=1),
        tmp_path,
        (hook,),
    )
    assert spec.objective == tk.CausalLM() and spec.template == "{{ messages }}" and spec.progress is False
    with pytest.raises(AttributeError):
        spec.method = tk.Full()  # type: ignore[misc]  # frozen


def test_an_unknown_backend_name_is_a_config_error() -> None:
    """Tuner(backend=...) takes a name or an object with the protocol's methods (typed: mypy checks callers)."""
    with pytest.raises(tk.ConfigError, match="unknown backend"):
        tk.Tuner("m", backend="jax")
