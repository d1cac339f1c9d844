"""``tunekit evaluate PATH DATA`` (metrics, against the base model with ``--baseline``), ``tunekit predict PATH DATA -o
OUT`` (answers to file) and ``tunekit eval PATH --tasks ...`` (lm-evaluation-harness benchmarks), on a tuner saved by
``Tuner.save``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import tunekit as tk
from tunekit.cli.load_flags import add_load_flags, load_options
from tunekit.errors import ConfigError
from tunekit.evaluation import generation_options, read_items
from tunekit.metrics import check_metrics, metric_names

__all__ = ["add_eval_parser", "add_evaluate_parser", "add_predict_parser"]


def _load(args: argparse.Namespace) -> tk.Tuner:
    return tk.load(args.path, base_model=args.base_model, **load_options(args))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    check_metrics(metrics)  # a misspelled metric fails before the model loads
    tuner = _load(args)
    result = tuner.evaluate(
        args.data,
        metrics=metrics,
        baseline=args.baseline,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    if args.output:
        result.to_jsonl(args.output)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(result, end="")
        if args.output:
            print(f"rows written to {args.output}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"predict -o {str(out)!r}: this is a directory; give a file path such as predictions.jsonl")
    items = read_items(args.data, need_reference=False)  # bad rows fail before the model loads
    tuner = _load(args)
    options = generation_options(tuner.loaded, items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if not any(item.reference for item in items) and args.max_new_tokens is None:
        options["max_new_tokens"] = 256
    answers = tuner.generate([list(item.prompt) for item in items], **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for item, answer in zip(items, answers):
            line: dict[str, Any] = {"row": item.row, "prompt": item.prompt_text, "prediction": str(answer)}
            if item.reference is not None:
                line["reference"] = item.reference
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{len(items)} predictions written to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tuner = _load(args)
    result = tuner.benchmark(
        tasks,
        limit=args.limit,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        for task, metrics in result.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            print(f"{task}: {shown}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="A directory written by Tuner.save or `tunekit fit`.")
    p.add_argument("--base-model", default=None, help="The base model, when the adapter's recorded base has moved.")
    add_load_flags(p)


def add_evaluate_parser(sub: Any) -> None:
    """Register ``tunekit evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="Score a saved tuner's answers on a data file (exact match, ROUGE-L, BLEU, ...), optionally against "
        "its base model.",
    )
    _common(p)
    p.add_argument("data", help="Rows with prompts and reference answers (.jsonl, .json, .csv, .parquet).")
    p.add_argument(
        "--metrics",
        default="exact_match",
        help=f"Comma-separated metrics (default exact_match): {', '.join(metric_names())}.",
    )
    p.add_argument("--baseline", action="store_true", help="Also answer with the base model and show the change.")
    p.add_argument("--max-new-tokens", type=int, default=None, help="Default: the longest reference and 16 more.")
    p.add_argument("--batch-size", type=int, default=None, help="Prompts generated at once (default 16).")
    p.add_argument("-o", "--output", default=None, help="Also write every row (predictions, scores) as JSON lines.")
    p.add_argument("--json", action="store_true", help="Print the figures as JSON instead of a table.")
    p.set_defaults(func=_cmd_evaluate)


def add_predict_parser(sub: Any) -> None:
    """Register ``tunekit predict``."""
    p = sub.add_parser("predict", help="Answer every prompt of a data file with a saved tuner; write JSON lines.")
    _common(p)
    p.add_argument("data", help="Rows with prompts (a reference answer, when there is one, is written beside).")
    p.add_argument("-o", "--output", required=True, help="The JSON lines file to write.")
    p.add_argument("--max-new-tokens", type=int, default=None, help="Default: the longest reference and 16 more.")
    p.add_argument("--batch-size", type=int, default=None, help="Prompts generated at once (default 16).")
    p.set_defaults(func=_cmd_predict)


def add_eval_parser(sub: Any) -> None:
    """Register ``tunekit eval`` (lm-evaluation-harness)."""
    p = sub.add_parser(
        "eval", help="Run lm-evaluation-harness benchmarks (MMLU, GSM8K, a local YAML task, ...) on a saved tuner."
    )
    _common(p)
    p.add_argument("--tasks", required=True, help="Comma-separated lm-evaluation-harness task names.")
    p.add_argument("--limit", type=float, default=None, help="At most this many examples per task (or a fraction).")
    p.add_argument("--include-path", default=None, help="A directory of your own task YAML files.")
    p.add_argument("--num-fewshot", type=int, default=None, help="Few-shot examples per prompt (task default).")
    p.add_argument("--batch-size", type=int, default=8, help="Requests scored at once (default 8).")
    p.add_argument("--json", action="store_true", help="Print the results as JSON.")
    p.set_defaults(func=_cmd_eval)
