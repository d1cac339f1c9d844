"""The script the 2-process tests start with torchrun (one process per rank, gloo on CPU).

``python -m torch.distributed.run --nproc_per_node 2 worker.py SCENARIO MODEL OUT``:

- ``train``: the user's script, unchanged: fit (checkpoints every 3 steps), save, generate; then,
  in the same processes, a second tuner resumes from the step-3 checkpoint and trains on until a
  hook on rank 1 alone asks to stop after step 5.
  Each rank writes what it saw to ``OUT/rank-N.json``.
- ``crash``: rank 1 fails inside its third forward pass; the job must end with that error.
- ``failures SAVED``: writes that fail on rank 0 alone, caught by the script on every rank: a
  ``tk.load(SAVED).save(...)`` with no fit before it (rank 1 must return only once the copy is
  whole), a save whose files cannot be written on rank 0, then a fit whose first checkpoint cannot be
  published on rank 0. Every rank must raise, none may wait for ever, and a save afterwards works.
- ``sharded ENGINE`` (GPUs only, ``fsdp`` or ``zero3``): LoRA with sharded weights on
  ``cuda:LOCAL_RANK``: fit, save (gathered), generate on every rank, load the save and generate.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

import peft  # noqa: E402
import transformers  # noqa: E402

import tunekit as tk  # noqa: E402
import tunekit.save_format  # noqa: E402
import tunekit.saving  # noqa: E402
from tunekit.backends.hf import checkpoints  # noqa: E402
from tunekit.testing import reverse_task  # noqa: E402

STEPS, SAVE_EVERY, PER_RANK_BATCH = 6, 3, 4


def training(batch_size: int, **extra: object) -> tk.Training:
    options: dict[str, object] = {
        "max_steps": STEPS,
        "batch_size": batch_size,
        "learning_rate": 1e-2,
        "log_every": 1,
        "save_every": SAVE_EVERY,
        "max_length": 64,
        "device": "cpu",
        "precision": "fp32",
        "seed": 3,
    }
    return tk.Training(**{**options, **extra})


DATA = reverse_task(96, seed=1)
PROMPT = "reverse: 1 2 3"


class Calls(tk.Hook):
    """Records which events reached this process."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.where: tuple[int, int] | None = None

    def on_fit_start(self, ctx: tk.RunContext) -> None:
        self.events.append("fit_start")
        self.where = (ctx.rank, ctx.world_size)

    def on_log(self, ctx: tk.RunContext, logs: dict[str, float]) -> None:
        self.events.append("log")

    def on_fit_end(self, ctx: tk.RunContext, result: tk.FitResult) -> None:
        self.events.append("fit_end")


class EveryRank(Calls):
    all_ranks = True


class StopOnRank1(tk.Hook):
    """Asks for a stop on rank 1 only: every process must stop after that same step."""

    all_ranks = True

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, ctx: tk.RunContext) -> None:
        if ctx.rank == 1 and ctx.step == self.at:
            ctx.request_stop("rank 1 had enough")


def count_calls(owner: object, name: str, counter: dict[str, int]) -> None:
    original = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        counter[name] = counter.get(name, 0) + 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)


