"""Fuzzing every public config with a seeded generator: each value is either accepted as given or refused with a
ConfigError naming the option; never another exception, never a value silently changed.

The classes come from the public API (every config class ``tunekit`` exports: ``Training``, each method, each
objective, the distributed engines), so a new option or class is fuzzed without editing this file. YAML run configs
go through the config-file loader the same way. Runs in a few seconds; ``tests/integration/test_fuzz_config_runs.py``
trains on a sample of the accepted configs.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path, PurePath
from typing import Any

import pytest
import yaml

import tunekit as tk
from tunekit._config import Config

SEED = 20240523

CLASSES: list[type[Config]] = sorted(
    (obj for name in tk.__all__ if isinstance(obj := getattr(tk, name), type) and issubclass(obj, Config)),
    key=lambda c: c.__name__,
)
CLASSES = [c for c in CLASSES if c is not tk.RunConfig and c.model_fields]  # RunConfig: fuzzed as YAML below

# Values users pass by mistake, and the edges of the valid ones.
POOL: list[Any] = [
    True, False, None, 0, 1, -1, 2, 3, 8, 64, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**64), 10**400,
    0.0, -0.0, 0.5, 1.0, 1.5, -0.5, 1e-4, 0.999, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf,
    "", " ", "auto", "none", "None", "yes", "no", "true", "1", "-1", "1e-4", "3.5", "nan", "inf", "abc", "cuda",
    "cpu", "mps", "cuda:0", "cuda:-1", "all-linear", "q_proj", "\x00", "é" * 300,
    [], [1], [True], ["q_proj"], ["q_proj", "q_proj"], [""], [0.5, 0.5], [math.nan], (), ("tensorboard",),
    {}, {"a": 1}, {"kind": "fsdp"}, object(), Path("some/dir"), b"bytes", 1 + 2j,
]  # fmt: skip


def _candidates(cls: type[Config], field: str) -> list[Any]:
    """The pool, plus the field's default and, for a Literal, its choices."""
    info = cls.model_fields[field]
    extra: list[Any] = [] if info.default_factory is not None else [info.default]
    for arg in getattr(info.annotation, "__args__", ()):
        extra += [a for a in getattr(arg, "__args__", ()) if isinstance(a, (str, int, float))]
    return POOL + extra


def _same(given: Any, kept: Any) -> bool:
    """Whether an accepted value is what the user gave, up to the documented spellings: a number for a float option,
    a numeric string (YAML reads 1e-4 as a string), a path as a string, a list as a tuple, a name for an engine."""
    if isinstance(given, bool) or isinstance(kept, bool):
        return given is kept
    if kept == given and type(kept) is type(given):
        return True
    if isinstance(kept, float) and isinstance(given, int):
        return kept == float(given)  # a whole number for a float option: the nearest float
    if isinstance(kept, (int, float)) and isinstance(given, (int, float)):
        return kept == given
    if isinstance(kept, (int, float)) and isinstance(given, str):
        try:
            return float(given) == kept
        except ValueError:
            return False
    if kept == () and given == "none":
        return True  # report_to="none": no tracker
    if isinstance(given, PurePath):
        return kept in (str(given), [str(given)])
    if isinstance(kept, tuple) and isinstance(given, (list, tuple, str)):
        return list(kept) == ([given] if isinstance(given, str) else list(given))
    if isinstance(kept, list) and isinstance(given, dict):
        return kept == list(given)  # tk.Mix({source: weight}): the sources (the weights go to weights=)
    if isinstance(kept, list) and isinstance(given, (list, tuple, str)):
        return kept == ([given] if isinstance(given, str) else list(given))  # one reward or several
    if isinstance(kept, Config):  # an engine given by name or as a mapping
        return isinstance(given, (str, dict))
    return False


def _derived(cls: type[Config], field: str, given: Any, obj: Config) -> bool:
    """A None (or 'auto') the class documents as 'computed from the other options' (LoRA(alpha=None) -> 2 * r)."""
    return given is None and cls.model_fields[field].default is None and getattr(obj, field) is not None


