"""Every number the docs state about tunekit is computed here, or by a docs snippet the docs test runs.

``CLAIMS`` is the table: the page, the page's own words with ``{}`` where each number stands, and the numbers as the
page must write them, computed from the code (a default, a constant, the CLI's parser), from a published model shape
and the formula the page gives, or read from ``benchmarks/README.md`` (the one source of measured figures and wall
times). A claim fails when its quote is gone from the page (so the table cannot rot) and when the page's number is
not the computed one (an edit of either side), naming the page and the claim. ``SNIPPET_CLAIMS`` are the numbers a
page's own runnable block computes and asserts: the quote must stay, and so must the block's assertion.

Fast by design: no training and no model; tunekit's configs and CLI parser, constants read from the source with
``ast`` (the engine modules import torch), pure arithmetic. See CONTRIBUTING.md, "Numbers in the docs".
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import tunekit as tk
from tests.test_docs import snippets
from tunekit import _fs
from tunekit.cli import build_parser
from tunekit.cli.launch import DEFAULT_PORT
from tunekit.distributed import state_memory_per_gpu
from tunekit.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunekit"

# ---------------------------------------------------------------------------------------------------------------
# What the numbers are computed from


def constant(module: str | Path, name: str) -> object:
    """A module-level constant of ``src/tunekit/<module>`` (or of a file), read from the source: the engine's modules
    import torch, which this fast test does not."""
    tree = ast.parse((SRC / module).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:  # type: ignore[attr-defined]
            expression = ast.Expression(node.value)  # type: ignore[attr-defined]
            return eval(compile(expression, str(module), "eval"), {"__builtins__": {}})  # a literal or 4 << 20
    raise LookupError(f"no constant {name} in src/tunekit/{module}")


def source_number(path: Path, pattern: str) -> str:
    """The one number a regex's group finds in a source file (for a literal the code uses inline)."""
    found = re.findall(pattern, path.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{path.name}: {pattern!r} found {found}"
    return found[0]


def list_length(path: Path, name: str) -> int:
    """How many values a module-level list literal ``name`` of a test file holds."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            value = node.value  # type: ignore[attr-defined]
            assert isinstance(value, ast.List), f"{path.name}: {name} is not a list literal"
            return len(value.elts)
    raise LookupError(f"no list {name} in {path}")


def bad_input_catalogue() -> int:
    """The bad-input catalogue's size, counted as ``test_catalogue_is_complete`` counts it: every CATALOGUE row and
    every ``test_correct_*`` test of ``tests/integration/test_bad_inputs*.py``."""
    total = 0
    for path in sorted((ROOT / "tests" / "integration").glob("test_bad_inputs*.py")):
        try:
            total += list_length(path, "CATALOGUE")
        except LookupError:
            pass  # a part of only test_correct_* tests
        tree = ast.parse(path.read_text(encoding="utf-8"))
        total += sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test_correct_") for n in tree.body)
    return total


def cli_default(command: str, dest: str) -> object:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return next(a.default for a in sub.choices[command]._actions if a.dest == dest)  # type: ignore[union-attr]


def subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def lr(method: type[tk.Method]) -> str:
    """A learning rate as the docs write it: ``2e-4``."""
    mantissa, exponent = f"{method.default_learning_rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def le_bound(config: type, field: str) -> int:
    """The ``le=`` bound pydantic enforces on a field."""
    return next(m.le for m in config.model_fields[field].metadata if hasattr(m, "le"))  # type: ignore[attr-defined]


def default(config: type, field: str) -> object:
    return config.model_fields[field].default  # type: ignore[attr-defined]


def fmt(x: float, digits: int = 1) -> str:
    """``17.6``; ``4,399,104`` for whole numbers with ``digits=0``."""
    return f"{x:,.{digits}f}"


@dataclass(frozen=True)
class Shape:
    """A published decoder shape, and the parameter counts the docs derive from it."""

    hidden: int
    mlp: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @property
    def kv(self) -> int:
        return self.kv_heads * self.hidden // self.heads

    def linear(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of a block: q k v o gate up down."""
        h, m, kv = self.hidden, self.mlp, self.kv
        return [(h, h), (h, kv), (h, kv), (h, h), (h, m), (h, m), (m, h)]

    def params(self) -> int:
        """Every parameter: embeddings (and an untied head), each block's linear weights, biases and two norms."""
        block = sum(i * o for i, o in self.linear()) + (self.hidden + 2 * self.kv if self.qkv_bias else 0)
        block += 2 * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * block + self.hidden

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear())

    def lora(self, r: int) -> int:
        """LoRA on every linear layer: ``r * (in + out)`` numbers each (the formula the adapter pages give)."""
        return self.layers * sum(r * (i + o) for i, o in self.linear())

    def ia3(self) -> int:
        """IA3 at peft's defaults for Llama and Qwen2: a vector on k and v (their outputs) and on down (its input)."""
        return self.layers * (2 * self.kv + self.mlp)

    def nf4_bytes(self) -> float:
        """QLoRA's base as it trains: NF4 linear weights with double quantization (an 8-bit scale per 64 values, an
        fp32 scale per 256 of those); embeddings, head and norms in fp32, where peft's k-bit preparation (which
        tunekit applies) upcasts them (plan() counts the same: tests/integration/test_plan_qlora.py)."""
        linear = self.linear_params()
        return linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + 4 * (self.params() - linear)


LLAMA2_7B = Shape(hidden=4096, mlp=11008, layers=32, heads=32, kv_heads=32, vocab=32000, tied=False, qkv_bias=False)
QWEN2_05B = Shape(hidden=896, mlp=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tied=True, qkv_bias=True)
FP32 = 4  # bytes a number: how peft stores adapter weights, whatever the training precision


def bench() -> dict[str, dict[str, object]]:
    """The raw JSON lines of benchmarks/README.md, by benchmark name."""
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"benchmark"')]
    return {str(line["benchmark"]): line for line in lines}