def train(model: str, out: Path) -> None:
    writes: dict[str, int] = {}
    count_calls(tunekit.save_format, "_write", writes)  # tunekit's save: rank 0 only
    count_calls(peft.PeftModel, "save_pretrained", writes)  # adapter files, in checkpoints and saves: rank 0 only
    main_only, every_rank = Calls(), EveryRank()
    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=4),
        training=training(PER_RANK_BATCH),
        hooks=[main_only, every_rank, tk.JSONLMetrics()],
        output_dir=out / "run",
        progress=False,
    )
    bounds: list[bool] = []  # whether each training forward (through DDP's wrapper) got the packed rows' boundaries
    tuner.model.register_forward_pre_hook(
        lambda m, args, kwargs: bounds.append("tunekit_bounds" in kwargs) if m.training else None, with_kwargs=True
    )
    result = tuner.fit(DATA)
    saved = tuner.save(out / "adapter")
    text = tuner.generate(PROMPT, max_new_tokens=8)
    again = tk.load(saved).generate(PROMPT, max_new_tokens=8)  # every rank reads the complete save
    resumed = tk.Tuner(
        model,
        method=tk.LoRA(r=4),
        training=training(PER_RANK_BATCH),
        output_dir=out / "resumed",
        hooks=[StopOnRank1(at=STEPS - 1)],
    )
    after = resumed.fit(DATA, resume=str(out / "run" / f"checkpoint-{SAVE_EVERY}"))
    rank = main_only.where[0] if main_only.where else every_rank.where[0]  # type: ignore[index]
    report = {
        "losses": [h["loss"] for h in result.history if "loss" in h],
        "steps": result.steps,
        "generated": text,
        "generated_after_load": again,
        "main_only_hook": main_only.events,
        "every_rank_hook": every_rank.events,
        "where": every_rank.where,
        "writes": writes,
        "bounds": bounds,
        "resumed_history": [[h["step"], h["loss"]] for h in after.history if "loss" in h],
        "resumed_steps": after.steps,
        "resumed_stop_reason": after.stop_reason,
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")


def crash(model: str, out: Path) -> None:
    # No output_dir: no save_every either (its checkpoints would be deleted; fit refuses that combination).
    training_ = training(PER_RANK_BATCH, save_every=None)
    tuner = tk.Tuner(model, method=tk.LoRA(r=4), training=training_, progress=False)
    rank = int(os.environ["RANK"])
    forwards = [0]

    def fail_on_rank_1(*_: object) -> None:
        forwards[0] += 1
        if rank == 1 and forwards[0] == 3:
            (out / "failed_at").write_text(str(time.time()), encoding="utf-8")
            raise RuntimeError("rank 1 failed on purpose in forward 3")

    tuner.model.get_input_embeddings().register_forward_hook(fail_on_rank_1)
    tuner.fit(DATA)


def _disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _outcome(call: Any) -> str:
    try:
        call()
        return "ok"
    except tk.errors.TunekitError as e:
        return f"{type(e).__name__}: {e}"


def _one_checkpoint(model: str, output_dir: Path) -> tk.Tuner:
    """A LoRA run whose last step (3) writes its one checkpoint."""
    options = training(PER_RANK_BATCH, max_steps=SAVE_EVERY)
    return tk.Tuner(model, method=tk.LoRA(r=4), training=options, output_dir=output_dir, progress=False)


def failures(model: str, out: Path, saved: str) -> None:
    rank = int(os.environ["RANK"])
    report: dict[str, Any] = {}
    loaded = tk.load(saved)  # no fit: no process group yet
    loaded.save(out / "copy")
    report["copy_whole_on_return"] = (out / "copy" / tunekit.saving.MANIFEST).is_file()
    real_save = loaded.backend.save
    if rank == 0:
        loaded.backend.save = _disk_full
    report["failed_save"] = _outcome(lambda: loaded.save(out / "failed"))
    loaded.backend.save = real_save
    report["save_after"] = _outcome(lambda: loaded.save(out / "after"))
    real_publish = checkpoints._publish
    if rank == 0:
        checkpoints._publish = _disk_full  # type: ignore[assignment]
    tuner = _one_checkpoint(model, out / "run")
    report["failed_checkpoint"] = _outcome(lambda: tuner.fit(DATA))
    checkpoints._publish = real_publish  # type: ignore[assignment]
    # The model files cannot be written on rank 0, inside transformers' checkpoint save, which then runs a
    # collective (as FSDP gathers the optimizer state; here a barrier stands in for it).
    real_optimizer_save = transformers.Trainer._save_optimizer_and_scheduler

    def collective_then_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        torch.distributed.barrier()
        return real_optimizer_save(self, *args, **kwargs)

    transformers.Trainer._save_optimizer_and_scheduler = collective_then_save  # type: ignore[method-assign]
    if rank == 0:
        transformers.Trainer._save = _disk_full  # type: ignore[method-assign]
    else:  # rank 1 makes the checkpoint directory (its RNG state) only after rank 0's later writes have failed
        real_rng_save = transformers.Trainer._save_rng_state

        def late_rng_save(self: Any, *args: Any, **kwargs: Any) -> Any:
            time.sleep(2)
            return real_rng_save(self, *args, **kwargs)

        transformers.Trainer._save_rng_state = late_rng_save  # type: ignore[method-assign]
    inside = _one_checkpoint(model, out / "run-inside")
    report["failed_inside_transformers"] = _outcome(lambda: inside.fit(DATA))
    (out / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")


def sharded(model: str, out: Path, engine: str) -> None:
    writes: dict[str, int] = {}
    count_calls(tunekit.save_format, "_write", writes)
    distributed = {"fsdp": tk.FSDP(), "zero3": tk.DeepSpeed(stage=3)}[engine]
    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=4),
        training=training(PER_RANK_BATCH, device="cuda", distributed=distributed),
        output_dir=out / "run",
        progress=False,
    )
    result = tuner.fit(DATA)
    saved = tuner.save(out / "adapter")  # every rank: the shards are gathered, rank 0 writes
    text = tuner.generate(PROMPT, max_new_tokens=8)  # every rank: a forward needs all the shards
    rank = int(os.environ["RANK"])
    report = {
        "losses": [h["loss"] for h in result.history if "loss" in h],
        "device": str(tuner.loaded.device),
        "generated": text,
        "writes": writes,
        "saved": str(saved),
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    scenario, model_dir, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if scenario == "sharded":
        sharded(model_dir, out_dir, sys.argv[4])
    elif scenario == "failures":
        failures(model_dir, out_dir, sys.argv[4])
    else:
        {"train": train, "crash": crash}[scenario](model_dir, out_dir)
