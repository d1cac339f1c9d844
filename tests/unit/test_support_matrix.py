"""docs/support-matrix.md is generated from test results and must match the registries it covers."""

from __future__ import annotations

from pathlib import Path

from tests.support_matrix import NO, UNTESTED, YES, matrix_axes, parse_matrix, render_matrix

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
    page = render_matrix({("LoRA", "SFT"): {"test_a"}, ("PromptTuning", "SFT"): {"test_b"}})
    got_methods, got_objectives, cells = parse_matrix(page)
    assert (got_methods, got_objectives) == (methods, objectives)
    assert cells[("LoRA", "SFT")] == YES and cells[("PromptTuning", "SFT")] == YES
    assert sum(c == YES for c in cells.values()) == 2
    assert cells[("LoRA", "CausalLM")] == UNTESTED
    assert "- LoRA × SFT: `test_a`" in page