def _check(cls: type[Config], options: dict[str, Any]) -> Config | None:
    try:
        obj = cls(**options)
    except tk.ConfigError as e:
        message = str(e)
        assert any(name in message for name in options), (cls.__name__, options, message)
        assert "Traceback" not in message and message.strip(), message
        return None
    except Exception as e:
        pytest.fail(f"{cls.__name__}(**{options!r:.200}) raised {type(e).__name__}: {e}")
    for name, given in options.items():
        kept = getattr(obj, name)
        assert _same(given, kept) or _derived(cls, name, given, obj), (cls.__name__, name, given, kept)
    # Every accepted config round-trips through a dump, JSON and YAML (what the CLI and saves read).
    dumped = obj.model_dump(mode="json")
    assert cls(**dumped) == obj, (cls.__name__, options)
    assert cls.model_validate_json(obj.model_dump_json()) == obj, (cls.__name__, options)
    assert cls(**yaml.safe_load(yaml.safe_dump(dumped))) == obj, (cls.__name__, options)
    return obj


def test_the_public_configs_are_all_fuzzed() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"Training", "LoRA", "LoHa", "PromptTuning", "SFT", "DPO", "GRPO", "FSDP"} <= names, names
    assert len(CLASSES) >= 20, names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_option_takes_every_value_or_names_it(cls: type[Config]) -> None:
    """One option at a time, every value of the pool: accepted as given, or a ConfigError naming the option."""
    accepted = 0
    for field in cls.model_fields:
        for value in _candidates(cls, field):
            accepted += _check(cls, {field: value}) is not None
    assert accepted >= len(cls.model_fields)  # every option accepts at least its default


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_random_combinations_are_accepted_or_named(cls: type[Config]) -> None:
    """Several options at once (the model-level rules between options), 150 draws a class."""
    rng = random.Random(f"{SEED}-{cls.__name__}")
    fields = list(cls.model_fields)
    for _ in range(150):
        chosen = rng.sample(fields, k=rng.randint(1, min(4, len(fields))))
        _check(cls, {f: rng.choice(_candidates(cls, f)) for f in chosen})


def test_model_copy_and_model_validate_take_the_same_path() -> None:
    rng = random.Random(SEED)
    for cls in CLASSES:
        for _ in range(30):
            field = rng.choice(list(cls.model_fields))
            value = rng.choice(_candidates(cls, field))
            try:
                cls.model_validate({field: value})
            except tk.ConfigError:
                pass
            try:
                cls().model_copy(update={field: value}) if _default_ok(cls) else None
            except tk.ConfigError:
                pass


def _default_ok(cls: type[Config]) -> bool:
    try:
        cls()
    except tk.ConfigError:
        return False
    return True


# --- YAML run configs through the config-file loader ------------------------------------------------------------

GOOD_YAML = """\
model: tiny
method: {name: lora, r: 8}
training:
  max_steps: 2
  learning_rate: 2.0e-4
  batch_size: 4
data: train.jsonl
output_dir: runs/x
"""

# YAML spellings of values, including the ones YAML 1.1 reads surprisingly (yes -> True, 0x10 -> 16, 1e-4 -> str).
YAML_VALUES = [
    "yes", "no", "on", "off", "true", "~", "null", "0", "-1", "1", "8", "0x10", "0o17", "1e-4", "1.0e-4", ".inf",
    "-.inf", ".nan", "18446744073709551616", "4294967296", "''", "' '", "abc", "[]", "[1, 2]", "{}", "{a: 1}",
    "2024-01-01", "!!binary aGVsbG8=", "&a 1", "*a", "|\n    text", "- 1", "[", "{", "'unclosed", "\"\\x\"",
    "\t1", "1:2", "lora", "{name: lora}", "{name: 5}", "{name: lorra}", "{name: dpo, beta: yes}", "auto",
]  # fmt: skip
KEYS = [
    "model", "method", "objective", "training", "data", "eval_data", "output_dir", "save", "template",
    "training.max_steps", "training.epochs", "training.learning_rate", "training.seed", "training.batch_size",
    "training.device", "training.precision", "training.report_to", "training.resume", "training.distributed",
    "training.gradient_checkpointing", "training.cache_dir", "method.r", "method.alpha", "method.target_modules",
    "method.name", "objective.name", "trainig", "training.lr", "unknown",
]  # fmt: skip


