"""The ``tunekit`` command line: every subcommand is a module of this package (``fit``, ``plan`` and ``schema``
in :mod:`.fit`; :mod:`.generate`, :mod:`.chat`, :mod:`.evaluate` (``evaluate``, ``predict``, ``eval``),
:mod:`.validate_data`, :mod:`.export`, :mod:`.launch`, :mod:`.doctor`), registered by :func:`build_parser`;
``demo``, ``methods`` and ``version`` are here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from tunekit._version import __version__
from tunekit.cli import chat, doctor, evaluate, export, fit, generate, launch, serve, validate_data
from tunekit.demo import run_demo
from tunekit.errors import TunekitError
from tunekit.methods import registry

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    run_demo(args.output_dir, console=Console(), seed=args.seed)
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    rows = []
    for name, cls in registry().items():
        caps = cls.capabilities()
        rows.append(
            {
                "method": name,
                "family": cls.family,
                "summary": cls.summary,
                **caps,
                "default_learning_rate": cls.default_learning_rate,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    def yes(v: object) -> str:
        return "yes" if v is True else "no" if v is False else str(v)

    table = Table(title="tunekit methods", title_justify="left")
    table.add_column("method", no_wrap=True)
    table.add_column("summary")
    for col in ("mergeable", "grad. checkpointing", "per-step call", "objectives", "saves"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        objectives = r["objectives"]
        table.add_row(
            str(r["method"]),
            str(r["summary"]),
            yes(r["mergeable"]),
            yes(r["gradient_checkpointing"]),
            yes(r["needs_step_callback"]),
            ", ".join(objectives) if isinstance(objectives, list) else str(objectives),
            "adapter" if r["adapter"] else "whole model",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: room for the whole table rather than 80 columns
        console = Console(width=160)
    console.print(table)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"tunekit {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune language models with one API.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="Pretrain a tiny model, fine-tune it with LoRA, show accuracy before and after (CPU, about 1 min)."
    )
    demo.add_argument("--output-dir", default="tunekit-demo", help="Where the base model and adapter are written.")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    methods = sub.add_parser("methods", help="List every fine-tuning method with its capabilities.")
    methods.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    methods.set_defaults(func=_cmd_methods)
    version = sub.add_parser("version", help="Print the tunekit version.")
    version.set_defaults(func=_cmd_version)
    launch.add_launch_parser(sub)
    export.add_export_parser(sub)
    fit.add_fit_parser(sub)
    fit.add_plan_parser(sub)
    generate.add_generate_parser(sub)
    chat.add_chat_parser(sub)
    serve.add_serve_parser(sub)
    evaluate.add_evaluate_parser(sub)
    evaluate.add_predict_parser(sub)
    evaluate.add_eval_parser(sub)
    validate_data.add_validate_data_parser(sub)
    fit.add_schema_parser(sub)
    doctor.add_doctor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except TunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a model or file that cannot be read: one line, not a traceback
        if os.environ.get("TUNEKIT_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {e} (set TUNEKIT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
