"""The flags of the commands that load a save (``generate``, ``export``): what the caller trusts, as in ``tk.load``.

A save's manifest grants nothing (docs/reliability.md); these flags are how a command-line user grants it.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_load_flags", "load_options"]


def add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Run the Python code of the base model's directory (only for a base you trust).",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="Load weights stored with pickle (.bin), which can run code."
    )
    p.add_argument(
        "--no-hash-check", action="store_true", help="Check the save's file sizes only, not their sha256 (faster)."
    )
    p.add_argument(
        "--allow-base-change",
        action="store_true",
        help="Put the adapter on a base other than the one it was trained on (with --base-model).",
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """``tk.load``'s keyword arguments for the flags of :func:`add_load_flags`."""
    return {
        "trust_remote_code": args.trust_remote_code,
        "allow_pickle": args.allow_pickle,
        "verify": not args.no_hash_check,
        "allow_base_change": args.allow_base_change,
    }
