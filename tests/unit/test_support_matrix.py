"""docs/support-matrix.md is generated from test results and must match the registries it covers."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support_matrix import NO, UNTESTED, YES, matrix_axes, parse_matrix, render_matrix, unresolved

PAGE = Path(__file__).resolve().parents[2] / "docs" / "support-matrix.md"
REGENERATE = "regenerate it with: python scripts/support_matrix.py"


def test_committed_matrix_covers_every_method_and_objective() -> None:
    assert PAGE.exists(), f"{PAGE} is missing; {REGENERATE}"
    methods, objectives, _ = parse_matrix(PAGE.read_text(encoding="utf-8"))
    want_methods, want_objectives = matrix_axes()
    assert methods == want_methods, f"the support matrix is stale (methods {methods} != {want_methods}); {REGENERATE}"
    assert objectives == want_objectives, (
        f"the support matrix is stale (objectives {objectives} != {want_objectives}); {REGENERATE}"
    )


def test_committed_matrix_agrees_with_the_declared_capabilities() -> None:
    from tunekit.methods import registry

    _, _, cells = parse_matrix(PAGE.read_text(encoding="utf-8"))
    for (method, objective), cell in cells.items():
        declared = registry()[method]().supports(objective)
        assert cell in (YES, NO, UNTESTED), (method, objective, cell)
        assert (cell != NO) == declared, f"{method} x {objective}: the page says {cell!r}; {REGENERATE}"


def test_render_marks_only_proven_cells_supported() -> None:
    methods, objectives = matrix_axes()
    page = render_matrix({("LoRA", "SFT"): {"tests/x.py::test_a"}, ("PromptTuning", "SFT"): {"tests/x.py::test_b"}})
    got_methods, got_objectives, cells = parse_matrix(page)
    assert (got_methods, got_objectives) == (methods, objectives)
    assert cells[("LoRA", "SFT")] == YES and cells[("PromptTuning", "SFT")] == YES
    assert sum(c == YES for c in cells.values()) == 2
    assert cells[("LoRA", "CausalLM")] == UNTESTED
    assert "- LoRA × SFT: `tests/x.py::test_a`" in page
    assert _citations(page) == {
        ("LoRA", "SFT"): ["tests/x.py::test_a"],
        ("PromptTuning", "SFT"): ["tests/x.py::test_b"],
    }


CITATION = re.compile(r"^- (?P<method>\w+) × (?P<objective>\w+): `(?P<nodeid>[^`]+)`$")


def _citations(text: str) -> dict[tuple[str, str], list[str]]:
    cited: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        match = CITATION.match(line)
        if match:
            cited.setdefault((match["method"], match["objective"]), []).append(match["nodeid"])
    return cited


def test_every_proven_cell_cites_a_test_that_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    _, _, cells = parse_matrix(text)
    cited = _citations(text)
    proven = {cell for cell, value in cells.items() if value == YES}
    assert proven, "the page proves no cell"
    assert set(cited) == proven, (
        f"proven cells without a cited test: {sorted(proven - set(cited))}; citations of cells not proven: "
        f"{sorted(set(cited) - proven)}; {REGENERATE}"
    )
    problems = [why for ids in cited.values() for nodeid in ids if (why := unresolved(nodeid))]
    assert not problems, f"{problems}; {REGENERATE}"


def test_a_missing_cited_test_is_caught() -> None:
    # The check above can fail: a renamed test, a moved file, a bare name without its file.
    assert unresolved("tests/unit/test_support_matrix.py::test_a_missing_cited_test_is_caught") is None
    assert unresolved("tests/unit/test_support_matrix.py::test_a_missing_cited_test_is_caught[x-y]") is None
    assert "defines no" in (unresolved("tests/unit/test_support_matrix.py::test_renamed_away[LoRA]") or "")
    assert "does not exist" in (unresolved("tests/unit/test_moved_away.py::test_x") or "")
    assert "not a node id" in (unresolved("test_sft_lowers_heldout_loss_by_30_percent[LoRA]") or "")
