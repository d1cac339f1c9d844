"""Behaviour every config shares: frozen, extra="forbid", suggestions, round trips."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, get_args, get_origin

import pytest
import yaml
from pydantic import ValidationError

import tunekit as tk
from tunekit._config import Config, format_validation_error, suggest
from tunekit.distributed import ENGINES
from tunekit.methods import registry
from tunekit.objectives import OBJECTIVES, Objective
from tunekit.optimizers import OPTIONS

# Derived from the registries (what tk.load and Training(distributed=...) read), never a hand-written list: a new
# method, objective or distributed engine goes through every test below, and test_every_config_is_covered_here fails
# until it has its NON_DEFAULTS row.
ALL_CONFIGS: list[type[Config]] = [
    *registry().values(), *OBJECTIVES.values(), *ENGINES.values(), *OPTIONS.values(), tk.Training
]  # fmt: skip

# One non-default, valid value per field, to check that round trips keep every option.
NON_DEFAULTS: dict[type[Config], dict[str, Any]] = {
    tk.LoRA: {
        "r": 16,
        "alpha": 8,
        "dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
        "target_parameters": [],  # non-default in VARIANTS (it excludes dora)
        "dora": True,
        "rslora": True,
        "init": "gaussian",
        "quantize": "nf4",
        "vision_tower": "lora",
        "projector": "full",
    },
    tk.Full: {},
    tk.Freeze: {"last_layers": 3, "modules": ["lm_head"]},
    tk.LoHa: {"r": 4, "alpha": 16, "rank_dropout": 0.1, "module_dropout": 0.1, "target_modules": ["q_proj"]},
    tk.LoKr: {
        "r": 4,
        "alpha": 16,
        "rank_dropout": 0.1,
        "module_dropout": 0.1,
        "decompose_both": True,
        "decompose_factor": 8,
        "target_modules": ["q_proj"],
    },
    tk.AdaLoRA: {
        "init_r": 16,
        "target_r": 4,
        "alpha": 8,
        "dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
        "warmup_share": 0.2,
        "final_share": 0.3,
        "update_every": 10,
        "beta1": 0.9,
        "beta2": 0.95,
        "orth_reg_weight": 0.1,
    },
    tk.VeRA: {
        "r": 128,
        "dropout": 0.1,
        "d_initial": 0.2,
        "target_modules": ["q_proj", "v_proj"],
        "projection_seed": 7,
        "save_projection": False,
    },
    tk.OFT: {
        "block_size": 16,
        "target_modules": ["q_proj"],
        "module_dropout": 0.1,
        "constrained": True,
        "eps": 1e-4,
        "block_share": True,
    },
    tk.IA3: {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    tk.PromptTuning: {"num_virtual_tokens": 8, "init_text": "Reverse the digits."},
    tk.PrefixTuning: {"num_virtual_tokens": 8, "projection": True, "projection_hidden_size": 32},
    tk.PTuning: {
        "num_virtual_tokens": 8,
        "encoder": "lstm",
        "encoder_hidden_size": 32,
        "encoder_layers": 1,
        "encoder_dropout": 0.1,
    },
    tk.SFT: {"train_on_prompt": True, "train_on": "last_assistant", "reasoning": "drop"},
    tk.CausalLM: {"add_eos": False},
    tk.RewardModeling: {"center_rewards": 0.01},
    tk.DPO: {"beta": 0.3, "loss": "ipo", "label_smoothing": 0.1, "simpo_gamma": 1.0},
    tk.KTO: {"beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.5, "loss": "apo_zero_unpaired"},
    tk.ORPO: {"beta": 0.25},
    tk.GRPO: {
        "reward": ["runs/rm", "runs/rm2"],
        "reward_weights": [1.0, 0.5],
        "num_generations": 4,
        "max_completion_length": 64,
        "temperature": 0.7,
        "beta": 0.04,
        "epsilon": 0.1,
        "num_iterations": 2,
        "loss": "grpo",
        "scale_rewards": "batch",
    },
    tk.RLOO: {
        "reward": ["runs/rm"],
        "reward_weights": [2.0],
        "num_generations": 4,
        "max_completion_length": 64,
        "temperature": 0.7,
        "beta": 0.1,
        "epsilon": 0.1,
        "num_iterations": 2,
        "normalize_advantages": True,
    },
    tk.DDP: {"kind": "ddp", "find_unused_parameters": True, "bucket_cap_mb": 50, "timeout_s": 600},
    tk.FSDP: {
        "kind": "fsdp",
        "reshard_after_forward": False,
        "cpu_offload": True,
        "auto_wrap": "size",
        "wrap_classes": None,  # non-default in VARIANTS: it applies to auto_wrap="transformer" only
        "min_params": 1000,
        "activation_checkpointing": True,
        "state_dict": "sharded",
        "timeout_s": 600,
    },
    tk.DeepSpeed: {
        "kind": "deepspeed",
        "stage": 3,
        "offload": "all",
        "overrides": {"train_batch_size": 8},
        "timeout_s": 60,
    },
    tk.Training: {
        "epochs": 1.5,
        "max_steps": 100,
        "learning_rate": 1e-4,
        "batch_size": 2,
        "grad_accum": 4,
        "max_length": 256,
        "seed": 7,
        "precision": "bf16",
        "device": "cuda:1",
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "optimizer": "galore",
        "optimizer_options": {
            "rank": 64,
            "update_proj_gap": 50,
            "proj_type": "left",
            "target_modules": ("q_proj",),
            "scale": 0.5,
        },
        "activation_offload": True,
        "max_grad_norm": None,
        "gradient_checkpointing": True,
        "log_every": 5,
        "eval_every": 50,
        "eval_metrics": ("exact_match", "rouge_l"),
        "save_every": 25,
        "on_bad_rows": "skip",
        "trust_remote_code": True,
        "report_to": ("tensorboard", "mlflow"),
        "resume": False,
        "keep_checkpoints": 3,
        "force_resume": True,
        "on_nonfinite": "skip",
        "auto_batch_size": True,
        "allow_pickle": True,
        "allow_control_tokens": True,
        "max_pixels": 1_003_520,
        "min_pixels": 3136,
        "resize_images": False,
        "packing": True,
        "tokens_per_batch": 4096,
        "compile": True,
        "cache": False,
        "cache_dir": "/tmp/tunekit-cache",
        "data_workers": 3,
        "distributed": {
            "kind": "deepspeed",
            "stage": 3,
            "offload": "all",
            "overrides": {"zero_optimization": {"sub_group_size": 100000000}},
            "timeout_s": 600,
        },
    },
}

NON_DEFAULTS |= {
    tk.SGDOptions: {"momentum": 0.5, "nesterov": True},
    tk.LionOptions: {"beta1": 0.95, "beta2": 0.98},
    tk.GaLoreOptions: {
        "rank": 32, "update_proj_gap": 100, "proj_type": "right", "target_modules": ("q_proj", "v_proj"), "scale": 1.0
    },
    tk.APOLLOOptions: {
        "rank": 1, "update_proj_gap": 100, "proj_type": "reverse_std", "target_modules": ("mlp",), "proj": "svd",
        "scale_type": "tensor", "scale": 128.0,
    },
    tk.MuonOptions: {"momentum": 0.9, "nesterov": False, "ns_steps": 6, "adjust_lr": "original"},
}  # fmt: skip

# Options that cannot all be non-default at once: each variant updates NON_DEFAULTS[cls], and every field must be
# non-default in NON_DEFAULTS or in one of its variants (each of which also round-trips).
VARIANTS: dict[type[Config], list[dict[str, Any]]] = {
    tk.FSDP: [{"auto_wrap": "transformer", "wrap_classes": ("LlamaDecoderLayer",)}],
    # peft adapts a bare parameter without DoRA, dropout or PiSSA: target_parameters goes with the defaults of those.
    tk.LoRA: [{"target_parameters": ["mlp.experts.down_proj"], "dora": False, "dropout": 0.0, "init": "default"}],
}


def ids(cls: type) -> str:
    return cls.__name__


def _single_valued(cls: type[Config], name: str) -> bool:
    """A field with one possible value (the engines' ``kind`` tag): it has no non-default to try."""
    return (
        get_origin(cls.model_fields[name].annotation) is Literal
        and len(get_args(cls.model_fields[name].annotation)) == 1
    )


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def test_every_config_is_covered_here() -> None:
    # A new method, objective or config must get an entry in NON_DEFAULTS (and so these tests).
    assert set(ALL_CONFIGS) == set(NON_DEFAULTS)
    # Every objective and engine the product offers is in those registries (so in ALL_CONFIGS).
    assert {tk.RewardModeling, tk.DPO, tk.KTO, tk.ORPO, tk.GRPO, tk.RLOO, tk.DDP, tk.FSDP, tk.DeepSpeed} <= set(
        ALL_CONFIGS
    )
    concrete = {c for c in _subclasses(Objective) if c.__module__.startswith("tunekit.") and c.__name__ in tk.__all__}
    assert concrete <= set(OBJECTIVES.values()), concrete - set(OBJECTIVES.values())


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_non_defaults_cover_every_field(cls: type[Config]) -> None:
    assert set(NON_DEFAULTS[cls]) == set(cls.model_fields)
    obj = cls(**NON_DEFAULTS[cls])
    assert obj.model_dump() == NON_DEFAULTS[cls]
    defaults = cls()
    variants = [obj] + [cls(**{**NON_DEFAULTS[cls], **v}) for v in VARIANTS.get(cls, [])]
    for name in cls.model_fields:
        if not _single_valued(cls, name):
            assert any(getattr(o, name) != getattr(defaults, name) for o in variants), name


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
@pytest.mark.parametrize("which", ["default", "custom", "variants"])
def test_round_trip_through_dump_json_and_yaml(cls: type[Config], which: str) -> None:
    if which == "variants":
        for variant in VARIANTS.get(cls, []):
            _round_trip(cls(**{**NON_DEFAULTS[cls], **variant}))
        return
    _round_trip(cls() if which == "default" else cls(**NON_DEFAULTS[cls]))


def _round_trip(obj: Config) -> None:
    cls = type(obj)
    assert cls(**obj.model_dump()) == obj
    assert cls.from_dict(json.loads(obj.model_dump_json())) == obj
    assert cls.model_validate_json(obj.model_dump_json()) == obj
    assert cls.model_validate(obj.model_dump()) == obj
    text = yaml.safe_dump(obj.model_dump(mode="json"))
    assert cls.from_dict(yaml.safe_load(text)) == obj
    # plain model_dump() is YAML-safe too (no tuples, enums or other Python-only types)
    assert cls.from_dict(yaml.safe_load(yaml.safe_dump(obj.model_dump()))) == obj


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_configs_are_frozen(cls: type[Config]) -> None:
    obj = cls()
    name = next(iter(cls.model_fields), "anything")
    with pytest.raises(tk.ConfigError, match="frozen") as info:
        setattr(obj, name, getattr(obj, name, 1))
    assert str(info.value).startswith(f"{cls.__name__}({name}=")
    assert "model_copy(update=" in str(info.value)
    assert obj == cls()


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_unknown_option_is_a_config_error(cls: type[Config]) -> None:
    with pytest.raises(tk.ConfigError, match=r"unknown option 'no_such_option'") as info:
        cls(no_such_option=1)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{cls.__name__}(no_such_option=1): ")


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_every_field_is_documented(cls: type[Config]) -> None:
    assert cls.__doc__ and "Example:" in cls.__doc__
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_model_validate_raises_config_error_not_pydantic(cls: type[Config]) -> None:
    with pytest.raises(tk.ConfigError) as info:
        cls.model_validate({"no_such_option": 1})
    assert not isinstance(info.value, ValidationError)
    with pytest.raises(tk.ConfigError, match="unknown option 'no_such_option'"):
        cls.model_validate_json('{"no_such_option": 1}')


def test_model_validate_keeps_the_constructor_message() -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.LoRA.model_validate({"r": 0})
    assert str(info.value) == "LoRA(r=0): r must be at least 1 (typical values: 8, 16, 32)"
    with pytest.raises(tk.ConfigError) as info:
        tk.LoRA.model_validate_json('{"r": 0}')
    assert str(info.value) == "LoRA(r=0): r must be at least 1 (typical values: 8, 16, 32)"


def test_invalid_json_is_a_config_error() -> None:
    with pytest.raises(tk.ConfigError, match=r"^Training: invalid JSON \("):
        tk.Training.model_validate_json("{epochs: 3")


@pytest.mark.parametrize("data", [[1, 2], "epochs: 3", None, 3])
def test_from_dict_needs_a_mapping(data: Any) -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.Training.from_dict(data)
    assert str(info.value) == f"Training: expected a mapping of options, got {type(data).__name__}"


def test_model_copy_update_is_validated() -> None:
    lora = tk.LoRA(r=8)
    assert lora.model_copy(update={"dora": True}) == tk.LoRA(r=8, alpha=16, dora=True)
    assert lora.model_copy() == lora
    assert lora.model_copy(deep=True) == lora
    with pytest.raises(tk.ConfigError, match=r"^LoRA\(r=0\): r must be at least 1"):
        lora.model_copy(update={"r": 0})
    with pytest.raises(tk.ConfigError, match="unknown option 'rank'; did you mean 'r'"):
        lora.model_copy(update={"rank": 4})


def test_configs_compare_by_value() -> None:
    assert tk.Training(epochs=2) == tk.Training(epochs=2.0)
    assert tk.Training(epochs=2) != tk.Training(epochs=3)
    assert tk.SFT() != tk.CausalLM()
    assert hash(tk.Training(epochs=2)) == hash(tk.Training(epochs=2))


def test_several_problems_give_one_line_each() -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.Training(epochs=0, batch_size=0, learnin_rate=1e-4)
    assert str(info.value).splitlines() == [
        "Training(epochs=0): epochs must be greater than 0",
        "Training(batch_size=0): batch_size must be at least 1",
        "Training(learnin_rate=0.0001): unknown option 'learnin_rate'; did you mean 'learning_rate'?",
    ]


def test_config_with_no_options_says_so() -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.Full(r=8)
    assert str(info.value) == "Full(r=8): unknown option 'r'; Full takes no options"


class TestSuggest:
    OPTIONS: ClassVar[list[str]] = ["learning_rate", "batch_size", "epochs", "max_length"]

    @pytest.mark.parametrize(
        ("typed", "expected"),
        [
            ("learning_rat", "did you mean 'learning_rate'?"),
            ("Learning_Rate", "did you mean 'learning_rate'?"),
            ("learning-rate", "did you mean 'learning_rate'?"),
            ("batchsize", "did you mean 'batch_size'?"),
            ("epoch", "did you mean 'epochs'?"),
        ],
    )
    def test_close_spellings(self, typed: str, expected: str) -> None:
        assert suggest(typed, self.OPTIONS) == expected

    def test_alias_wins_over_spelling(self) -> None:
        assert suggest("lr", self.OPTIONS, {"lr": "learning_rate"}) == "did you mean 'learning_rate'?"
        assert suggest("LR", self.OPTIONS, {"lr": "learning_rate"}) == "did you mean 'learning_rate'?"

    def test_nothing_close_lists_the_options(self) -> None:
        assert suggest("zzz", self.OPTIONS) == "valid options are batch_size, epochs, learning_rate, max_length"


def test_format_validation_error_without_data_uses_pydantic_input() -> None:
    from pydantic import BaseModel, Field

    class M(BaseModel):
        x: int = Field(1, ge=1)

    with pytest.raises(ValidationError) as info:
        M(x=0)
    assert format_validation_error("M", ["x"], info.value) == "M(x=0): x must be at least 1"


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=ids)
def test_copy_deepcopy_and_pickle(cls: type[Config]) -> None:
    import copy
    import pickle

    obj = cls(**NON_DEFAULTS[cls])
    assert copy.copy(obj) == obj
    assert copy.deepcopy(obj) == obj
    assert pickle.loads(pickle.dumps(obj)) == obj
