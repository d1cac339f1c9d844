"""docs/supported-models.md (and its Chinese page) is rendered from the family registry and cannot go stale: the
committed pages equal what the registry renders now, every family has its case in tests/integration/test_families.py,
every tiny_model arch is a family, and every test a page cites exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support_matrix import ROOT, unresolved
from tests.supported_models import FAMILY_TEST, LLAMA_CPP_TESTS, PAGES, family_test, render, vision_tests
from tunekit.export.gguf_families import FAMILIES as GGUF_FAMILIES
from tunekit.testing.families import FAMILIES, VISION_FAMILIES
from tunekit.testing.models import ARCHS

REGENERATE = "run python scripts/supported_models.py"


@pytest.mark.parametrize("lang", sorted(PAGES))
def test_the_committed_page_is_what_the_registry_renders(lang: str) -> None:
    page = PAGES[lang]
    assert page.exists(), f"{page.relative_to(ROOT)} is missing; {REGENERATE}"
    assert page.read_text(encoding="utf-8") == render(lang), f"{page.relative_to(ROOT)} is stale; {REGENERATE}"


def _parametrized_over(test_file: Path, function: str) -> str:
    """The source of the values ``function`` in ``test_file`` is parametrized over (``@pytest.mark.parametrize``)."""
    tree = ast.parse(test_file.read_text(encoding="utf-8"))
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    marks = [d for d in func.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize")]
    assert len(marks) == 1, f"{function} should be parametrized once, over the registry"
    (mark,) = marks
    ids = next((k.value for k in mark.keywords if k.arg == "ids"), None)
    return f"{ast.unparse(mark.args[1])} ids={ast.unparse(ids) if ids is not None else None}"


def test_every_family_has_a_case_in_the_family_test() -> None:
    file, _, function = FAMILY_TEST.partition("::")
    # Parametrized over the registry itself, with the model_type as id: each family is a case, named as the page
    # cites it. A hand-written list there could leave a family out.
    assert _parametrized_over(ROOT / file, function) == "FAMILIES ids=[f.model_type for f in FAMILIES]"
    source = (ROOT / file).read_text(encoding="utf-8")
    assert re.search(r"^from tunekit\.testing\.families import .*\bFAMILIES\b", source, re.M)
    ids = [f.model_type for f in FAMILIES]
    assert len(set(ids)) == len(ids), f"two families share a model_type: {ids}"


def test_every_tiny_model_arch_is_a_family() -> None:
    assert sorted(f.arch for f in FAMILIES) == sorted(ARCHS)
    assert all(f.arch == f.model_type for f in FAMILIES)  # tiny_model's archs are transformers' model types


def test_every_gguf_family_is_on_the_page_with_its_llama_cpp_tests() -> None:
    assert set(GGUF_FAMILIES) <= {f.model_type for f in FAMILIES}
    assert set(LLAMA_CPP_TESTS) == set(GGUF_FAMILIES), "a GGUF family without the llama.cpp test that runs it"


def test_every_cited_test_exists() -> None:
    cited = [family_test(f) for f in FAMILIES] + [t for tests in LLAMA_CPP_TESTS.values() for t in tests]
    cited += [nodeid for f in VISION_FAMILIES for nodeid in vision_tests(f)]
    for lang in PAGES:
        text = render(lang)
        assert all(f"`{nodeid}`" in text for nodeid in cited)
    problems = [why for nodeid in cited if (why := unresolved(nodeid))]
    assert not problems, problems


def test_registry_entries_are_complete() -> None:
    for f in FAMILIES:
        assert f.name and f.notes and f.notes_zh and f.checkpoints, f
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", c) for c in f.checkpoints), f.checkpoints
        assert "|" not in f.notes + f.notes_zh + f.name, f"{f.name}: a '|' would break the table"
        assert tuple(sorted(f.lora_frozen)) == f.lora_frozen, f"{f.name}: keep lora_frozen sorted"
    for v in VISION_FAMILIES:
        assert v.name and v.tested and v.tested_zh and v.checkpoints and v.template_source, v
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", c) for c in v.checkpoints), v.checkpoints
        assert "|" not in v.tested + v.tested_zh + v.name + v.refused, f"{v.name}: a '|' would break the table"
        refusal = (v.refused, v.refused_zh, v.refused_match)
        assert all(refusal) or not any(refusal), f"{v.name}: a refusal needs its reason (en, zh) and its pattern"
