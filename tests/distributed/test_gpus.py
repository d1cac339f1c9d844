"""Several processes on GPUs: each on its own device, FSDP2 and DeepSpeed ZeRO-3 with LoRA.

``gpu`` tests need one CUDA device (``nox -s gpu``); ``multi_gpu`` tests start two processes with
torchrun on two GPUs (``nox -s multi_gpu``, which installs DeepSpeed). Both fail, never skip,
without the devices.
"""

from __future__ import annotations

import json

import pytest
import torch

import tunekit as tk
from tests.distributed.helpers import torchrun
from tunekit.backends.hf.processes import check_distributed, rank_device


@pytest.fixture
def as_rank(monkeypatch):
    def set_rank(rank: int, size: int = 2) -> None:
        monkeypatch.setenv("WORLD_SIZE", str(size))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))

    return set_rank


@pytest.mark.gpu
def test_each_process_uses_the_gpu_of_its_local_rank(as_rank):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    as_rank(0)
    assert rank_device("auto", torch.device("cuda")) == torch.device("cuda", 0)
    assert rank_device("cuda", torch.device("cuda")) == torch.device("cuda", 0)
    with pytest.raises(tk.ConfigError, match="each process uses the GPU of its LOCAL_RANK"):
        rank_device("cuda:0", torch.device("cuda", 0))
    as_rank(torch.cuda.device_count(), size=torch.cuda.device_count() + 1)
    with pytest.raises(tk.IncompatibleError, match="has no GPU"):
        rank_device("auto", torch.device("cuda"))
    as_rank(0)
    for engine in (tk.DDP(), tk.FSDP()):
        check_distributed(tk.LoRA(), tk.Training(distributed=engine), torch.device("cuda", 0))


@pytest.mark.multi_gpu
@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_lora_with_sharded_weights_trains_saves_and_generates(tiny_llama, tmp_path, engine):
    assert torch.cuda.device_count() >= 2, "this test needs two CUDA devices"
    proc = torchrun("sharded", tiny_llama, tmp_path, engine, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1))
    assert (rank0["device"], rank1["device"]) == ("cuda:0", "cuda:1")
    assert rank0["losses"] == pytest.approx(rank1["losses"]) and rank0["losses"][-1] < rank0["losses"][0] - 0.2
    assert rank0["writes"] == {"_write": 1} and rank1["writes"] == {}
    assert rank0["generated"] == rank1["generated"]
    again = tk.load(rank0["saved"], training=tk.Training(device="cuda", precision="fp32"))
    assert again.generate("reverse: 1 2 3", max_new_tokens=8) == rank0["generated"]  # the whole adapter was saved