def bench_text(pattern: str) -> str:
    """A figure benchmarks/README.md states in prose or a table (group 1 of ``pattern``)."""
    text = " ".join((ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").split())
    found = re.findall(pattern, text)
    assert len(found) == 1, f"benchmarks/README.md: {pattern!r} found {found}"
    return str(found[0])


def optimizer_bytes(name: str) -> str:
    figures = bench()["optimizer_memory"]["optimizers"]
    return f"{figures[name]['bytes_per_param']:.2f}"  # type: ignore[index]


def wall_time(what: str) -> float:
    """Seconds from the wall-time table of benchmarks/README.md (its row whose first cell is ``what``)."""
    for line in (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3 and cells[0] == what:
            return float(re.sub(r"[^\d.]", "", cells[2].split()[0]))
    raise LookupError(f"benchmarks/README.md has no wall-time row {what!r}")


def minutes(seconds: float, zh: bool = False) -> str:
    """A wall time as the docs round it: ``about a minute`` / ``about 3 minutes`` (``约 1 分钟``)."""
    n = max(1, round(seconds / 60))
    if zh:
        return f"约 {n} 分钟"
    return "about a minute" if n == 1 else f"about {n} minutes"


# ---------------------------------------------------------------------------------------------------------------
# The claims


@dataclass(frozen=True)
class Claim:
    page: str  # from the repository root
    quote: str  # the page's words, "{}" where each number stands; whitespace and line breaks do not matter
    value: Callable[[], str | tuple[str, ...]]  # the number(s) as the page must write them
    how: str  # what computes them

    def id(self) -> str:
        return f"{self.page}: {self.quote[:50]}"


def C(page: str, quote: str, how: str, value: Callable[[], str | tuple[str, ...]]) -> Claim:
    return Claim(page, quote, value, how)


LORA_LR, FULL_LR = (lambda: lr(tk.LoRA)), (lambda: lr(tk.Full))
BOTH_LR = lambda: (lr(tk.LoRA), lr(tk.Full))  # noqa: E731
QWEN_LORA8 = lambda: fmt(FP32 * QWEN2_05B.lora(8) / 1e6)  # noqa: E731  MB
LLAMA_LORA8_MB = lambda: str(round(FP32 * LLAMA2_7B.lora(8) / 1e6, -1))[:-2]  # noqa: E731  "80"
RETRY = lambda: f"{_fs.DEFAULT_RETRY_SECONDS:g}"  # noqa: E731
RETRY_STEPS = lambda: (  # noqa: E731
    f"{inspect.signature(_fs.retry).parameters['delay'].default:g}",
    f"{_fs.MAX_WAIT:g}",
    f"{_fs.DEFAULT_RETRY_SECONDS:g}",
)
SERVE = lambda: (cli_default("serve", "host"), str(cli_default("serve", "port")))  # noqa: E731
SHA = lambda: fmt(wall_time("sha256 of 1 GiB"))  # noqa: E731

CLAIMS: list[Claim] = [
    # --- default learning rates (Method.default_learning_rate) ---
    C("README.zh.md", "各方法的默认值（LoRA `{}`，全参数 `{}`）", "Method.default_learning_rate", BOTH_LR),
    C(
        "docs/getting-started.md",
        "learning rate default of each method is right (LoRA `{}`, full fine-tuning `{}`)",
        "Method.default_learning_rate",
        BOTH_LR,
    ),
    C("docs/getting-started.md", "with a real model delete this line (LoRA's default, {})", "LoRA", LORA_LR),
    C("docs/index.md", "with a real model delete this line (LoRA's default, {})", "LoRA", LORA_LR),
    C("docs/tutorial.md", "learning rate: LoRA's default, {}", "LoRA", LORA_LR),
    C("docs/tutorial.md", "`None` means the method's default (LoRA `{}`, full fine-tuning `{}`)", "defaults", BOTH_LR),
    C("docs/tutorial.md", "leave `learning_rate` unset (LoRA `{}`)", "LoRA", LORA_LR),
    C("docs/zh/tutorial.md", "学习率用 LoRA 的默认值 {}", "LoRA", LORA_LR),
    C("docs/zh/tutorial.md", "`None` 表示用方法自己的默认值（LoRA `{}`，全参数微调 `{}`）", "defaults", BOTH_LR),
    C("docs/zh/tutorial.md", "不要设置 `learning_rate`（LoRA 默认 `{}`）", "LoRA", LORA_LR),
    C("docs/zh/quickstart.md", "用默认值（LoRA {}）", "LoRA", LORA_LR),
    C("docs/zh/quickstart.md", "各方法的默认学习率就是合适的（LoRA 为 `{}`，全参数微调为 `{}`）", "defaults", BOTH_LR),
    C("docs/zh/faq.md", "用方法的默认值 （LoRA `{}`，全参数 `{}`）", "defaults", BOTH_LR),
    C("docs/zh/troubleshooting.md", "每种方法都有合适的默认学习率（LoRA `{}`，全参数 `{}`）", "defaults", BOTH_LR),
    C("docs/guides/troubleshooting.md", "a sensible default learning rate (LoRA `{}`, full `{}`)", "defaults", BOTH_LR),
    C("docs/methods/lora.md", "Default learning rate `{}`.", "LoRA", LORA_LR),
    C("docs/methods/full.md", "The default learning rate is `{}`", "Full", FULL_LR),
    C(
        "docs/methods/freeze.md",
        "Its default learning rate is `{}`: above full fine-tuning's `{}`, as fewer weights move, "
        "and below the adapters' (LoRA `{}`).",
        "Freeze, Full, LoRA",
        lambda: (lr(tk.Freeze), lr(tk.Full), lr(tk.LoRA)),
    ),
    C("docs/methods/ia3.md", "It needs a high learning rate (around `{}` on real models;", "IA3", lambda: lr(tk.IA3)),
    C(
        "docs/methods/prompt-tuning.md",
        "It needs a high learning rate (`{}` to",
        "PromptTuning",
        lambda: lr(tk.PromptTuning),
    ),
    # --- other defaults ---
    C(
        "docs/methods/lora.md",
        "`alpha` defaults to `{} * r`.",
        "LoRA(r=5).alpha (peft gets it: test_peft_translation)",
        lambda: str(tk.LoRA(r=5).alpha // 5),
    ),  # type: ignore[operator]
    C(
        "README.md",
        '`tk.LoRA(r={}, alpha={}, dropout={}, target_modules="{}", dora={}, rslora={}, init="{}"',
        "LoRA.model_fields",
        lambda: tuple(
            str(default(tk.LoRA, f)) for f in ("r", "alpha", "dropout", "target_modules", "dora", "rslora", "init")
        ),
    ),
    C("README.md", "`tk.Freeze(last_layers={}, modules=None)`", "Freeze()", lambda: str(tk.Freeze().last_layers)),
    C("README.md", "| `tk.Full()`, `tk.Freeze(last_layers={})` |", "Freeze()", lambda: str(tk.Freeze().last_layers)),
    C("docs/methods/index.md", "| `tk.Freeze(last_layers={})` |", "Freeze()", lambda: str(tk.Freeze().last_layers)),
    C("docs/methods/index.md", "| `tk.LoRA(r={})` |", "LoRA()", lambda: str(tk.LoRA().r)),
    C(
        "docs/concepts/index.md",
        "| 6.0% (`Freeze()`: the last {} of {} blocks) |",
        "Freeze() on Llama-2-7B",
        lambda: (str(tk.Freeze().last_layers), str(LLAMA2_7B.layers)),
    ),
    C(
        "README.md",
        "`tk.AdaLoRA(init_r={}, target_r={})`",
        "AdaLoRA.model_fields",
        lambda: (str(default(tk.AdaLoRA, "init_r")), str(default(tk.AdaLoRA, "target_r"))),
    ),
    C(
        "README.md",
        '`tk.DPO(beta={}, loss="{}"',
        "DPO.model_fields",
        lambda: (str(default(tk.DPO, "beta")), str(default(tk.DPO, "loss"))),
    ),
    C(
        "docs/objectives/grpo.md",
        "`beta={}` (default) needs no reference model",
        "GRPO.model_fields",
        lambda: f"{default(tk.GRPO, 'beta'):g}",
    ),
    C("docs/objectives/rloo.md", "(`beta`, default {})", "RLOO.model_fields", lambda: str(default(tk.RLOO, "beta"))),
    C(
        "docs/methods/prompt-tuning.md",
        "at the default {} virtual tokens",
        "PromptTuning.model_fields",
        lambda: str(default(tk.PromptTuning, "num_virtual_tokens")),
    ),
    C(
        "docs/tutorial.md",
        "every `log_every` steps ({} by default)",
        "Training.model_fields",
        lambda: str(default(tk.Training, "log_every")),
    ),
    C(
        "docs/zh/tutorial.md",
        "每隔 `log_every` 步（默认 {}）",
        "Training.model_fields",
        lambda: str(default(tk.Training, "log_every")),
    ),
    C("README.md", '`resume` (default `"{}"`)', "Training.model_fields", lambda: str(default(tk.Training, "resume"))),
    C(
        "docs/reliability.md",
        '`Training(resume="{}")` is the default',
        "Training.model_fields",
        lambda: str(default(tk.Training, "resume")),
    ),
    C(
        "README.md",
        "`tk.load(path, base_model=, trust_remote_code={}, allow_pickle={}, verify={}, allow_base_change={})`",
        "inspect.signature(tk.load)",
        lambda: tuple(
            str(inspect.signature(tk.load).parameters[p].default)
            for p in ("trust_remote_code", "allow_pickle", "verify", "allow_base_change")
        ),
    ),
    C(
        "README.md",
        "output_dir=, reuse_output_dir={}, template=",
        "inspect.signature(tk.Tuner)",
        lambda: str(inspect.signature(tk.Tuner).parameters["reuse_output_dir"].default),
    ),
    C(
        "docs/guides/evaluation.md",
        "in batches (`batch_size`, default {})",
        "the hf backend's generate",
        lambda: source_number(SRC / "backends/hf/generation.py", r'opts\.pop\("batch_size", (\d+)\)'),
    ),
    C(
        "docs/guides/evaluation.md",
        "defaults to the longest reference's length and {} tokens more (at most {}).",
        "evaluation.generation_options",
        lambda: tuple(
            f"{int(n):,}"
            for n in re.fullmatch(
                r"min\(longest \+ (\d+), (\d+)\)",
                source_number(SRC / "evaluation.py", r"max_new_tokens = (min\(longest \+ \d+, \d+\))"),
            ).groups()
        ),
    ),  # type: ignore[union-attr]
    # --- the command line ---
    C(
        "docs/cli.md",
        "[--host {}] [--port {}] [--api-key KEY] [--max-queue {}]",
        "tunekit serve's parser",
        lambda: (*SERVE(), str(cli_default("serve", "max_queue"))),
    ),
    C("README.md", "OpenAI-compatible API on {}:{}", "tunekit serve's parser", SERVE),
    C(
        "README.md",
        "any address beyond {} needs an API key",
        "tunekit serve's parser",
        lambda: cli_default("serve", "host"),
    ),
    C("docs/tutorial.md", "an OpenAI-compatible API on http://{}:{}/v1", "tunekit serve's parser", SERVE),
    C("docs/zh/tutorial.md", "在 http://{}:{}/v1 提供兼容 OpenAI 的接口", "tunekit serve's parser", SERVE),
    C("docs/guides/use-your-model.md", "# tunekit serve: http://{}:{}/v1", "tunekit serve's parser", SERVE),
    C(
        "docs/guides/use-your-model.md",
        "`--host` defaults to `{}`",
        "tunekit serve's parser",
        lambda: cli_default("serve", "host"),
    ),
    C(
        "docs/guides/use-your-model.md",
        "At most `--max-queue` requests (default {}) wait or run",
        "tunekit serve's parser",
        lambda: str(cli_default("serve", "max_queue")),
    ),
    C(
        "docs/guides/use-your-model.md",
        "`stop` (up to {} strings",
        "serving/protocol.py",
        lambda: {"4": "four"}[source_number(SRC / "serving/protocol.py", r"len\(stops\) > (\d+)")],
    ),
    C(
        "docs/guides/distributed.md",
        "(`--master-port`, default {}, must be open there)",
        "cli.launch.DEFAULT_PORT",
        lambda: str(DEFAULT_PORT),
    ),
    C(
        "docs/guides/distributed.md",
        "--master_addr 10.0.0.1 --master_port {} train.py",
        "cli.launch.DEFAULT_PORT",
        lambda: str(DEFAULT_PORT),
    ),
    C("docs/cli.md", "--master-addr HOST --master-port {}]", "cli.launch.DEFAULT_PORT", lambda: str(DEFAULT_PORT)),
    C(
        "docs/cli.md",
        "checked against the trained model on golden prompts ({} new tokens each by default)",
        "tunekit export's parser",
        lambda: str(cli_default("export", "max_new_tokens")),
    ),
    C("docs/cli.md", "| `tunekit doctor [--json]` |", "every subcommand has a row (test below)", lambda: ()),
    C(
        "docs/cli.md",
        "| `schema` | int | the version of this layout ({}) |",
        "doctor.JSON_SCHEMA_VERSION",
        lambda: str(constant("doctor.py", "JSON_SCHEMA_VERSION")),
    ),
    C(
        "docs/cli.md",
        "Errors print as one line, with exit code {}, and no traceback",
        "tunekit.cli.main (test below)",
        lambda: "2",
    ),
    C(
        "docs/reference/errors.md",
        "The command line prints them as one line and exits with code {}.",
        "tunekit.cli.main (test below)",
        lambda: "2",
    ),
    C(
        "README.md",
        "A misspelled key fails with the nearest valid name and exit code {}",
        "tunekit.cli.main (test below)",
        lambda: "2",
    ),
    C(
        "docs/concepts/architecture.md",
        'change `"trl>={},<{}"` to',
        "pyproject.toml's trl range",
        lambda: re.search(r'"trl>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text()).groups(),
    ),  # type: ignore[union-attr]
    # --- retry window for locked files (_fs) ---
    C(
        "docs/reliability.md",
        "back-off ({} s doubling up to {} s between tries, {} s in all;",
        "_fs.retry",
        RETRY_STEPS,
    ),
    C("docs/guides/windows.md", "retries the renames and deletes for up to {} s", "_fs.DEFAULT_RETRY_SECONDS", RETRY),
    C(
        "docs/guides/windows.md",
        "waiting {} s, 0.1 s, ... up to {} s between tries, for up to **{} s** in all",
        "_fs.retry",
        RETRY_STEPS,
    ),
    C("docs/guides/windows.md", "(the default is {}; `0` turns retrying off;", "_fs.DEFAULT_RETRY_SECONDS", RETRY),
    C(
        "docs/reference/errors.md",
        "held longer than tunekit waits ({} s, `TUNEKIT_FS_RETRY_SECONDS`)",
        "_fs.DEFAULT_RETRY_SECONDS",
        RETRY,
    ),
    C("docs/zh/windows.md", "间隔从 {} 秒翻倍到 {} 秒，最多一共等 {} 秒", "_fs.retry", RETRY_STEPS),
    # --- limits ---
    C(
        "docs/reliability.md",
        "and more than {} in a row raise `TrainingError`",
        "guards.MAX_CONSECUTIVE_SKIPS",
        lambda: str(constant("backends/hf/guards.py", "MAX_CONSECUTIVE_SKIPS")),
    ),
    C(
        "docs/reliability.md",
        "runs for more than {} s on one conversation",
        "templates.RENDER_SECONDS",
        lambda: f"{constant('data/templates.py', 'RENDER_SECONDS'):g}",
    ),
    C(
        "docs/reliability.md",
        "writes more than {} million characters",
        "templates.RENDER_CHARS",
        lambda: f"{constant('data/templates.py', 'RENDER_CHARS') / 1e6:g}",
    ),  # type: ignore[operator]
    C(
        "docs/reliability.md",
        "the first and last {} bytes of every tensor in it (other weight formats: {} evenly "
        "spaced {} KiB blocks per file)",
        "save_format's fingerprint",
        lambda: (
            str(constant("save_format.py", "_EDGE")),
            str(constant("save_format.py", "_SAMPLES")),
            str(constant("save_format.py", "_BLOCK") // 1024),
        ),
    ),  # type: ignore[operator]
    C(
        "docs/reliability.md",
        "sampling reads {} bytes a tensor",
        "save_format._EDGE, both ends",
        lambda: str(2 * constant("save_format.py", "_EDGE")),
    ),  # type: ignore[operator]
    C(
        "docs/reliability.md",
        "whole numbers are bounded ({}-bit; `seed` {}-bit)",
        "Training's validators (test below)",
        lambda: ("64", "32"),
    ),
    C(
        "docs/concepts/data.md",
        "When at least {}% of the text rows hold a prompt marker",
        "templated.MIN_SHARE",
        lambda: f"{100 * constant('data/templated.py', 'MIN_SHARE'):g}",
    ),  # type: ignore[operator]
    C(
        "docs/guides/optimizers.md",
        "a fp32 scale per {} values); embeddings and tensors under {} values stay 32-bit",
        "optimizers._BNB_BLOCK, _BNB_MIN_8BIT",
        lambda: (
            str(constant("backends/hf/optimizers.py", "_BNB_BLOCK")),
            f"{constant('backends/hf/optimizers.py', '_BNB_MIN_8BIT'):,}",
        ),
    ),
    C(
        "docs/guides/export.md",
        "safetensors (sharded above {} GB)",
        "export.merged.write_hf",
        lambda: source_number(SRC / "export/merged.py", r'max_shard_size: str = "(\d+)GB"'),
    ),
    # --- counts ---
    C(
        "docs/reliability.md",
        "Marked `slow`: {} kills at random moments of random steps",
        "test_kill_resume.py's trials",
        lambda: {"4": "four"}[
            source_number(ROOT / "tests/integration/test_kill_resume.py", r'parametrize\("trial", range\((\d+)\)\)')
        ],
    ),
    C(
        "docs/guides/export.md",
        "or up to {} prompts sampled from the last `fit`'s eval data",
        "export/core.py's num_prompts (export and verify_export)",
        lambda: {"4": "four"}[
            "".join(set(re.findall(r"num_prompts: int = (\d+)", (SRC / "export/core.py").read_text(encoding="utf-8"))))
        ],
    ),
    C(
        "docs/reliability.md",
        "began as a table of {} mistakes (the catalogue now holds {} cases, below)",
        "tests/integration/test_bad_inputs*.py",
        lambda: (
            str(list_length(ROOT / "tests/integration/test_bad_inputs.py", "CATALOGUE")),
            str(bad_input_catalogue()),
        ),
    ),
    C(
        "docs/reliability.md",
        "against a pool of {} edge values",
        "tests/unit/test_fuzz_config.py POOL",
        lambda: str(list_length(ROOT / "tests/unit/test_fuzz_config.py", "POOL")),
    ),
    C(
        "docs/reliability.md",
        "{} seeded row layouts in the default suite",
        "tests/integration/test_fuzz_rows.py CASES",
        lambda: str(constant(ROOT / "tests/integration/test_fuzz_rows.py", "CASES")),
    ),
    C(
        "docs/reliability.md",
        "the same final weights to {}, with LoRA dropout on",
        "test_checkpoints.py tolerance",
        lambda: source_number(ROOT / "tests/integration/test_checkpoints.py", r"atol=(1e-\d)"),
    ),
    C(
        "docs/guides/distributed.md",
        "(the test suite checks this to {}, with two CPU processes)",
        "test_two_processes.py tolerance",
        lambda: source_number(ROOT / "tests/distributed/test_two_processes.py", r"approx\(one, abs=(1e-\d)\)"),
    ),
    C(
        "docs/reliability.md",
        "*Tested by* `test_full_disk.py` on a real {} MiB tmpfs",
        "test_full_disk.DISK_SIZE",
        lambda: str(constant(ROOT / "tests/integration/test_full_disk.py", "DISK_SIZE") >> 20),
    ),  # type: ignore[operator]
    C(
        "docs/methods/index.md",
        "| `tk.PTuning()` | virtual tokens from a prompt encoder |",
        "one row per method (test below)",
        lambda: (),
    ),
    # --- adapter sizes: r * (in + out) numbers per linear layer, 4 bytes each (fp32) ---
    C(
        "README.md",
        "({} MB for a 0.5B model at `r=8`, about {} MB for 7B: peft stores it in fp32)",
        "Qwen2-0.5B and Llama-2-7B shapes, LoRA formula",
        lambda: (QWEN_LORA8(), LLAMA_LORA8_MB()),
    ),
    C(
        "docs/concepts/index.md",
        "the adapter is small: {} MB for a 0.5B model at `r=8`, about {} MB for a 7B one",
        "LoRA formula",
        lambda: (QWEN_LORA8(), LLAMA_LORA8_MB()),
    ),
    C(
        "docs/methods/lora.md",
        "the adapter is {} MB for a 0.5B model at `r=8` and about {} MB for a 7B one",
        "LoRA formula",
        lambda: (QWEN_LORA8(), LLAMA_LORA8_MB()),
    ),
    C("docs/guides/use-your-model.md", "two adapters of about {} MB each (`r=8`)", "LoRA formula", LLAMA_LORA8_MB),
    C(
        "docs/guides/adapters.md",
        "For a {} x {} projection at `r = 8` that is {} numbers instead of {} million, {}%.",
        "r * (in + out) against in * out",
        lambda: ("4096", "4096", fmt(8 * 8192, 0), fmt(4096**2 / 1e6), fmt(100 * 8 * 8192 / 4096**2)),
    ),
    C(
        "docs/guides/adapters.md",
        "an `r = 8` adapter is about {} million parameters: **about {} MB on disk**",
        "LoRA formula, Llama-2-7B",
        lambda: (str(round(LLAMA2_7B.lora(8) / 1e6)), LLAMA_LORA8_MB()),
    ),
    C(
        "docs/guides/adapters.md",
        "against {} GB for the model in bf16; for Qwen2-0.5B it is {} million parameters, {} MB.",
        "Llama-2-7B and Qwen2-0.5B shapes",
        lambda: (fmt(2 * LLAMA2_7B.params() / 1e9), fmt(QWEN2_05B.lora(8) / 1e6), QWEN_LORA8()),
    ),
    C(
        "docs/guides/adapters.md",
        "smaller still: {} MB and {} KiB on the same 7B model ({} and {} parameters",
        "IA3 and prompt tuning on Llama-2-7B",
        lambda: (
            fmt(FP32 * LLAMA2_7B.ia3() / 1e6),
            str(FP32 * 20 * LLAMA2_7B.hidden // 1024),
            fmt(LLAMA2_7B.ia3(), 0),
            fmt(default(tk.PromptTuning, "num_virtual_tokens") * LLAMA2_7B.hidden, 0),
        ),
    ),  # type: ignore[operator]
    C(
        "docs/guides/export.md",
        "for LoRA with `r=8` on a 0.5 B model, {} M parameters",
        "LoRA formula",
        lambda: fmt(QWEN2_05B.lora(8) / 1e6),
    ),
    C("docs/guides/export.md", "(the *adapter*: {} MB, as peft stores them in fp32)", "LoRA formula", QWEN_LORA8),
    C(
        "docs/guides/export.md",
        "(about {} GB for a 0.5 B model in bf16)",
        "Qwen2-0.5B shape",
        lambda: str(round(2 * QWEN2_05B.params() / 1e9)),
    ),
    C(
        "docs/guides/export.md",
        "# adapter alone: {} MiB (4,399,104 parameters, stored in fp32",
        "LoRA formula in MiB",
        lambda: fmt(FP32 * QWEN2_05B.lora(8) / 2**20),
    ),
    C("docs/guides/export.md", "stored in fp32 by peft whatever the precision)", "(the quote stays)", lambda: ()),
    C("docs/guides/export.md", "(4,399,104 parameters, stored", "LoRA formula", lambda: ()),
    C(
        "docs/guides/export.md",
        "# merged model weights (bf16): {} MiB ({} parameters, 2 bytes each)",
        "Qwen2-0.5B shape",
        lambda: (fmt(2 * QWEN2_05B.params() / 2**20), fmt(QWEN2_05B.params(), 0)),
    ),
    C(
        "docs/guides/export.md",
        "LoRA trains only {} of the model's {} parameters ({}%)",
        "export's explanation: the adapter counted in the total",
        lambda: (
            fmt(QWEN2_05B.lora(8), 0),
            fmt(QWEN2_05B.params() + QWEN2_05B.lora(8), 0),
            f"{100 * QWEN2_05B.lora(8) / (QWEN2_05B.params() + QWEN2_05B.lora(8)):.2f}",
        ),
    ),
    C(
        "docs/tutorial.md",
        "For Qwen2.5-0.5B at `r=8`, each of the {} linear layers of its {} blocks gets",
        "Qwen2-0.5B shape",
        lambda: (str(len(QWEN2_05B.linear())), str(QWEN2_05B.layers)),
    ),
    C(
        "docs/tutorial.md",
        "About {} MB at `r=8`, {} MB at `r=16`",
        "LoRA formula",
        lambda: (QWEN_LORA8(), str(round(FP32 * QWEN2_05B.lora(16) / 1e6))),
    ),
    C(
        "docs/tutorial.md",
        "about {} GB for 0.5B in bf16",
        "Qwen2-0.5B shape",
        lambda: str(round(2 * QWEN2_05B.params() / 1e9)),
    ),
    C(
        "docs/tutorial.md",
        "downloads from the Hugging Face Hub on first use (about {} GB)",
        "bf16 weights of the shape",
        lambda: str(round(2 * QWEN2_05B.params() / 1e9)),
    ),
    C(
        "docs/zh/tutorial.md",
        "`r=8` 时约 {} MB，`r=16` 时约 {} MB",
        "LoRA formula",
        lambda: (QWEN_LORA8(), str(round(FP32 * QWEN2_05B.lora(16) / 1e6))),
    ),
    C(
        "docs/zh/tutorial.md",
        "0.5B 模型 bf16 约 {} GB",
        "Qwen2-0.5B shape",
        lambda: str(round(2 * QWEN2_05B.params() / 1e9)),
    ),
    C(
        "docs/zh/tutorial.md",
        "会从 Hugging Face Hub 下载（约 {} GB）",
        "Qwen2-0.5B shape",
        lambda: str(round(2 * QWEN2_05B.params() / 1e9)),
    ),
    C(
        "docs/zh/faq.md",
        "Qwen2-0.5B 在 `r=8` 时是 {} 个参数、约 {} MB",
        "LoRA formula",
        lambda: (fmt(QWEN2_05B.lora(8), 0), QWEN_LORA8()),
    ),
    C(
        "docs/zh/adapters.md",
        "24 层，hidden 896， MLP 4864，14 个注意力头、2 个 KV 头",
        "the shape the formulas use",
        lambda: (),
    ),
    *(
        C(
            "docs/zh/adapters.md",
            f"r={r:>2}: {{}} 个参数，适配器 {{}} MB（fp32），占模型的 {{}}%",
            "LoRA formula (printed block)",
            lambda r=r: (
                fmt(QWEN2_05B.lora(r), 0),
                f"{FP32 * QWEN2_05B.lora(r) / 1e6:5.1f}".strip(),
                f"{100 * QWEN2_05B.lora(r) / QWEN2_05B.params():.2f}",
            ),
        )
        for r in (8, 16, 64)
    ),
    C(
        "docs/zh/adapters.md",
        "基座模型 {} 个参数，合并后 bf16 约 {} GB",
        "Qwen2-0.5B shape",
        lambda: (fmt(QWEN2_05B.params(), 0), f"{2 * QWEN2_05B.params() / 1e9:.2f}"),
    ),
    C(
        "docs/zh/adapters.md",
        "在 Qwen2-0.5B 上，IA3 约 {} KiB，提示微调（默认 {} 个虚拟 token）约 {} KiB",
        "IA3 and prompt tuning on Qwen2-0.5B",
        lambda: (
            str(round(FP32 * QWEN2_05B.ia3() / 1024)),
            str(default(tk.PromptTuning, "num_virtual_tokens")),
            str(round(FP32 * 20 * QWEN2_05B.hidden / 1024)),
        ),
    ),
    C(
        "docs/methods/prompt-tuning.md",
        "tokens, {} KiB in fp32 on a 1B model with {}-wide embeddings.",
        "num_virtual_tokens x hidden x 4 bytes",
        lambda: (str(FP32 * default(tk.PromptTuning, "num_virtual_tokens") * 2048 // 1024), "2,048"),
    ),  # type: ignore[operator]
    C(
        "docs/methods/vera.md",
        "(1.4 M against {} M on a 7B model,",
        "LoRA formula (VeRA's 1.4 M: the concepts block)",
        lambda: fmt(LLAMA2_7B.lora(8) / 1e6),
    ),
    # --- memory: bytes per parameter ---
    C(
        "docs/concepts/index.md",
        "about {} bytes per parameter ({} GB for 7B)",
        "2 + 4 + 2 + 8 bytes, x 7e9",
        lambda: (str(2 + 4 + 2 + 8), str(16 * 7)),
    ),
    C(
        "docs/concepts/index.md",
        "that is the weights ({} bytes), a float32 master copy and gradients ({} + {}) and "
        "Adam's two moments ({}): about {} bytes per parameter",
        "the sum",
        lambda: ("2", "4", "2", "8", str(2 + 4 + 2 + 8)),
    ),
    C(
        "docs/concepts/index.md",
        "a 7B model that needs {} GB, several 80 GB GPUs, to fine-tune fully",
        "16 bytes x 7e9",
        lambda: str(16 * 7),
    ),
    C(
        "docs/concepts/index.md",
        "LoRA on one 24 GB card ({} GB of bf16 weights), and with QLoRA ({} GB of weights, the linear layers "
        "in 4 bits)",
        "Llama-2-7B shape; NF4 with double quantization",
        lambda: (fmt(2 * LLAMA2_7B.params() / 1e9), fmt(LLAMA2_7B.nf4_bytes() / 1e9)),
    ),
    C(
        "docs/methods/lora.md",
        "a 7B model's frozen weights take about {} GB instead of {} GB in bf16",
        "Llama-2-7B shape; NF4 with double quantization",
        lambda: (fmt(LLAMA2_7B.nf4_bytes() / 1e9), fmt(2 * LLAMA2_7B.params() / 1e9)),
    ),
    C("docs/methods/full.md", "about {} bytes of GPU memory per parameter with Adam", "2 + 4 + 2 + 8", lambda: "16"),
    C(
        "docs/guides/optimizers.md",
        "{} bytes a parameter, twice the fp32 weights' own gradients and four times bf16",
        "two fp32 moments",
        lambda: str(2 * 4),
    ),
    C("docs/guides/optimizers.md", "a quarter of AdamW's state at about", "8-bit AdamW ~2 of AdamW's 8", lambda: ()),
    C(
        "docs/guides/distributed.md",
        "linear layers about {} GB per billion parameters",
        "4 bits a parameter",
        lambda: str(4 / 8),
    ),
    C(
        "docs/guides/distributed.md",
        "for Llama-2-7B ({} B parameters)",
        "Llama-2-7B shape",
        lambda: f"{LLAMA2_7B.params() / 1e9:.2f}",
    ),
    C(
        "docs/guides/distributed.md",
        "LoRA is r=16 on every linear layer ({} M trainable parameters, {} % of the model)",
        "LoRA formula",
        lambda: (fmt(LLAMA2_7B.lora(16) / 1e6), f"{100 * LLAMA2_7B.lora(16) / LLAMA2_7B.params():.1f}"),
    ),
    C(
        "docs/guides/distributed.md",
        "({} bytes per trainable parameter: about {} GiB for full fine-tuning",
        "2 + 12 bytes",
        lambda: ("14", str(round(14 * LLAMA2_7B.params() / 2**30))),
    ),
    C(
        "docs/guides/distributed.md",
        "fp32 master weights for full fine-tuning: {} or {} GB for this model",
        "2 and 4 bytes a parameter",
        lambda: (str(round(2 * LLAMA2_7B.params() / 1e9)), str(round(4 * LLAMA2_7B.params() / 1e9))),
    ),
    C(
        "docs/guides/distributed.md",
        "8 processes with `batch_size=4` and `grad_accum=2` train on {} examples",
        "8 x 4 x 2",
        lambda: str(8 * 4 * 2),
    ),
    C(
        "docs/guides/distributed.md",
        'engine=tk.FSDP(), processes=8)["total"] / 2**30   # {}',
        "state_memory_per_gpu",
        lambda: fmt(
            state_memory_per_gpu(LLAMA2_7B.params(), LLAMA2_7B.params(), engine=tk.FSDP(), processes=8)["total"] / 2**30
        ),
    ),
    C(
        "docs/tutorial.md",
        "grad_accum=4,               # 4 x 4 = {} examples per optimizer step",
        "4 x 4",
        lambda: str(4 * 4),
    ),
    # --- benchmark figures: benchmarks/README.md is their source ---
    C(
        "README.md",
        "(AdamW keeps {} bytes of state per trained parameter; 8-bit AdamW about {}, GaLore at rank 128 about "
        "{} on a 7B shape)",
        "benchmarks/README.md",
        lambda: (
            f"{float(optimizer_bytes('adamw')):.0f}",
            str(round(float(bench_text(r"8-bit AdamW ([\d.]+) \(2\.03")))),
            str(round(float(bench_text(r"GaLore at rank 128 ([\d.]+),")), 1)),
        ),
    ),
    C(
        "docs/guides/optimizers.md",
        "on a tiny Llama ({} wide, {} layers, {} M parameters, full fine-tuning, CPU)",
        "optimizer_memory's raw line",
        lambda: (
            str(bench()["optimizer_memory"]["model"]["hidden"]),  # type: ignore[index]
            str(bench()["optimizer_memory"]["model"]["layers"]),  # type: ignore[index]
            fmt(bench()["optimizer_memory"]["model"]["trainable_params"] / 1e6),
        ),
    ),  # type: ignore[index, operator]
    C(
        "docs/guides/optimizers.md",
        "AdamW {} bytes a parameter; 8-bit AdamW {} (its embeddings",
        "optimizer_memory",
        lambda: (f"{float(optimizer_bytes('adamw')):.1f}", optimizer_bytes("adamw_8bit")),
    ),
    C(
        "docs/guides/optimizers.md",
        "Adafactor {}; Lion and SGD {}; GaLore and APOLLO at rank 64, {}; Muon {}.",
        "optimizer_memory",
        lambda: (
            optimizer_bytes("adafactor"),
            f"{float(optimizer_bytes('lion')):.1f}",
            optimizer_bytes("galore"),
            optimizer_bytes("muon"),
        ),
    ),
    C(
        "docs/guides/optimizers.md",
        "`plan()`'s count gives: AdamW {}, 8-bit AdamW {}, Muon {}, GaLore at rank 128 {}, "
        "APOLLO-Mini {}, Adafactor {}.",
        "benchmarks/README.md's 7B sentence",
        lambda: (
            bench_text(r"against AdamW's (\d+)\."),
            bench_text(r"8-bit AdamW ([\d.]+) \(2\.03"),
            bench_text(r"Muon ([\d.]+), Adafactor"),
            bench_text(r"GaLore at rank 128 ([\d.]+),"),
            bench_text(r"APOLLO-Mini \(rank 1\) ([\d.]+),"),
            bench_text(r"Adafactor ([\d.]+), against"),
        ),
    ),
    C(
        "docs/guides/use-your-model.md",
        "`benchmarks/serve_load.py` measures {} concurrent streaming clients",
        "benchmarks/README.md",
        lambda: bench_text(r"(\d+) concurrent streaming clients \(openai client\)"),
    ),
    # --- wall times: the table in benchmarks/README.md ---
    C(
        "README.md",
        "## Try it: the demo (CPU, no network, {})",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo")),
    ),
    C(
        "docs/getting-started.md",
        "## The demo: see fine-tuning work in {}, on a CPU",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo")),
    ),
    C(
        "docs/cli.md",
        "| `tunekit demo` | the CPU demo ({}) |",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo")),
    ),
    C(
        "README.zh.md",
        "tunekit demo               # 在 CPU 上{}就能看到微调前后的效果",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo"), zh=True),
    ),
    C(
        "docs/zh/quickstart.md",
        "## 演示：在 CPU 上{}看到微调的效果",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo"), zh=True),
    ),
    C(
        "docs/zh/index.md",
        "安装、{}的演示、十行代码完成第一次微调",
        "wall time: tunekit demo",
        lambda: minutes(wall_time("tunekit demo"), zh=True),
    ),
    C(
        "README.md",
        "`tunekit demo` from outside the checkout ({} on 2 cores)",
        "wall time: nox -s package",
        lambda: minutes(wall_time("nox -s package")),
    ),
    C(
        "CONTRIBUTING.md",
        "`nox -s package` ({} on 2 cores,",
        "wall time: nox -s package",
        lambda: minutes(wall_time("nox -s package")),
    ),
    C(
        "README.md",
        "`examples/rlhf_pipeline.py` runs the recipe end to end on a CPU in {}.",
        "wall time: examples/rlhf_pipeline.py",
        lambda: minutes(wall_time("examples/rlhf_pipeline.py")),
    ),
    C(
        "README.md",
        "The default suite runs on CPU in {} on 2 cores",
        "wall time: the default suite",
        lambda: minutes(wall_time("the default suite (pytest)")),
    ),
    C(
        "docs/reliability.md",
        "Hashing reads every byte once more ({} s per GiB for sha256 on one core of the development machine)",
        "wall time: sha256 of 1 GiB",
        SHA,
    ),
    C(
        "docs/guides/distributed.md",
        "while the others wait ({} s per GiB on one core of the development machine)",
        "wall time: sha256 of 1 GiB",
        SHA,
    ),
    C(
        "docs/concepts/architecture.md",
        "about {} s of tests, {}-{} minutes with the install, on 2 CPU cores",
        "wall time: nox -s compat",
        lambda: (
            str(round(wall_time("nox -s compat: the tests"))),
            str(math.floor(wall_time("nox -s compat: with the install") / 60)),
            str(math.ceil(wall_time("nox -s compat: with the install") / 60)),
        ),
    ),
    C(
        "docs/concepts/index.md",
        "trades one more forward pass per step (about a third more compute)",
        "backward = 2 forwards: 1 / (1 + 2)",
        lambda: (),
    ),
    C(
        "docs/guides/optimizers.md",
        "one more forward pass per step, about a third more compute.",
        "backward = 2 forwards: 1 / (1 + 2)",
        lambda: (),
    ),
    C(
        "docs/tutorial.md",
        "one more forward pass per step, about a third more compute",
        "backward = 2 forwards",
        lambda: (),
    ),
    C("docs/zh/tutorial.md", "代价是每步多算一次前向传播（计算量多约三分之一）", "backward = 2 forwards", lambda: ()),
]

# Numbers a page computes and asserts in a block the docs test runs: (page, quote, the block's assertion).
SNIPPET_CLAIMS: list[tuple[str, str, str]] = [
    ("docs/concepts/index.md", "| 6.0% (`Freeze()`", 'two(share["Freeze"]) == "6.0"'),
    ("docs/concepts/index.md", "| 0.020-0.59% (`LoRA()`: 0.30%) |", '== "0.020-0.59" and two(share["LoRA"]) == "0.30"'),
    ("docs/concepts/index.md", "| 0.0091-0.26% |", 'spread("OFT", "IA3") == "0.0091-0.26"'),
    (
        "docs/concepts/index.md",
        "| 0.0012-0.74% |",
        'spread("PromptTuning", "PrefixTuning", "PTuning") == "0.0012-0.74"',
    ),
    (
        "docs/methods/lora.md",
        "It trains 0.30% of a 7B model's parameters at `r=8` (2.3% at `r=64`)",
        'two(share["LoRA-r64"]) == "2.3"',
    ),
    (
        "docs/methods/vera.md",
        "about 14 times fewer parameters than LoRA at `r=8` (1.4 M against",
        'round(trainable["LoRA"] / trainable["VeRA"]) == 14',
    ),
    ("docs/methods/vera.md", "(1.4 M against", 'trainable["VeRA"] == 1_417_216'),
    (
        "README.md",
        "about 14x fewer parameters than LoRA at `r=8`",
        'round(trainable["LoRA"] / trainable["VeRA"]) == 14',
    ),
    ("README.md", "the fewest parameters of the mergeable methods", 'key=trainable.get) == "IA3"'),
    (
        "docs/methods/ia3.md",
        "fewest parameters of all the weight-based methods (0.0091% of a 7B model",
        'spread("OFT", "IA3") == "0.0091-0.26"',
    ),
    (
        "docs/methods/lycoris.md",
        "whose rank can reach `r²` for about twice LoRA's parameters",
        'trainable["LoHa"] == 2 * trainable["LoRA"]',
    ),
    (
        "docs/methods/prompt-tuning.md",
        "`num_virtual_tokens x hidden_size` numbers",
        "== 8 * tuner.model.config.hidden_size",
    ),
    (
        "docs/tutorial.md",
        "| 6 GB GPU | `batch_size=4, grad_accum=4, max_length=1024, gradient_checkpointing=True` | 1.7 GiB |",
        'table = {"6 GB GPU": 1.7, "8 GB GPU": 3.9, "12-16 GB GPU": 6.9, "24 GB GPU": 12.5, "CPU": 5.3}',
    ),
    (
        "docs/tutorial.md",
        "| 8 GB GPU | `batch_size=2, grad_accum=8, max_length=1024` (no checkpointing, faster) | 3.9 GiB |",
        '"8 GB GPU": 3.9',
    ),
    (
        "docs/tutorial.md",
        "| 12-16 GB GPU | `batch_size=4, grad_accum=4, max_length=1024` (the 6 GB row without checkpointing) "
        "| 6.9 GiB |",
        '"12-16 GB GPU": 6.9',
    ),
    (
        "docs/tutorial.md",
        "| 24 GB GPU | `batch_size=8, grad_accum=2, max_length=1024` | 12.5 GiB |",
        '"24 GB GPU": 12.5',
    ),
    ("docs/tutorial.md", "| 5.3 GiB of RAM;", '"CPU": 5.3'),
    ("docs/tutorial.md", "It runs on a 6 GB GPU", "assert plan.fits, row"),
    ("docs/tutorial.md", "# 4,399,104 parameters, 17.6 MB", "assert lora_params == 4_399_104"),
    (
        "docs/zh/tutorial.md",
        "| 6 GB 显卡 | `batch_size=4, grad_accum=4, max_length=1024, gradient_checkpointing=True` | 1.7 GiB |",
        '"6 GB GPU": 1.7',
    ),
    (
        "docs/zh/tutorial.md",
        "| 24 GB 显卡 | `batch_size=8, grad_accum=2, max_length=1024` | 12.5 GiB |",
        '"24 GB GPU": 12.5',
    ),
    ("docs/zh/tutorial.md", "# 4,399,104 个参数，17.6 MB", "assert lora_params == 4_399_104"),
    ("docs/zh/adapters.md", "assert base == 494_032_768", "assert base == 494_032_768"),
    (
        "docs/guides/evaluation.md",
        'print(result.metrics["exact_match"])  # 0.5',
        'assert result.metrics["exact_match"] == 0.5',
    ),
    (
        "docs/guides/evaluation.md",
        "# ['北', '京', '是', '首', '都'] 0.769...",
        'round(zh.metrics["rouge_l"], 3) == 0.769',
    ),
]

# Pages whose numbers belong to another audit for now (issue #22: model size, plan, supported models), and the
# README's plan() paragraph ("within 2% of a measured step"), left out of CLAIMS for the same reason.
OWNED_ELSEWHERE = {
    "docs/guides/model-size.md",
    "docs/zh/model-size.md",
    "docs/guides/plan.md",
    "docs/supported-models.md",
    "docs/zh/supported-models.md",
    "docs/zh/plan.md",
}


def words(text: str) -> str:
    return " ".join(text.split())


def page_text(page: str) -> str:
    return words((ROOT / page).read_text(encoding="utf-8"))


@pytest.mark.parametrize("claim", CLAIMS, ids=Claim.id)
def test_the_page_states_the_computed_number(claim: Claim) -> None:
    assert claim.page not in OWNED_ELSEWHERE
    text = page_text(claim.page)
    quote = words(claim.quote)
    parts = [re.escape(part) for part in quote.split("{}")]
    found = re.search(r"(.+?)".join(parts), text)
    assert found, (
        f"{claim.page} no longer says {quote!r}: if the sentence moved or changed, update its row in "
        "tests/test_docs_numbers.py (and keep the number computed)"
    )
    value = claim.value()
    expected = (value,) if isinstance(value, str) else value
    if not expected:
        return  # a quote whose number is checked elsewhere in this file, or a statement kept from rotting
    assert quote.count("{}") == len(expected), f"{claim.id()}: {len(expected)} values for the quote's placeholders"
    if quote.format(*expected) not in text:  # not an assert: pytest would print the whole page
        pytest.fail(f"{claim.page} says {found.group(0)!r}, but {claim.how} gives {quote.format(*expected)!r}")


@pytest.mark.parametrize("page,quote,assertion", SNIPPET_CLAIMS, ids=lambda x: str(x)[:50])
def test_a_number_the_page_computes_is_asserted_in_a_block_the_docs_test_runs(
    page: str, quote: str, assertion: str
) -> None:
    assert words(quote) in page_text(page), f"{page} no longer says {quote!r}: update SNIPPET_CLAIMS"
    runs = {
        "docs/concepts/index.md",
        "docs/tutorial.md",
        "docs/zh/adapters.md",
        "docs/guides/evaluation.md",
        "docs/methods/prompt-tuning.md",
    }
    where = [p for p in runs if any(assertion in code for _, code, reason in snippets(ROOT / p) if reason is None)]
    assert where, f"{page}: no block the docs test runs asserts {assertion!r} any more"


def test_every_command_has_a_row_on_the_cli_page() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `tunekit ([a-z-]+)", text, re.M))
    assert rows == set(subcommands()), (
        f"docs/cli.md's table lacks {set(subcommands()) - rows}, has {rows - set(subcommands())}"
    )


def test_every_method_and_objective_is_in_its_index_table() -> None:
    from tunekit.methods import registry

    for folder, names in (("methods", registry()), ("objectives", OBJECTIVES)):
        text = (ROOT / "docs" / folder / "index.md").read_text(encoding="utf-8")
        rows = set(re.findall(r"^\| `tk\.(\w+)\(", text, re.M)) | set(re.findall(r"`, `tk\.(\w+)\(\)", text))
        assert rows == set(names), f"docs/{folder}/index.md: the table's rows {sorted(rows)} against {sorted(names)}"


def test_the_cli_exits_2_on_a_wrong_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunekit.cli import main

    assert main(["fit", str(tmp_path / "no-such.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_whole_numbers_are_bounded_at_64_bits_and_the_seed_at_32() -> None:
    tk.Training(max_steps=2**63 - 1, seed=2**32 - 1)
    for bad in ({"max_steps": 2**63}, {"seed": 2**32}):
        with pytest.raises(tk.ConfigError):
            tk.Training(**bad)  # type: ignore[arg-type]


def test_the_shapes_the_formulas_use_are_the_published_ones() -> None:
    """Qwen2-0.5B (0.49 B) and Llama-2-7B (6.74 B): the parameter counts their model cards state, so that a typo in a
    shape above cannot move every figure derived from it. The adapter formula itself is checked against peft on the
    real shape by the block of docs/zh/adapters.md, and against tunekit's plan by docs/concepts/index.md's block."""
    assert QWEN2_05B.params() == 494_032_768 and QWEN2_05B.lora(8) == 4_399_104
    assert LLAMA2_7B.params() == 6_738_415_616 and LLAMA2_7B.lora(8) == 19_988_480 and LLAMA2_7B.ia3() == 614_400


# docs/guides/distributed.md's memory table, cell by cell, is checked against state_memory_per_gpu by
# tests/distributed/test_engines.py::test_the_memory_table_of_the_guide_is_what_the_formula_gives.


def test_no_option_table_shows_a_raw_annotation() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from mkdocs_hooks import options_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for name in tk.__all__:
        cls = getattr(tk, name)
        if isinstance(cls, type) and hasattr(cls, "model_fields"):
            table = options_table(name)
            assert "Annotated[" not in table and "FieldInfo" not in table, f"the option table of tk.{name}: {table}"


@pytest.mark.parametrize("page", ["docs/getting-started.md", "docs/zh/quickstart.md"])
def test_the_first_fine_tune_is_ten_lines(page: str) -> None:
    """ "Your first fine-tune in ten lines" / "十行代码": ten statements in the page's first runnable block."""
    heading = {
        "docs/getting-started.md": "## Your first fine-tune in ten lines",
        "docs/zh/quickstart.md": "## 十行代码",
    }
    assert heading[page] in (ROOT / page).read_text(encoding="utf-8")
    code = next(code for _, code, reason in snippets(ROOT / page) if reason is None and "tuner.fit(" in code)
    assert len(ast.parse(code).body) == 10, f"{page}: the first fine-tune has {len(ast.parse(code).body)} statements"


# Numbers in the configs' field descriptions and docstrings, which the option tables and the API reference render.
DESCRIPTIONS: list[tuple[type, str, str, Callable[[], tuple[str, ...]]]] = [
    (tk.Training, "learning_rate", "the method's default (LoRA {}, Full {})", BOTH_LR),
    (tk.Training, "gradient_checkpointing", "one more forward pass per step (about a third more compute)", lambda: ()),
    (tk.Training, "seed", "(0 to 2**{} - 1)", lambda: ("32",)),
    (
        tk.Training,
        "tokens_per_batch",
        "at most 2**{}",
        lambda: (str(int(math.log2(le_bound(tk.Training, "tokens_per_batch")))),),
    ),
    (tk.LoRA, "alpha", "None means {} * r", lambda: (str(tk.LoRA(r=5).alpha // 5),)),  # type: ignore[operator]
    (tk.AdaLoRA, "alpha", "None means {} * init_r", lambda: ("2",)),
    (tk.Freeze, "last_layers", "None with no modules means {}", lambda: (str(tk.Freeze().last_layers),)),
    (tk.LoRA, "__doc__", "17.6 MB for a 0.5B model at ``r=8``, about {} MB for a 7B one", lambda: (LLAMA_LORA8_MB(),)),
]


@pytest.mark.parametrize("config,field,quote,value", DESCRIPTIONS, ids=lambda x: getattr(x, "__name__", str(x))[:40])
def test_the_option_tables_and_docstrings_state_the_computed_number(
    config: type, field: str, quote: str, value: Callable[[], tuple[str, ...]]
) -> None:
    text = words(config.__doc__ or "") if field == "__doc__" else words(config.model_fields[field].description or "")  # type: ignore[attr-defined]
    expected = quote.format(*value())
    assert expected in text, f"tk.{config.__name__}.{field} says {text!r}; the code gives {expected!r}"


def test_the_chinese_tutorials_settings_table_is_the_english_one() -> None:
    """The settings table's rows are checked by the English tutorial's appendix (a block the docs test runs); the
    Chinese page repeats them: the same settings and the same estimated peaks, row by row."""

    def rows(page: str) -> list[tuple[str, str]]:
        text = (ROOT / page).read_text(encoding="utf-8")
        found = re.findall(r"^\| [^|]*(?:GPU|显卡) \| `([^`]*)`[^|]* \| ([0-9.]+ GiB) \|$", text, flags=re.M)
        assert len(found) == 4, f"{page}: expected the four GPU rows of the settings table, found {found}"
        return found

    assert rows("docs/zh/tutorial.md") == rows("docs/tutorial.md")
