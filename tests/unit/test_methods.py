"""Methods: LoRA, Full and the registry every backend and the CLI read."""

from __future__ import annotations

from typing import Any

import pytest

import tunekit as tk
from tunekit.methods import Method, registry


def lora_message(**options: Any) -> str:
    with pytest.raises(tk.ConfigError) as info:
        tk.LoRA(**options)
    return str(info.value)


class TestRegistry:
    def test_holds_the_public_methods_by_name(self) -> None:
        reg = registry()
        assert reg["LoRA"] is tk.LoRA
        assert reg["Full"] is tk.Full
        assert "Method" not in reg

    def test_is_a_copy(self) -> None:
        reg = registry()
        reg.clear()
        assert "LoRA" in registry()

    @pytest.mark.parametrize("name", sorted(registry()))
    def test_every_method_builds_with_defaults_and_describes_itself(self, name: str) -> None:
        cls = registry()[name]
        method = cls()
        assert isinstance(method, Method)
        assert method.name == name
        assert getattr(tk, name) is cls  # re-exported at top level
        described = method.describe()
        assert set(described) == {"mergeable", "gradient_checkpointing", "needs_step_callback", "objectives", "adapter"}
        assert all(isinstance(described[k], bool) for k in described if k != "objectives")
        assert 0 < cls.default_learning_rate < 1

    @pytest.mark.parametrize("name", sorted(registry()))
    def test_methods_import_neither_torch_nor_peft(self, name: str) -> None:
        import ast
        import sys
        from pathlib import Path

        module = sys.modules[registry()[name].__module__]
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert imported.isdisjoint({"torch", "peft", "transformers", "trl"}), imported


class TestLoRA:
    def test_defaults(self) -> None:
        assert tk.LoRA().model_dump() == {
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": "all-linear",
            "target_parameters": [],
            "dora": False,
            "rslora": False,
            "init": "default",
            "quantize": None,
            "vision_tower": "frozen",
            "projector": "frozen",
        }

    @pytest.mark.parametrize(("r", "alpha"), [(1, 2), (8, 16), (16, 32), (64, 128)])
    def test_alpha_defaults_to_twice_r(self, r: int, alpha: int) -> None:
        assert tk.LoRA(r=r).alpha == alpha
        assert tk.LoRA(r=r, alpha=None).alpha == alpha

    def test_explicit_alpha_is_kept(self) -> None:
        assert tk.LoRA(r=16, alpha=16).alpha == 16

    def test_capabilities(self) -> None:
        lora = tk.LoRA()
        assert lora.describe() == {
            "mergeable": True,
            "gradient_checkpointing": True,
            "needs_step_callback": False,
            "objectives": "all",
            "adapter": True,
        }
        assert tk.LoRA.default_learning_rate == 2e-4
        assert lora.supports("SFT") and lora.supports("CausalLM")

    @pytest.mark.parametrize("r", [0, -1, -100])
    def test_r_below_one(self, r: int) -> None:
        assert lora_message(r=r) == f"LoRA(r={r}): r must be at least 1 (typical values: 8, 16, 32)"

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({"r": 5000}, "LoRA(r=5000): r must be at most 4096"),
            ({"r": 8.5}, "LoRA(r=8.5): r must be a whole number"),
            ({"r": "abc"}, "LoRA(r='abc'): r must be a whole number"),
            ({"alpha": 0}, "LoRA(alpha=0): alpha must be at least 1"),
            ({"dropout": 1.0}, "LoRA(dropout=1.0): dropout must be less than 1"),
            ({"dropout": -0.1}, "LoRA(dropout=-0.1): dropout must be at least 0"),
            ({"dropout": float("nan")}, "LoRA(dropout=nan): dropout must be a finite number (not inf or nan)"),
            ({"init": "kaiming"}, "LoRA(init='kaiming'): init must be one of 'default', 'gaussian' or 'pissa'"),
            ({"dora": "sometimes"}, "LoRA(dora='sometimes'): dora must be True or False"),
            (
                {"target_modules": []},
                "LoRA(target_modules=[]): target_modules is empty; use 'all-linear' or name at least one module",
            ),
            (
                {"target_modules": "q_proj"},
                "LoRA(target_modules='q_proj'): target_modules must be 'all-linear' or a list of module names, "
                "e.g. ['q_proj']",
            ),
            (
                {"target_modules": "all_linear"},
                "LoRA(target_modules='all_linear'): target_modules must be 'all-linear' (with a hyphen) "
                "or a list of module names",
            ),
            (
                {"target_modules": ["q_proj", 3]},
                "LoRA(target_modules=['q_proj', 3]): target_modules must be 'all-linear' or a list of module "
                "names (strings)",
            ),
            (
                {"target_modules": 5},
                "LoRA(target_modules=5): target_modules must be 'all-linear' or a list of module names (strings)",
            ),
        ],
    )
    def test_invalid_values_name_the_value_and_the_fix(self, options: dict[str, Any], expected: str) -> None:
        assert lora_message(**options) == expected

    def test_target_modules_list_or_tuple(self) -> None:
        assert tk.LoRA(target_modules=["q_proj", "v_proj"]).target_modules == ["q_proj", "v_proj"]
        assert tk.LoRA(target_modules=("q_proj",)).target_modules == ["q_proj"]
        assert tk.LoRA(target_modules="all-linear").target_modules == "all-linear"

    @pytest.mark.parametrize(
        ("typed", "meant"),
        [
            ("rank", "r"),
            ("lora_r", "r"),
            ("lora_alpha", "alpha"),
            ("alpah", "alpha"),
            ("lora_dropout", "dropout"),
            ("use_dora", "dora"),
            ("use_rslora", "rslora"),
            ("init_lora_weights", "init"),
            ("target_module", "target_modules"),
            ("targets", "target_modules"),
        ],
    )
    def test_misspelled_or_peft_option_suggests_the_tunekit_name(self, typed: str, meant: str) -> None:
        assert lora_message(**{typed: 8}) == f"LoRA({typed}=8): unknown option {typed!r}; did you mean {meant!r}?"

    def test_rank_does_not_suggest_dora(self) -> None:
        # 'rank' is as close to 'dora' as difflib's default cutoff; what users mean is 'r'.
        assert "'dora'" not in lora_message(rank=8)

    def test_frozen(self) -> None:
        lora = tk.LoRA(r=8)
        with pytest.raises(tk.ConfigError, match=r"^LoRA\(r=16\): configs are frozen"):
            lora.r = 16  # type: ignore[misc]
        assert lora.r == 8

    def test_round_trip_keeps_the_derived_alpha(self) -> None:
        lora = tk.LoRA(r=32)
        dumped = lora.model_dump()
        assert dumped["alpha"] == 64
        assert tk.LoRA(**dumped) == lora


