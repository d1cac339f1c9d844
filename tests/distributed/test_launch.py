"""``tunekit launch``: the torchrun / accelerate commands it builds, and a real 2-process launch."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.cli.launch import launch_command

TORCHRUN = ["python", "-m", "torch.distributed.run"]


def test_one_node_two_processes():
    assert launch_command("train.py", nproc=2, python="python") == [
        *TORCHRUN, "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "train.py",
    ]  # fmt: skip


def test_two_nodes_eight_gpus_each_on_node_0_and_node_1():
    for rank in (0, 1):
        assert launch_command(
            "config.yaml", nproc=8, nnodes=2, node_rank=rank, master_addr="10.0.0.1", python="python"
        ) == [
            *TORCHRUN, "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", str(rank),
            "--master_addr", "10.0.0.1", "--master_port", "29500", "-m", "tunekit", "fit", "config.yaml",
        ]  # fmt: skip


def test_script_arguments_and_accelerate():
    assert launch_command("t.py", ["--lr", "1e-4"], nproc=2, master_port=2222, python="python") == [
        *TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--node_rank", "0",
        "--master_addr", "127.0.0.1", "--master_port", "2222", "t.py", "--lr", "1e-4",
    ]  # fmt: skip
    assert launch_command(
        "run.yml", nproc=4, nnodes=2, node_rank=1, master_addr="h", backend="accelerate", python="python"
    ) == [
        "python", "-m", "accelerate.commands.launch", "--num_processes", "8", "--num_machines", "2", "--multi_gpu",
        "--machine_rank", "1", "--main_process_ip", "h", "--main_process_port", "29500",
        "-m", "tunekit", "fit", "run.yml",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc": 0}, "--nproc 0: must be a whole number >= 1"),
        ({"nproc": 2, "nnodes": 2}, "pass --master-addr HOST"),
        ({"nproc": 2, "nnodes": 2, "node_rank": 2, "master_addr": "h"}, "node ranks go from 0 to 1"),
        ({"nproc": 2, "master_port": 70000}, "must be a port number"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(tk.ConfigError) as info:
        launch_command("t.py", **kwargs)
    assert message in str(info.value)


def test_bad_target():
    with pytest.raises(tk.ConfigError, match=r"expected a Python script \(.py\) or a config file"):
        launch_command("notes.txt", nproc=2)


def test_cli_dry_run_prints_the_command(capsys):
    assert main(["launch", "--nproc", "8", "--nnodes", "2", "--node-rank", "0", "--master-addr", "HOST",
                 "--dry-run", "config.yaml"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    assert printed.endswith(
        "-m torch.distributed.run --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr HOST --master_port 29500 "
        "-m tunekit fit config.yaml"
    )
    assert main(["launch", "--nproc", "2", "--nnodes", "2", "--dry-run", "c.yaml"]) == 2  # an error, on one line
    assert "pass --master-addr HOST" in capsys.readouterr().err


def test_cli_runs_a_missing_script_as_an_error(capsys, tmp_path):
    assert main(["launch", "--nproc", "2", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow  # ~15 s; test_two_processes' failing-rank test launches the worker with `tunekit launch` too
@pytest.mark.distributed
def test_launch_starts_two_processes_and_passes_their_exit_status_on(tmp_path, monkeypatch):
    script = tmp_path / "hello.py"
    script.write_text(
        "import os, pathlib, sys\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "(out / f\"rank-{os.environ['RANK']}-of-{os.environ['WORLD_SIZE']}\").write_text('', encoding='utf-8')\n"
        "sys.exit(3 if sys.argv[2] == 'fail' and os.environ['RANK'] == '1' else 0)\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["launch", "--nproc", "2", str(script), str(tmp_path), "fail"]) != 0  # rank 1 exits with 3
    assert sorted(p.name for p in tmp_path.glob("rank-*")) == ["rank-0-of-2", "rank-1-of-2"]
