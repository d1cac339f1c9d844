"""``tunekit export RUN_DIR OUT``: export a saved tuner (``Tuner.save`` / ``tk.load``) for serving."""

from __future__ import annotations

import argparse
from typing import Any

import tunekit as tk
from tunekit.cli.load_flags import add_load_flags, load_options

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    tuner = tk.load(args.run_dir, base_model=args.base_model, **load_options(args))
    result = tuner.export(
        args.out,
        format=args.format,
        dtype=args.dtype,
        verify=not args.no_verify,
        golden_prompts=args.prompt or None,
        max_new_tokens=args.max_new_tokens,
    )
    print(result)
    print(result.size_report())
    if result.verification is not None:
        for check in result.verification.checks:
            mark = "ok " if check.match else "DIFF"
            print(f"  [{mark}] {check.runtime}: {str(check.prompt)[:60]!r} -> {check.got[:60]!r}")
        for note in result.verification.notes:
            print(f"  note: {note}")
    return 0


def add_export_parser(sub: Any) -> None:
    """Register ``tunekit export`` on the ``tunekit`` command's subparsers."""
    p = sub.add_parser(
        "export",
        help="Export a saved tuner as a merged transformers model, an adapter or a GGUF file, verified.",
        description=(
            "Load a tuner saved with Tuner.save (RUN_DIR), export it to OUT, reload the export and check that it "
            "gives the trained model's greedy outputs on golden prompts. Prints the size of the adapter against "
            "the merged model."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="A directory written by Tuner.save (or tunekit fit).")
    p.add_argument(
        "out", metavar="OUT", help="The export directory to write (a new or empty one, or an earlier export)."
    )
    p.add_argument("--format", choices=["hf", "adapter", "gguf"], default="hf", help="Default: hf.")
    p.add_argument(
        "--dtype",
        default="auto",
        help=(
            "hf: auto, fp32, bf16, fp16; gguf: auto, f32, f16, bf16, q8_0, and the k-quants q4_k_m, q5_k_m, q6_k "
            "(the gguf-quant extra). Default auto: the weights' precision."
        ),
    )
    p.add_argument("--base-model", default=None, help="The base model, when the adapter's recorded base has moved.")
    p.add_argument(
        "--prompt", action="append", help="A golden prompt to verify on (repeatable); default: from the data."
    )
    p.add_argument("--max-new-tokens", type=int, default=16, help="Tokens generated per golden prompt (default 16).")
    p.add_argument("--no-verify", action="store_true", help="Write the export without reloading and comparing it.")
    add_load_flags(p)
    p.set_defaults(func=_cmd_export)
