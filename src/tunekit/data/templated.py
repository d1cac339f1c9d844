"""Raw ``text`` rows that look like a hand-rendered instruction template.

A learner who writes each example into one ``text`` field (``"Instruction: ...\\nInput: ...\\nAnswer: ..."``, the
Alpaca prompt ``"### Instruction:\\n...\\n### Response:\\n..."``, or ``"指令：...\\n输入：...\\n回答：..."``)
gets raw-text training (CausalLM, continued pretraining): every token trains, the template's markers included, so
the model learns to write the template and echoes it instead of answering. :func:`find_template_markers` finds
such rows (a prompt marker and an answer marker, each at the start of a line) so that ``fit`` and ``validate-data``
can say so and show the columns that train an answer on a prompt instead.

Example:
    >>> from tunekit.data.templated import find_template_markers
    >>> rows = ["Instruction: add\\nInput: 2 2\\nAnswer: 4", "Once upon a time."]
    >>> found = find_template_markers(rows)
    >>> found.rows, found.checked, found.first_row, found.markers
    (1, 2, 1, ('Instruction:', 'Input:', 'Answer:'))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_CHECKED", "MIN_SHARE", "TemplateMarkers", "find_template_markers", "template_warning"]

# A marker at the start of a line, after optional Markdown heading hashes or bold stars: "Instruction:",
# "### Instruction", "**Response:**", "输入：". A marker needs a colon unless it is a heading ("### Response").
_EN_PROMPT = ("instruction", "input")
_EN_ANSWER = ("response", "answer")
_ZH_PROMPT = ("指令", "输入")
_ZH_ANSWER = ("回答",)
_MARKER = re.compile(
    r"^[ \t]*(?P<hashes>#{1,6}[ \t]*)?\**[ \t]*(?P<word>instruction|input|response|answer|指令|输入|回答)\**[ \t]*"
    r"(?P<colon>[:：])?",
    re.IGNORECASE | re.MULTILINE,
)
MIN_SHARE = 0.1  # the share of (checked) rows that must look templated before a warning is worth giving
MAX_CHECKED = 2000  # rows checked, spread over the data: a corpus of millions needs no full scan to show a habit


@dataclass(frozen=True)
class TemplateMarkers:
    """What :func:`find_template_markers` found: ``rows`` of the ``checked`` rows (of ``total``) look templated, the
    first of them is ``first_row`` (1-based) and it holds ``markers`` (as written there, in order)."""

    rows: int
    checked: int
    total: int
    first_row: int
    markers: tuple[str, ...]

    @property
    def share(self) -> float:
        return self.rows / self.checked


def _markers(text: str) -> tuple[str, ...] | None:
    """The template markers of one text, when it has both a prompt marker and an answer marker; else None."""
    found: list[str] = []
    kinds: set[str] = set()
    for m in _MARKER.finditer(text):
        word = m.group("word")
        if not m.group("colon") and not m.group("hashes"):
            continue  # "Input devices are ..." or "回答问题" at a line start: prose, not a marker
        kinds.add("prompt" if word.lower() in _EN_PROMPT or word in _ZH_PROMPT else "answer")
        shown = m.group(0).strip()
        if shown not in found:
            found.append(shown)
    return tuple(found) if kinds == {"prompt", "answer"} else None


def find_template_markers(texts: Sequence[str | None], *, rows: Sequence[int] | None = None) -> TemplateMarkers | None:
    """Which of ``texts`` (raw text rows, in order) look like a hand-rendered instruction template; None when fewer
    than :data:`MIN_SHARE` of the rows checked do (at most :data:`MAX_CHECKED` rows, spread evenly over the data).
    ``rows``: the row number of each text, as the user counts (default: 1, 2, ...)."""
    if not texts:
        return None
    step = max(1, len(texts) // MAX_CHECKED)
    checked = 0
    hits: list[tuple[int, tuple[str, ...]]] = []
    for i in range(0, len(texts), step):
        text = texts[i]
        checked += 1
        markers = _markers(text) if isinstance(text, str) else None
        if markers is not None:
            hits.append((rows[i] if rows is not None else i + 1, markers))
    if not hits or len(hits) / checked < MIN_SHARE:
        return None
    return TemplateMarkers(rows=len(hits), checked=checked, total=len(texts), first_row=hits[0][0], markers=hits[0][1])


def template_warning(found: TemplateMarkers, what: str = "training") -> str:
    """The warning ``fit`` logs and ``validate-data`` prints for ``found`` (``what``: which data, e.g. "eval")."""
    sample = "" if found.checked == found.total else f" rows checked (spread over all {found.total:,})"
    counted = f"{found.rows} of {found.checked}{sample or ' rows'} ({found.share:.0%})"
    markers = ", ".join(repr(m) for m in found.markers)
    return (
        f"the {what} data is raw text ('text' rows, trained as continued pretraining: every token, the template too), "
        f"but {counted} look like a hand-rendered instruction template (row {found.first_row}: {markers}); the model "
        "will learn to write the template and echo it instead of answering. Give the parts as columns instead, and "
        "tunekit applies the model's chat template and trains on the answers only: 'prompt' + 'completion' "
        '({"prompt": "...", "completion": "..."}), or Alpaca\'s \'instruction\' + \'input\' + \'output\'; for other '
        "column names, tk.Data(path, columns={'prompt': 'question', 'completion': 'answer'})"
    )