class TestFull:
    def test_capabilities(self) -> None:
        full = tk.Full()
        assert full.name == "Full"
        assert full.model_dump() == {}
        assert full.describe() == {
            "mergeable": False,
            "gradient_checkpointing": True,
            "needs_step_callback": False,
            "objectives": "all",
            "adapter": False,
        }
        assert tk.Full.default_learning_rate == 2e-5
        assert full.supports("SFT")

    def test_full_and_lora_are_different_configs(self) -> None:
        assert tk.Full() != tk.LoRA()
        assert tk.Full() == tk.Full()


def test_supports_reads_the_objectives_capability() -> None:
    class Limited(tk.LoRA):
        objectives = frozenset({"SFT"})

    try:
        assert Limited().supports("SFT")
        assert not Limited().supports("CausalLM")
        assert Limited().describe()["objectives"] == ["SFT"]
    finally:
        # keep the registry as the library ships it, for tests that iterate over it
        from tunekit.methods import base

        base._REGISTRY.pop("Limited", None)


def test_lora_target_parameters_are_checked_before_anything_loads() -> None:
    """``LoRA(target_parameters=...)`` (peft's bare-parameter adapters, for fused MoE experts): a list of names, and
    not with the options peft's ParamWrapper refuses (DoRA, dropout, PiSSA), each named in the error."""
    assert tk.LoRA().target_parameters == []
    assert tk.LoRA(target_parameters=["mlp.experts.down_proj"]).target_parameters == ["mlp.experts.down_proj"]
    with pytest.raises(tk.ConfigError, match=r"list of parameter names, e.g. \['mlp.experts.down_proj'\]"):
        tk.LoRA(target_parameters="mlp.experts.down_proj")
    with pytest.raises(tk.ConfigError, match="without spaces"):
        tk.LoRA(target_parameters=[" mlp.experts.down_proj"])
    for options, named in (
        ({"dora": True}, "dora=True"),
        ({"dropout": 0.1}, "dropout > 0"),
        ({"init": "pissa"}, "init='pissa'"),
    ):
        with pytest.raises(tk.ConfigError, match=f"target_parameters cannot be combined with {named}"):
            tk.LoRA(target_parameters=["mlp.experts.down_proj"], **options)
    tk.LoRA(target_parameters=["mlp.experts.down_proj"], rslora=True)  # what ParamWrapper supports goes through
