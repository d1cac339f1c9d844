"""``tunekit generate PATH "prompt"``: answer prompts with a tuner saved by ``Tuner.save``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import tunekit as tk
from tunekit.cli.load_flags import add_load_flags, load_options

__all__ = ["add_generate_parser"]


def _cmd_generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if prompts == ["-"]:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    tuner = tk.load(args.path, base_model=args.base_model, **load_options(args))
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.temperature is not None:
        options.update(do_sample=True, temperature=args.temperature)
    outs = tuner.generate(prompts, **options)
    for prompt, out in zip(prompts, outs):
        if len(prompts) > 1:
            print(f"> {prompt}")
        print(out)
    return 0


def add_generate_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="Answer prompts with a saved tuner (tk.load), with its chat template.")
    p.add_argument("path", help="A directory written by Tuner.save or `tunekit fit`.")
    p.add_argument("prompt", nargs="+", help="One or more prompts; '-' reads one prompt per line from stdin.")
    p.add_argument("--max-new-tokens", type=int, default=256, help="Most tokens to generate (default 256).")
    p.add_argument("--temperature", type=float, help="Sample at this temperature (default: greedy).")
    p.add_argument("--base-model", default=None, help="The base model, when the adapter's recorded base has moved.")
    add_load_flags(p)
    p.set_defaults(func=_cmd_generate)
