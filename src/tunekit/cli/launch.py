"""``tunekit launch``: start a script or a YAML config in several processes, on one or more nodes.

It builds the torchrun (or accelerate) command and runs it (``--dry-run`` prints it instead):
tunekit starts no process of its own, so what runs is exactly what torchrun documents.

Example:
    >>> from tunekit.cli.launch import launch_command
    >>> launch_command("train.py", nproc=2, python="python")
    ['python', '-m', 'torch.distributed.run', '--standalone', '--nnodes', '1', '--nproc_per_node', '2', 'train.py']

From the shell::

    tunekit launch --nproc 2 train.py                       # one node, two processes
    tunekit launch --nproc 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 config.yaml   # on node 0
    tunekit launch --nproc 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 config.yaml   # on node 1
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tunekit.errors import ConfigError

__all__ = ["add_launch_parser", "launch_command"]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_PORT = 29500


def _target_args(target: str, args: Sequence[str]) -> list[str]:
    """What each process runs: the script, or ``-m tunekit fit CONFIG`` for a config file."""
    suffix = Path(target).suffix.lower()
    if suffix == ".py":
        return [target, *args]
    if suffix in CONFIG_SUFFIXES:
        return ["-m", "tunekit", "fit", target, *args]
    raise ConfigError(
        f"tunekit launch {target!r}: expected a Python script (.py) or a config file "
        f"({', '.join(CONFIG_SUFFIXES)}), got {suffix or 'no suffix'!r}"
    )


def launch_command(
    target: str,
    args: Sequence[str] = (),
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    backend: Literal["torchrun", "accelerate"] = "torchrun",
    python: str | None = None,
) -> list[str]:
    """The command that starts ``target`` in ``nproc`` processes on each of ``nnodes`` nodes.

    ``torchrun``: one node uses ``--standalone`` (a free local port, nothing to configure) unless
    ``master_addr`` / ``master_port`` are given; several nodes use torchrun's static form
    (``--nnodes --node_rank --master_addr --master_port``), the same on every node but its rank.
    ``accelerate``: ``accelerate launch`` with the total process count across nodes (GPUs only:
    on CPU it starts one process).
    """
    for name, value, least in (("nproc", nproc, 1), ("nnodes", nnodes, 1), ("node_rank", node_rank, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"tunekit launch --{name.replace('_', '-')} {value!r}: must be a whole number >= {least}")
    if node_rank >= nnodes:
        raise ConfigError(
            f"tunekit launch --node-rank {node_rank} with --nnodes {nnodes}: node ranks go from 0 to {nnodes - 1}"
        )
    if nnodes > 1 and not master_addr:
        raise ConfigError(
            f"tunekit launch --nnodes {nnodes}: pass --master-addr HOST, the address of node 0 that every node "
            "can reach (and the same --master-port on every node)"
        )
    if master_port is not None and not 1 <= master_port <= 65535:
        raise ConfigError(f"tunekit launch --master-port {master_port}: must be a port number from 1 to 65535")
    if backend not in ("torchrun", "accelerate"):
        raise ConfigError(f"tunekit launch --backend {backend!r}: must be 'torchrun' or 'accelerate'")
    python = python or sys.executable
    run = _target_args(target, args)
    if backend == "accelerate":
        cmd = [python, "-m", "accelerate.commands.launch", "--num_processes", str(nproc * nnodes)]
        cmd += ["--num_machines", str(nnodes)]
        if nproc * nnodes > 1:
            cmd.append("--multi_gpu")
        if nnodes > 1 or master_addr:
            cmd += ["--machine_rank", str(node_rank), "--main_process_ip", str(master_addr)]
            cmd += ["--main_process_port", str(master_port or DEFAULT_PORT)]
        return cmd + run
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1 and not master_addr and master_port is None:
        cmd += ["--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc)]
    else:
        cmd += ["--nnodes", str(nnodes), "--nproc_per_node", str(nproc), "--node_rank", str(node_rank)]
        cmd += ["--master_addr", master_addr or "127.0.0.1", "--master_port", str(master_port or DEFAULT_PORT)]
    return cmd + run


def _cmd_launch(args: argparse.Namespace) -> int:
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = launch_command(
        args.target,
        extra,
        nproc=args.nproc,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        backend=args.backend,
    )
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if not Path(args.target).is_file():
        raise ConfigError(f"tunekit launch {args.target!r}: no such file")
    # The processes' output goes straight to this terminal; their exit status is ours.
    return subprocess.run(cmd, check=False).returncode


def add_launch_parser(subparsers: Any) -> None:
    """Register ``tunekit launch`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "launch",
        help="Run a script or config in several processes / nodes (torchrun or accelerate).",
        description="Start TARGET (a .py script, or a .yaml/.json config run as 'tunekit fit') in --nproc "
        "processes per node. Every node runs the same command with its own --node-rank.",
    )
    p.add_argument("--nproc", type=int, required=True, help="Processes per node (usually one per GPU).")
    p.add_argument("--nnodes", type=int, default=1, help="Number of nodes (default 1).")
    p.add_argument("--node-rank", type=int, default=0, help="This node's rank, 0 to nnodes-1 (default 0).")
    p.add_argument("--master-addr", default=None, help="Address of node 0, reachable from every node.")
    p.add_argument("--master-port", type=int, default=None, help=f"Port on node 0 (default {DEFAULT_PORT}).")
    p.add_argument("--backend", choices=("torchrun", "accelerate"), default="torchrun", help="Launcher.")
    p.add_argument("--dry-run", action="store_true", help="Print the command instead of running it.")
    p.add_argument("target", help="A Python script (.py) or a tunekit config (.yaml, .yml, .json).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="Arguments passed to the script.")
    p.set_defaults(func=_cmd_launch)
