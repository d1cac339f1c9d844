"""``tunekit fit``, ``tunekit plan`` and ``tunekit schema``: run a YAML config, or describe one."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit.config_file import RunConfig, run_config_schema
from tunekit.errors import ConfigError
from tunekit.hooks import Hook, RunContext
from tunekit.save_format import check_save_path

__all__ = ["add_fit_parser", "add_plan_parser", "add_schema_parser", "parse_overrides"]

_OVERRIDES_HELP = (
    "Overrides of the file's values, as --section.key VALUE or section.key=VALUE "
    "(e.g. --training.learning_rate 1e-4 --method.r 16)."
)


def _check_flag(token: str, command: str, flags: Sequence[str]) -> None:
    """``--name`` after CONFIG is an override of a top-level key (``--output_dir runs/x``), or a mistake."""
    name = token[2:].partition("=")[0]
    if "." in name or name.replace("-", "_") in RunConfig.model_fields:
        return
    options = [f"--{k}" for k in RunConfig.model_fields] + list(flags)
    close = difflib.get_close_matches(f"--{name}", options, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    own = f" (its own options: {', '.join(flags)})" if flags else ""
    raise ConfigError(
        f"unknown option {token!r} for `tunekit {command}`{own}; {hint}overrides of the config look like "
        "--training.learning_rate 1e-4 or --output_dir runs/x"
    )


def parse_overrides(tokens: list[str], *, command: str = "fit", flags: Sequence[str] = ()) -> list[str]:
    """``["--training.lr", "1e-4", "method.r=16"]`` -> ``["training.lr=1e-4", "method.r=16"]``.

    A ``--name`` that is neither a config key (``--output_dir``, ``--training.epochs``) nor one of the command's own
    ``flags`` is an error, not an override."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--") and len(token) > 2:
            _check_flag(token, command, flags)
            key = token[2:]
            if "=" in key:
                out.append(key)
            elif i + 1 < len(tokens) and not (tokens[i + 1].startswith("--") and len(tokens[i + 1]) > 2):
                out.append(f"{key}={tokens[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"override --{key} needs a value, e.g. --{key} VALUE")
        elif "=" in token:
            out.append(token)
        else:
            raise ConfigError(
                f"unexpected argument {token!r}: overrides look like --training.learning_rate 1e-4 "
                "or training.learning_rate=1e-4"
            )
        i += 1
    return out


def _own_flags(args: argparse.Namespace) -> None:
    """Move the command's own flags (``--json``, ``--print-config``) written after CONFIG out of the overrides.

    The overrides take everything after CONFIG (``argparse.REMAINDER``, so that ``--section.key VALUE``
    is not read as an unknown option), which includes the command's own flags when they come after
    CONFIG: ``tunekit plan run.yaml --json`` is the same as ``tunekit plan --json run.yaml``.
    """
    flags: dict[str, str] = getattr(args, "own_flags", {})
    valued: dict[str, str] = getattr(args, "own_values", {})
    rest = []
    tokens = list(args.overrides)
    while tokens:
        token = tokens.pop(0)
        name, eq, value = token.partition("=")
        if token in flags:
            setattr(args, flags[token], True)
        elif name in valued:
            if not eq:
                if not tokens:
                    raise ConfigError(f"{name} needs a value, e.g. {name} 24")
                value = tokens.pop(0)
            setattr(args, valued[name], value)
        else:
            rest.append(token)
    args.overrides = rest


def _load(args: argparse.Namespace) -> Any:
    _own_flags(args)
    flags = list(getattr(args, "own_flags", {})) + list(getattr(args, "own_values", {}))
    return RunConfig.from_yaml(args.config, parse_overrides(args.overrides, command=args.command, flags=flags))


_SHOWN = ("loss", "reward", "accuracy", "margin", "learning_rate")


class _LogLines(Hook):
    """One line per logged step on stdout, when there is no terminal for the progress bar (CI, nohup)."""

    def on_log(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if "train_runtime" in logs:  # the trainer's closing summary: FitResult is printed instead
            return
        shown = "  ".join(
            f"{k} {v:.4g}" for k, v in logs.items() if any(w in k for w in _SHOWN) and isinstance(v, (int, float))
        )
        print(f"step {ctx.step}/{ctx.max_steps}  {shown}", flush=True)


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    save_path = cfg.save_path
    if save_path is None:
        raise ConfigError(
            f"{args.config}: set output_dir (or save) so that the trained model is kept, e.g. output_dir: runs/my-run"
        )
    check_save_path(Path(save_path))  # before training: a run whose result cannot be saved is a run lost
    hooks = [] if sys.stderr.isatty() else [_LogLines()]
    tuner = cfg.to_tuner(hooks=hooks)
    objective = cfg.objective.name if cfg.objective is not None else "inferred from the data"
    print(f"tunekit fit: {cfg.model} with {tuner.method!r}, objective {objective}", flush=True)
    result = tuner.fit(cfg.data, eval_data=cfg.eval_data)
    print(result)
    if result.skipped_rows:
        print(f"skipped {len(result.skipped_rows)} bad rows: {result.skipped_rows[:20]}")
    path = tuner.save(save_path)
    print(f'saved to {path}  (try: tunekit generate {path} "your prompt")')
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args)
    memory = None
    if args.device_memory is not None:
        try:
            memory = float(args.device_memory)
        except ValueError:
            raise ConfigError(
                f"--device-memory {args.device_memory!r}: give the device's memory in GiB as a number, e.g. 24"
            ) from None
    tuner = cfg.to_tuner(progress=False)
    plan = tuner.plan(cfg.data, eval_data=cfg.eval_data, device_memory_gib=memory)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        print(plan)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(run_config_schema(), indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _config_args(p: argparse.ArgumentParser, flags: dict[str, str], values: dict[str, str] | None = None) -> None:
    """CONFIG and its overrides; ``flags`` (option -> dest) are the command's own flags, and ``values`` its own
    options that take a value, allowed after CONFIG too."""
    p.add_argument("config", help="A YAML run config (model, method, objective, training, data, ...).")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help=_OVERRIDES_HELP)
    p.set_defaults(own_flags=flags, own_values=values or {})


def add_fit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fit",
        help="Train from a YAML config and save the result.",
        description="Train from a YAML config (see `tunekit schema`) and save the trained tuner to "
        "save, or <output_dir>/final. Relative paths in the file are read from its folder.",
    )
    p.add_argument("--print-config", action="store_true", help="Print the validated config (with overrides) and exit.")
    _config_args(p, {"--print-config": "print_config"})
    p.set_defaults(func=_cmd_fit)


def add_plan_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="Show what a config would train (parameters, tokens, steps, memory) without training."
    )
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.add_argument(
        "--device-memory",
        metavar="GIB",
        help="Compare the estimate with a device of this many GiB (e.g. 24), instead of this machine's; with "
        "training.device=cuda it plans for a GPU this machine does not have.",
    )
    _config_args(p, {"--json": "json"}, {"--device-memory": "device_memory"})
    p.set_defaults(func=_cmd_plan)


def add_schema_parser(sub: Any) -> None:
    p = sub.add_parser("schema", help="Print the JSON Schema of the YAML run config, for editors.")
    p.add_argument("--output", "-o", help="Write it to this file instead of printing it.")
    p.set_defaults(func=_cmd_schema)