def _load(tmp_path: Path, text: str | bytes) -> tk.RunConfig | None:
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    try:
        cfg = tk.RunConfig.from_yaml(path)
    except tk.ConfigError as e:
        assert str(e).strip() and "Traceback" not in str(e), e
        return None
    except Exception as e:
        pytest.fail(f"from_yaml({text!r:.300}) raised {type(e).__name__}: {e}")
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml(), encoding="utf-8")
    assert tk.RunConfig.from_yaml(again) == cfg, text  # what --print-config prints loads back the same
    return cfg


def _with(key: str, value: str) -> str:
    """GOOD_YAML with ``key`` (``section.key`` for a nested one) set to the YAML text ``value``."""
    section, _, sub = key.partition(".")
    lines = [line for line in GOOD_YAML.splitlines() if not line.startswith(f"{section}:")]
    if sub:
        block = {"training": "  max_steps: 2", "method": "  name: lora", "objective": "  name: sft"}.get(section, "")
        lines.append(
            f"{section}:\n{block}\n  {sub}: {value}" if f"{sub}:" not in block else f"{section}:\n  {sub}: {value}"
        )
    else:
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def test_yaml_values_for_every_key_load_or_name_the_problem(tmp_path: Path) -> None:
    accepted = 0
    for key in KEYS:
        for value in YAML_VALUES:
            accepted += _load(tmp_path, _with(key, value)) is not None
    assert _load(tmp_path, GOOD_YAML) is not None
    assert accepted > 50


def test_mangled_yaml_files_load_or_name_the_problem(tmp_path: Path) -> None:
    """Random edits of a good file: characters dropped, added or replaced (tabs, colons, bad bytes), lines repeated."""
    rng = random.Random(SEED)
    good = GOOD_YAML.encode("utf-8")
    specials = [b"\t", b":", b" ", b"\n", b"-", b"{", b"}", b"[", b"'", b'"', b"#", b"&", b"*", b"!", b"\xff", b"\xe9"]
    for _ in range(400):
        text = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            edit = rng.randrange(4)
            if edit == 0:
                del text[i]
            elif edit == 1:
                text[i:i] = rng.choice(specials)
            elif edit == 2:
                text[i : i + 1] = rng.choice(specials)
            else:
                lines = bytes(text).split(b"\n")
                j = rng.randrange(len(lines))
                lines.insert(j, lines[j])  # a line twice: a duplicate key
                text = bytearray(b"\n".join(lines))
        _load(tmp_path, bytes(text))
    for whole in (b"", b"# only a comment\n", b"- a list\n", b"just text", b"\xef\xbb\xbf" + good, b"\x00" * 10):
        _load(tmp_path, whole)


def test_the_fuzzed_yaml_problems_say_what_and_where(tmp_path: Path) -> None:
    """A few of the fuzzer's finds, pinned: the message names the problem and where it is."""
    cases = {
        GOOD_YAML + "model: other\n": r"key 'model' appears twice .*lines 1 and 9",
        GOOD_YAML.replace("  batch_size", "\tbatch_size"): r"found character '\\t'.*line 6.*spaces, not tabs",
        GOOD_YAML.replace("max_steps: 2", "max_steps: yes"): r"max_steps=True\): max_steps must be a whole number",
        GOOD_YAML.replace("r: 8", "r: 18446744073709551616"): r"r=18446744073709551616\)",
    }
    for text, pattern in cases.items():
        path = tmp_path / "run.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(tk.ConfigError, match=pattern):
            tk.RunConfig.from_yaml(path)


def test_values_json_round_trip_for_every_default() -> None:
    for cls in CLASSES:
        if _default_ok(cls):
            obj = cls()
            assert cls(**json.loads(obj.model_dump_json())) == obj
