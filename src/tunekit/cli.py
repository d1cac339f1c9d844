"""The ``tunekit`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tunekit.errors import TunekitError

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tunekit.demo import run_demo

    run_demo(args.output_dir, console=Console(), seed=args.seed)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    from tunekit import __version__

    print(f"tunekit {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune language models with one API.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="Pretrain a tiny model, fine-tune it with LoRA, and show accuracy before and after (CPU, ~2 min)."
    )
    demo.add_argument("--output-dir", default="tunekit-demo", help="Where the base model and adapter are written.")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    version = sub.add_parser("version", help="Print the tunekit version.")
    version.set_defaults(func=_cmd_version)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
