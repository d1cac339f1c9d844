"""tk.RunConfig: YAML run configs, overrides, errors in the user's words, the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunekit as tk
from tunekit.config_file import apply_overrides, run_config_schema


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_methods_and_objectives_by_name_with_options() -> None:
    cfg = tk.RunConfig(model="m", data="d.jsonl", method={"name": "lora", "r": 16, "dora": True}, objective="dpo")
    assert cfg.method == tk.LoRA(r=16, dora=True)
    assert cfg.objective == tk.DPO()
    for spelling, cls in [("prompt_tuning", tk.PromptTuning), ("P-Tuning", tk.PTuning), ("IA3", tk.IA3)]:
        assert type(tk.RunConfig(model="m", data="d", method=spelling).method) is cls
    for spelling, cls in [
        ("causal_lm", tk.CausalLM),
        ("reward_modeling", tk.RewardModeling),
        ("rm", tk.RewardModeling),
    ]:
        assert type(tk.RunConfig(model="m", data="d", objective=spelling).objective) is cls
    # Defaults as in Python: LoRA, objective inferred, default Training; config objects are accepted too.
    plain = tk.RunConfig(model="m", data="d")
    assert plain.method == tk.LoRA() and plain.objective is None and plain.training == tk.Training()
    assert tk.RunConfig(model="m", data="d", method=tk.IA3(), training=tk.Training(epochs=1)).training.epochs == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trainig": {}}, "RunConfig(trainig={}): unknown option 'trainig'; did you mean 'training'?"),
        ({"training": {"learning_rat": 1e-4}}, "training: Training(learning_rat=0.0001): unknown option"),
        ({"training": {"lr": 1e-4}}, "did you mean 'learning_rate'?"),
        ({"method": {"name": "lorra"}}, "method: unknown method 'lorra'; did you mean 'LoRA'?"),
        ({"method": {"name": "lora", "rank": 8}}, "method: LoRA(rank=8): unknown option 'rank'; did you mean 'r'?"),
        ({"method": {"r": 8}}, "method: give the method's name"),
        ({"objective": "dpoo"}, "objective: unknown objective 'dpoo'; did you mean 'DPO'?"),
        ({"objective": {"name": "dpo", "beta": -1}}, "objective: DPO(beta=-1): beta must be"),
        ({"training": "fast"}, "training: expected a mapping of Training options"),
    ],
)
def test_errors_name_the_section_and_the_nearest_valid_name(options, message) -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.RunConfig(model="m", data="d", **options)
    assert message in str(info.value)


def test_from_yaml_resolves_paths_against_the_file_and_applies_overrides(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "local-model").mkdir()
    f = write(
        tmp_path / "cfg" / "run.yaml",
        "model: local-model\nmethod: lora\ntraining: {epochs: 1}\ndata: data/train.jsonl\n"
        "eval_data: /abs/val.jsonl\noutput_dir: ../runs/x\n",
    )
    cfg = tk.RunConfig.from_yaml(f, ["--training.learning_rate=1e-4", "method.r=4", "training.report_to=[tensorboard]"])
    assert Path(cfg.model) == tmp_path / "cfg" / "local-model"
    assert Path(cfg.data) == tmp_path / "cfg" / "data" / "train.jsonl"
    assert cfg.eval_data == str(Path("/abs/val.jsonl"))
    assert Path(cfg.output_dir) == tmp_path / "runs" / "x"
    assert cfg.save_path == tmp_path / "runs" / "x" / "final"
    assert cfg.training.learning_rate == 1e-4 and cfg.training.epochs == 1  # "1e-4" coerced by pydantic
    assert cfg.method == tk.LoRA(r=4) and cfg.training.report_to == ("tensorboard",)
    # A hub id is left alone; the YAML written back loads to the same config.
    hub = tk.RunConfig.from_yaml(write(tmp_path / "hub.yaml", "model: Qwen/Qwen2-0.5B\ndata: t.jsonl\n"))
    assert hub.model == "Qwen/Qwen2-0.5B"
    again = tk.RunConfig.from_yaml(write(tmp_path / "again.yaml", cfg.to_yaml()))
    assert again == cfg


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(tk.ConfigError, match=r"config file not found"):
        tk.RunConfig.from_yaml(tmp_path / "missing.yaml")
    bad = write(tmp_path / "bad.yaml", "model: m\ndata: [unclosed\n")
    with pytest.raises(tk.ConfigError, match=r"bad.yaml: not valid YAML .*line \d+"):
        tk.RunConfig.from_yaml(bad)
    typo = write(tmp_path / "typo.yaml", "model: m\ndata: d\ntraining:\n  learning_rat: 1.0e-4\n")
    with pytest.raises(tk.ConfigError, match=r"typo.yaml: training: .*did you mean 'learning_rate'\?"):
        tk.RunConfig.from_yaml(typo)
    with pytest.raises(tk.ConfigError, match=r"expected a mapping"):
        tk.RunConfig.from_yaml(write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(tk.ConfigError, match=r"RunConfig\(data=None\)|data"):
        tk.RunConfig.from_yaml(write(tmp_path / "nodata.yaml", "model: m\n"))


def test_overrides() -> None:
    assert apply_overrides({"method": "lora"}, ["method.r=16", "training.epochs=1"]) == {
        "method": {"name": "lora", "r": 16},
        "training": {"epochs": 1},
    }
    assert apply_overrides({}, {"training.max_steps": "none"}) == {"training": {"max_steps": None}}
    assert apply_overrides({"data": "a"}, ["data=b c.jsonl"]) == {"data": "b c.jsonl"}
    with pytest.raises(tk.ConfigError, match=r"expected key=value"):
        apply_overrides({}, ["training.lr"])
    with pytest.raises(tk.ConfigError, match=r"data is 'a', not a section"):
        apply_overrides({"data": "a"}, ["data.x=1"])


def test_reward_functions_from_yaml(tmp_path: Path) -> None:
    write(
        tmp_path / "my_rewards.py",
        "def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n",
    )
    (tmp_path / "rm").mkdir()
    f = write(
        tmp_path / "grpo.yaml",
        "model: m\ndata: p.jsonl\nobjective: {name: grpo, reward: ['py:my_rewards:short', rm], num_generations: 4}\n",
    )
    cfg = tk.RunConfig.from_yaml(f)
    short, rm = cfg.objective.reward
    assert short(["p"], ["abc"]) == [-3] and Path(rm) == tmp_path / "rm"


def test_schema_lists_every_method_and_objective_with_its_options() -> None:
    schema = run_config_schema()
    json.dumps(schema)  # serialisable
    assert set(schema["required"]) == {"model", "data"}
    assert schema["additionalProperties"] is False
    methods = [o for o in schema["properties"]["method"]["oneOf"] if "properties" in o]
    from tunekit.methods import registry

    assert {o["title"] for o in methods} == set(registry())
    lora = next(o for o in methods if "LoRA" in o["properties"]["name"]["enum"])
    assert {"r", "alpha", "dora"} <= set(lora["properties"]) and lora["additionalProperties"] is False
    objectives = schema["properties"]["objective"]["anyOf"][0]["oneOf"]
    grpo = next(o for o in objectives if "GRPO" in o.get("properties", {}).get("name", {}).get("enum", []))
    assert "reward" in grpo["properties"]
    assert "learning_rate" in schema["properties"]["training"]["properties"]


def test_paths_are_absolute_so_the_printed_config_reloads_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cfg").mkdir()
    write(tmp_path / "cfg" / "chat.jinja", "{{ messages }}")
    write(
        tmp_path / "cfg" / "run.yaml",
        "model: Qwen/Qwen2-0.5B\ndata: train.jsonl\noutput_dir: out\ntemplate: chat.jinja\n"
        "training: {cache_dir: cache, resume: out/checkpoint-10}\n",
    )
    monkeypatch.chdir(tmp_path)
    cfg = tk.RunConfig.from_yaml("cfg/run.yaml")  # a relative path to the YAML
    base = (tmp_path / "cfg").resolve()
    assert Path(cfg.data) == base / "train.jsonl" and Path(cfg.data).is_absolute()
    assert Path(cfg.output_dir) == base / "out" and Path(cfg.template) == base / "chat.jinja"
    assert Path(cfg.training.cache_dir) == base / "cache"
    assert Path(cfg.training.resume) == base / "out" / "checkpoint-10"
    assert cfg._template_text() == "{{ messages }}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = write(elsewhere / "printed.yaml", cfg.to_yaml())
    monkeypatch.chdir(elsewhere)
    assert tk.RunConfig.from_yaml(printed) == cfg
    # 'auto' and booleans stay what they are.
    for resume in ("auto", "true", "false"):
        f = write(tmp_path / "r.yaml", f"model: m\ndata: d.jsonl\ntraining: {{resume: {resume}}}\n")
        assert tk.RunConfig.from_yaml(f).training.resume == {"auto": "auto", "true": True, "false": False}[resume]


@pytest.mark.parametrize("name", ["missing.jinja", "missing.j2", "missing.txt"])
def test_a_template_file_that_is_not_there_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    f = write(tmp_path / "run.yaml", f"model: m\ndata: d.jsonl\ntemplate: {name}\n")
    with pytest.raises(tk.ConfigError, match=f"template: file not found: .*{name}"):
        tk.RunConfig.from_yaml(f)
    with pytest.raises(tk.ConfigError, match="file not found"):
        tk.RunConfig(model="m", data="d.jsonl", template=str(tmp_path / name)).to_tuner()
    text = "{% for m in messages %}{{ m.content }}{% endfor %}"  # template text is still template text
    assert tk.RunConfig(model="m", data="d.jsonl", template=text)._template_text() == text
