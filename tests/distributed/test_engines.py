"""The engine configs (tk.DDP, tk.FSDP, tk.DeepSpeed): validation, translation, incompatibilities.

No process is started here: torchrun's environment is set by hand where a check needs it.
"""

from __future__ import annotations

import json
import os

import pytest

import tunekit as tk
from tunekit.backends.hf.processes import check_distributed, deepspeed_config, engine_args
from tunekit.distributed import shards_parameters, world


def _deepspeed_installed(monkeypatch, installed: bool) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "deepspeed":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def two_ranks(monkeypatch):
    """This process as rank 0 of 2, as torchrun would start it (no process group is needed)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")


def test_engines_by_object_name_or_mapping_and_round_trip():
    assert tk.Training().distributed is None
    assert tk.Training(distributed="fsdp").distributed == tk.FSDP()
    assert tk.Training(distributed="DeepSpeed").distributed == tk.DeepSpeed()
    assert tk.Training(distributed="zero3").distributed == tk.DeepSpeed(stage=3)
    assert tk.Training(distributed={"kind": "ddp", "find_unused_parameters": False}).distributed == tk.DDP(
        find_unused_parameters=False
    )
    for engine in (tk.DDP(bucket_cap_mb=50), tk.FSDP(cpu_offload=True, wrap_classes=["Block"]), tk.DeepSpeed(stage=3)):
        t = tk.Training(distributed=engine)
        assert tk.Training.model_validate_json(t.model_dump_json()) == t
        assert tk.Training(**json.loads(json.dumps(t.model_dump(mode="json")))) == t
        assert t.model_dump()["distributed"]["kind"] == engine.kind
        assert hash(t) == hash(tk.Training(distributed=engine.model_copy()))  # configs stay hashable
    assert hash(tk.DeepSpeed(overrides={"a": {"b": 1}})) == hash(tk.DeepSpeed(overrides={"a": {"b": 1}}))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tk.Training(distributed="fsd"), "'fsd' is not an engine; use 'ddp', 'fsdp' or 'deepspeed'"),
        (lambda: tk.Training(distributed={"cpu_offload": True}), "say which engine with kind="),
        (lambda: tk.Training(fsdp=True), "did you mean 'distributed'?"),
        (lambda: tk.Training(deepspeed={"stage": 3}), "did you mean 'distributed'?"),
        (lambda: tk.FSDP(cpu_ofload=True), "did you mean 'cpu_offload'?"),
        (lambda: tk.FSDP(transformer_layer_cls_to_wrap=["X"]), "did you mean 'wrap_classes'?"),
        (lambda: tk.FSDP(auto_wrap="size", wrap_classes=["X"]), "applies to auto_wrap='transformer' only"),
        (lambda: tk.DeepSpeed(stage=4), "stage must be one of 1, 2 or 3"),
        (lambda: tk.DeepSpeed(zero_stage=3), "did you mean 'stage'?"),
        (lambda: tk.DeepSpeed(stage=2, offload="all"), "offload='all' moves parameters to the CPU, which needs stage"),
        (lambda: tk.DDP(bucket_cap_mb=0), "bucket_cap_mb must be at least 1"),
    ],
)
def test_bad_engine_options_say_what_and_how_to_fix(make, message):
    with pytest.raises(tk.ConfigError, match=None) as info:
        make()
    assert message in str(info.value)


def test_world_from_torchrun_environment(monkeypatch, two_ranks):
    assert world().size == 2 and world().is_main
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    here = world()
    assert (here.rank, here.local_rank, here.size, here.is_main) == (1, 1, 2, False)


def test_no_engine_arguments_in_one_process():
    assert engine_args(tk.Training(distributed=tk.FSDP()), None, world_size=1) == {}


def test_ddp_is_the_default_with_several_processes():
    assert engine_args(tk.Training(), None, world_size=2) == {"ddp_timeout": 1800}
    ddp = tk.DDP(find_unused_parameters=False, bucket_cap_mb=25, timeout_s=60)
    assert engine_args(tk.Training(distributed=ddp), None, world_size=4) == {
        "ddp_timeout": 60,
        "ddp_find_unused_parameters": False,
        "ddp_bucket_cap_mb": 25,
    }


def test_fsdp_reaches_accelerate_as_an_fsdp2_plugin(tiny_llama, tmp_path, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoModelForCausalLM, TrainingArguments

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it; restored after
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    engine = tk.FSDP(reshard_after_forward=False, cpu_offload=True, activation_checkpointing=True, state_dict="sharded")
    extra = engine_args(tk.Training(distributed=engine), model, world_size=2)
    assert extra["fsdp"] is True and extra["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **extra)
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is False
    assert plugin.cpu_offload  # an offload policy
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.activation_checkpointing is True
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    size = engine_args(tk.Training(distributed=tk.FSDP(auto_wrap="size", min_params=1000)), model, world_size=2)
    assert size["fsdp_config"]["auto_wrap_policy"] == "SIZE_BASED_WRAP"
    assert size["fsdp_config"]["min_num_params"] == 1000


def test_fsdp_needs_a_layer_class_to_shard(tiny_llama):
    import torch

    with pytest.raises(tk.IncompatibleError, match="wrap_classes"):
        engine_args(tk.Training(distributed=tk.FSDP()), torch.nn.Linear(2, 2), world_size=2)


def test_deepspeed_config_leaves_batch_and_precision_to_training():
    two = deepspeed_config(tk.DeepSpeed(stage=2))
    assert two["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in two["zero_optimization"]
    assert two["train_micro_batch_size_per_gpu"] == two["gradient_accumulation_steps"] == "auto"
    assert two["bf16"] == {"enabled": "auto"} and "optimizer" not in two
    overrides = {"zero_optimization": {"sub_group_size": 1e9}}
    three = deepspeed_config(tk.DeepSpeed(stage=3, offload="all", overrides=overrides))
    zero = three["zero_optimization"]
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["sub_group_size"] == 1e9 and zero["stage"] == 3  # overrides merge, they do not replace
    assert three["optimizer"]["type"] == "AdamW"
    assert engine_args(tk.Training(distributed=tk.DeepSpeed(stage=3)), None, world_size=8)["deepspeed"] == (
        deepspeed_config(tk.DeepSpeed(stage=3))
    )
    assert shards_parameters(tk.DeepSpeed(stage=3)) and not shards_parameters(tk.DeepSpeed(stage=2))
    assert shards_parameters(tk.FSDP()) and not shards_parameters(tk.DDP()) and not shards_parameters(None)


@pytest.mark.deepspeed
def test_transformers_fills_the_deepspeed_config_from_training(tmp_path):
    # Runs wherever deepspeed is installed (it builds and imports on a CPU machine: `nox -s distributed` installs
    # it); skipped elsewhere, except where TUNEKIT_REQUIRE_DEEPSPEED=1 (that session), where its absence fails.
    if os.environ.get("TUNEKIT_REQUIRE_DEEPSPEED") == "1":
        import deepspeed  # noqa: F401  (an ImportError fails the test: the session promised deepspeed)
    else:
        pytest.importorskip("deepspeed", reason="pip install 'tunekit[deepspeed]' (nox -s distributed installs it)")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    try:
        for engine in (tk.DeepSpeed(stage=2), tk.DeepSpeed(stage=3, offload="all")):
            extra = engine_args(tk.Training(distributed=engine), None, world_size=2)
            batch = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 1e-3}
            args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **batch, **extra)
            config = args.hf_deepspeed_config
            config.trainer_config_process(args)
            assert config.is_zero3() == (engine.stage == 3) and config.is_offload() == (engine.offload != "none")
            values = config.config
            assert (values["train_micro_batch_size_per_gpu"], values["gradient_accumulation_steps"]) == (4, 2)
            assert values["gradient_clipping"] == 1.0
            if engine.offload != "none":
                assert values["optimizer"]["params"]["lr"] == 1e-3
    finally:
        unset_hf_deepspeed_config()  # transformers keeps the last config globally: later loads must not see ZeRO-3
    assert not is_deepspeed_zero3_enabled()


CPU, CUDA = "cpu", "cuda"


@pytest.mark.parametrize(
    ("method", "engine", "device", "error", "message"),
    [
        (tk.LoRA(), tk.FSDP(), CPU, tk.IncompatibleError, "accelerate shards with FSDP on accelerators only"),
        (tk.LoRA(), tk.DeepSpeed(stage=2), CPU, tk.IncompatibleError, "needs CUDA GPUs"),
        (tk.LoRA(quantize="nf4"), tk.FSDP(), CUDA, tk.IncompatibleError, "sharding a bitsandbytes-quantized base"),
        (tk.LoRA(quantize="nf4"), tk.DeepSpeed(stage=3), CUDA, tk.MissingDependencyError, "tunekit[deepspeed]"),
        (tk.PrefixTuning(), tk.FSDP(), CUDA, tk.IncompatibleError, "prompt-based methods"),
        (tk.PromptTuning(), tk.FSDP(), CUDA, tk.IncompatibleError, "use tk.DDP()"),
    ],
)
def test_incompatible_engines_fail_with_the_reason(two_ranks, monkeypatch, method, engine, device, error, message):
    import torch

    _deepspeed_installed(monkeypatch, False)
    with pytest.raises(error) as info:
        check_distributed(method, tk.Training(distributed=engine), torch.device(device))
    assert message in str(info.value)


def test_quantized_or_prompt_methods_under_zero3_are_refused_once_deepspeed_is_there(two_ranks, monkeypatch):
    import torch

    _deepspeed_installed(monkeypatch, True)
    cuda = torch.device("cuda")
    with pytest.raises(tk.IncompatibleError, match="quantize='nf4'"):
        check_distributed(tk.LoRA(quantize="nf4"), tk.Training(distributed=tk.DeepSpeed(stage=3)), cuda)
    with pytest.raises(tk.IncompatibleError, match="PrefixTuning"):
        check_distributed(tk.PrefixTuning(), tk.Training(distributed=tk.DeepSpeed(stage=3)), cuda)
    check_distributed(tk.LoRA(quantize="nf4"), tk.Training(distributed=tk.DeepSpeed(stage=2)), cuda)  # fine
    check_distributed(tk.PrefixTuning(), tk.Training(distributed=tk.DDP()), cuda)
    with pytest.raises(tk.IncompatibleError, match="choose one"):
        both = tk.Training(distributed=tk.FSDP(activation_checkpointing=True), gradient_checkpointing=True)
        check_distributed(tk.LoRA(), both, cuda)


def test_engines_are_ignored_in_one_process():
    import torch

    check_distributed(tk.LoRA(), tk.Training(distributed=tk.FSDP()), torch.device("cpu"))
    check_distributed(tk.LoRA(), tk.Training(distributed=tk.DeepSpeed(stage=3)), torch.device("cpu"))


def test_fit_refuses_an_engine_before_any_weight_loads(two_ranks, tiny_llama, monkeypatch):
    import tunekit.backends.hf.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(models, "load_model", no_loading)
    tuner = tk.Tuner(tiny_llama, training=tk.Training(device="cpu", distributed=tk.FSDP(), max_steps=1))
    with pytest.raises(tk.IncompatibleError, match=r"Training\(distributed=tk.FSDP\(...\)\) needs CUDA GPUs"):
        tuner.fit([{"prompt": "a", "completion": "b"}])


def test_hooks_run_on_rank_0_unless_they_ask_for_every_rank():
    from tunekit.hooks import HookDispatcher, RunContext

    class Seen(tk.Hook):
        def __init__(self):
            self.calls = 0

        def on_step_end(self, ctx):
            self.calls += 1

    class SeenEverywhere(Seen):
        all_ranks = True

    main, everywhere = Seen(), SeenEverywhere()
    ctx = RunContext(rank=1, world_size=2)
    assert not ctx.is_main_process
    HookDispatcher([main, everywhere], ctx).emit("step_end")
    assert (main.calls, everywhere.calls) == (0, 1)
    HookDispatcher([main, everywhere], RunContext()).emit("step_end")
    assert (main.calls, everywhere.calls) == (1, 2)
    assert tk.SampleGenerations(["x"]).all_ranks and not tk.JSONLMetrics().all_ranks and not tk.LossPlot().all_ranks


def test_the_memory_table_of_the_guide_is_what_the_formula_gives():
    from pathlib import Path

    from tunekit.distributed import state_memory_per_gpu

    guide = (Path(__file__).parents[2] / "docs" / "guides" / "distributed.md").read_text(encoding="utf-8")
    total = 6_738_415_616  # Llama-2-7B
    lora = 32 * (4 * 16 * (4096 + 4096) + 2 * 16 * (4096 + 11008) + 16 * (11008 + 4096))  # r=16, all linear
    assert f"{lora / 1e6:.1f} M trainable" in guide
    engines = {
        "`tk.DDP()`": tk.DDP(),
        "`tk.DeepSpeed(stage=2)`": tk.DeepSpeed(stage=2),
        "`tk.DeepSpeed(stage=3)`": tk.DeepSpeed(stage=3),
        "`tk.FSDP()`": tk.FSDP(),
        '`tk.DeepSpeed(stage=2, offload="optimizer")`': tk.DeepSpeed(stage=2, offload="optimizer"),
    }
    for name, engine in engines.items():
        cells = [
            state_memory_per_gpu(total + extra, trainable, engine=engine, processes=n)["total"] / 2**30
            for extra, trainable in ((0, total), (lora, lora))
            for n in (2, 8, 16)
        ]
        assert "| " + name + " | " + " | ".join(f"{c:.1f}" for c in cells) + " |" in guide
    full_ddp = state_memory_per_gpu(total, total, engine=tk.DDP(), processes=8)
    assert full_ddp["total"] == 16 * total  # 2 + 2 + 12 bytes per parameter
    zero3 = state_memory_per_gpu(total, total, engine=tk.DeepSpeed(stage=3), processes=8)
    assert zero3["total"] == pytest.approx(16 * total / 8)
    with pytest.raises(ValueError):
        state_memory_per_gpu(10, 11, engine=None, processes=1)


def test_auto_batch_size_and_deepspeed_skip_are_refused_in_several_processes(two_ranks, monkeypatch):
    import torch

    # One process meeting an out-of-memory error and retrying alone would leave the others in a collective.
    with pytest.raises(tk.IncompatibleError, match=r"auto_batch_size=True\) in several processes"):
        check_distributed(tk.LoRA(), tk.Training(auto_batch_size=True), torch.device("cpu"))
    # DeepSpeed steps inside its backward: a non-finite step cannot be dropped before its update.
    _deepspeed_installed(monkeypatch, True)
    with pytest.raises(tk.IncompatibleError, match="on_nonfinite='skip'"):
        check_distributed(
            tk.LoRA(), tk.Training(distributed=tk.DeepSpeed(stage=2), on_nonfinite="skip"), torch.device("cuda")
        )
    check_distributed(tk.LoRA(), tk.Training(distributed=tk.DDP(), on_nonfinite="skip"), torch.device("cpu"))


def test_a_hook_failure_on_one_process_is_known_on_every_process(monkeypatch):
    import torch.distributed as dist

    from tunekit.backends.hf import processes as hf_distributed
    from tunekit.hooks import RunContext, RunControl

    def all_reduce(flags, op=None):  # what another process's flags bring: its hook failed
        flags[3] = 1

    monkeypatch.setattr(hf_distributed, "_ready", lambda: True)
    monkeypatch.setattr(hf_distributed, "_collective_device", lambda: "cpu")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    ctx = RunContext()
    control = RunControl.of(ctx)
    assert not control.hook_failed
    hf_distributed.share_stop(control)
    assert control.hook_failed and not ctx.stop_requested
