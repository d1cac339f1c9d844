"""The documentation cannot drift from the code: the site builds with no warning, every Python
snippet in docs/ runs, every public name has a docstring with an example, every error class and
every method and objective has its page."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tunekit as tk

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
# A ```python block, and the marker that keeps it from running: <!-- docs-test: skip (why) --> on the line above.
FENCE = re.compile(
    r"^(?P<skip><!-- docs-test: skip \((?P<reason>[^)]+)\) -->\n)?```python\n(?P<code>.*?)^```", re.M | re.S
)


def snippets(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason) of every ```python block of a page."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("reason")) for m in FENCE.finditer(text)
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The site built once for the tests that read it: its folder and the build's process."""
    folder = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        capture_output=True, text=True, encoding="utf-8", cwd=ROOT, env=env, timeout=600, check=False,
    )  # fmt: skip
    return folder, proc


def test_site_builds_with_no_warning(site: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder, proc = site
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "WARNING" not in out, out
    api = (folder / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("tunekit.Tuner", "tunekit.LoRA", "tunekit.RunConfig", "tunekit.testing"):
        assert f'id="{name}"' in api, name
    lora = (folder / "methods" / "lora" / "index.html").read_text(encoding="utf-8")
    assert "<code>dora</code>" in lora and "tunekit:options" not in lora  # the generated option table


def test_the_search_index_finds_chinese_words_on_the_chinese_pages(
    site: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Chinese has no spaces: the index must hold jieba's words (joined by U+200B), split by the index's separator."""
    folder, proc = site
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = json.loads((folder / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert "zh" in index["config"]["lang"]
    separator = re.compile(index["config"]["separator"])
    pages: dict[str, set[str]] = {}
    for doc in index["docs"]:
        words = set(separator.split(doc["title"])) | set(separator.split(doc["text"]))
        pages.setdefault(doc["location"].split("#")[0], set()).update(words)
    for word, page in (("微调", "zh/tutorial/"), ("适配器", "zh/adapters/"), ("复读", "zh/troubleshooting/")):
        assert word in pages.get(page, set()), f"the search index has no word {word!r} on {page}"
    assert "LoRA" in pages["methods/lora/"]  # English words are still split as before


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the site's search worker")
def test_searching_a_chinese_word_on_the_site_finds_the_chinese_pages(
    site: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """What a reader gets from the search box: mkdocs-material's own search worker, run in Node on the built index."""
    import material  # the theme whose worker the site ships

    folder, proc = site
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assets = Path(material.__file__).parent / "templates" / "assets" / "javascripts"
    index = folder / "search" / "search_index.json"
    # Chinese words find a Chinese page first; an error string both languages quote finds both Windows pages first.
    queries = {"微调": "zh/", "复读": "zh/troubleshooting/", "适配器": "zh/adapters/", "WinError": ""}
    out = subprocess.run(
        ["node", str(ROOT / "tests" / "docs_search.js"), str(assets), str(index), *queries],
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=True,
    ).stdout  # fmt: skip
    found = json.loads(out)
    for query, page in queries.items():
        assert found[query] and found[query][0].startswith(page), f"searching {query!r} found {found[query][:5]}"
    top = [hit.split("#")[0] for hit in found["WinError"][:2]]
    assert set(top) == {"guides/windows/", "zh/windows/"}, f"searching 'WinError' found {found['WinError'][:5]}"


def test_the_language_switcher_links_the_english_and_chinese_pages(
    site: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, _ = site
    home = (folder / "index.html").read_text(encoding="utf-8")
    assert re.search(r'href="zh/"\s+hreflang="zh"', home), "no link to the Chinese docs in the header"
    zh = (folder / "zh" / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert re.search(r'href="\.\./\.\./"\s+hreflang="en"', zh) and (folder / "zh" / "index.html").is_file()
    assert '<html lang="zh"' in zh and '<html lang="en"' in home, "the Chinese pages must say they are Chinese"


@pytest.mark.parametrize("page", ["tutorial.md", "zh/tutorial.md"])
def test_the_tutorial_switches_model_in_one_place_and_keeps_the_default_learning_rate(page: str) -> None:
    """The real-model tutorial runs here on a stand-in: one switch picks the model, and no block sets a learning
    rate (the tiny models' 5e-3 would wreck a real one)."""
    code = "\n".join(block for _, block, reason in snippets(DOCS / page) if reason is None)
    assert code.count('REAL = os.environ.get("TUNEKIT_REAL_MODEL") == "1"') == 1
    assert code.count('MODEL = "Qwen/Qwen2.5-0.5B-Instruct" if REAL else tiny_model(') == 1
    assert "learning_rate=" not in code and "tuner.evaluate(" in code and "baseline=True" in code


@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: str(p.relative_to(DOCS)))
def test_python_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page's blocks run in order, in one namespace, in an empty folder (as a reader would)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code, reason in snippets(page):
        if reason is not None:
            assert len(reason.strip()) > 5, f"{page}:{line}: say why the block is not run"
            compile(code, f"{page}:{line}", "exec")  # it must still be valid Python
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{page.relative_to(ROOT)}, block at line {line} failed: {e!r}") from e


def test_the_chinese_quickstart_has_runnable_snippets() -> None:
    assert len([s for s in snippets(DOCS / "zh" / "quickstart.md") if s[2] is None]) >= 2


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    missing = []
    for name in tk.__all__:
        if name == "__version__":
            continue
        doc = inspect.getdoc(getattr(tk, name)) or ""
        if not re.search(r"^Examples?:", doc, re.M) or ">>>" not in doc:
            missing.append(name)
    assert not missing, f"add an 'Example:' section with >>> lines to the docstrings of {missing}"


def test_every_error_class_has_an_anchor_on_the_error_page() -> None:
    text = (DOCS / "reference" / "errors.md").read_text(encoding="utf-8")
    for name in tk.errors.__all__:
        assert re.search(rf"^## {name} \{{#{name.lower()}\}}$", text, re.M), f"add '## {name} {{#{name.lower()}}}'"


def test_every_error_class_has_a_section_on_the_chinese_error_page() -> None:
    text = (DOCS / "zh" / "errors.md").read_text(encoding="utf-8")
    for name in tk.errors.__all__:
        if name != "TunekitError":  # the base class is the page's introduction
            assert re.search(rf"^## {name}：.+ \{{#{name.lower()}\}}$", text, re.M), (
                f"add '## {name}：... {{#{name.lower()}}}'"
            )


def test_every_method_and_objective_has_a_page_with_its_options_and_a_snippet() -> None:
    from tunekit.methods import registry
    from tunekit.objectives import OBJECTIVES

    for folder, names in (("methods", registry()), ("objectives", OBJECTIVES)):
        pages = {p: p.read_text(encoding="utf-8") for p in (DOCS / folder).glob("*.md")}
        for name in names:
            page = next((p for p, text in pages.items() if f"<!-- tunekit:options {name} -->" in text), None)
            assert page is not None, f"no page in docs/{folder} has '<!-- tunekit:options {name} -->'"
            assert f"tk.{name}(" in pages[page] and snippets(page), f"{page}: add a snippet using tk.{name}"


def test_docstring_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples in the docstrings of every tunekit module (those not marked +SKIP) give what they show."""
    import doctest
    import importlib
    import pkgutil

    monkeypatch.chdir(tmp_path)
    modules = {m.name for m in pkgutil.walk_packages(tk.__path__, "tunekit.") if not m.name.endswith("__main__")}
    for name in tk.__all__:  # the public API's modules are among them
        obj = getattr(tk, name)
        module = obj if inspect.ismodule(obj) else inspect.getmodule(obj)
        assert module is None or not module.__name__.startswith("tunekit") or module.__name__ in modules
    failed = {}
    for name in sorted(modules):
        result = doctest.testmod(importlib.import_module(name), extraglobs={"tk": tk}, optionflags=doctest.ELLIPSIS)
        if result.failed:
            failed[name] = result.failed
    assert not failed, f"docstring examples failed (run python -m doctest on them): {failed}"


def test_the_api_reference_lists_every_public_name() -> None:
    text = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in tk.__all__ if name != "__version__" and f"::: tunekit.{name}\n" not in text]
    assert not missing, f"add '::: tunekit.NAME' to docs/reference/api.md for {missing}"
