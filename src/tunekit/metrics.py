"""The metrics of ``Tuner.evaluate`` and ``Training(eval_metrics=...)``: a registry by name, and any callable.

Text metrics compare a generated answer with the reference (the row's last assistant turn):

- ``exact_match``: equal after normalising (Unicode NFKC, case folded, whitespace collapsed, trimmed);
- ``contains``: the normalised reference appears in the normalised answer;
- ``rouge_l``: ROUGE-L F1 (Google's ``rouge-score``), on the tokens below;
- ``bleu``: sentence BLEU (``sacrebleu``, up to 4-grams, ``effective_order`` so that short answers are not 0), on
  the tokens below;
- ``chrf``: chrF (``sacrebleu``), on characters, which suits every script as it is.

Scores run from 0 to 1 (sacrebleu's 0-100 scale divided by 100), so every metric reads alike; the score of the data
is the mean of its rows' (corpus BLEU would give 0 to a set of one-word answers, which have no 4-grams).

**Tokens, in every language** (:func:`text_tokens`): each character of a script written without spaces (Chinese,
Japanese kana, Thai, Lao, Khmer, Myanmar, Tibetan) is one token; elsewhere a token is a run of letters and digits;
punctuation is dropped for ROUGE and kept as its own token for BLEU. So ``"北京是中国的首都"`` against
``"北京是首都"`` earns partial credit instead of 0 (rouge-score's own tokenizer drops every non-ASCII character, and
BLEU's 13a tokenizer would see one word). Characters rather than a word segmenter (jieba, MeCab): the scores are then
the same on every machine and need no dictionary, as in the character-level ROUGE of C-Eval / CLUE reports.

Two metrics score the model's likelihoods rather than generated text:

- ``accuracy``: multiple choice; rows with ``choices`` (a list of answers) and ``answer`` (the index of the right one,
  or its text); the model's choice is the answer it finds most likely after the prompt (as lm-evaluation-harness's
  ``acc``);
- ``perplexity``: ``exp`` of the mean negative log-likelihood of the reference's tokens (end of turn included) given
  the prompt; lower is better.

A callable ``(prediction, reference, row) -> float`` is a metric too, named after the function (``row`` is the data
row as given).

Example:
    >>> from tunekit.metrics import check_metrics, text_tokens
    >>> [m.name for m in check_metrics(["exact_match", "rouge_l"])]
    ['exact_match', 'rouge_l']
    >>> text_tokens("北京是 the capital!")
    ['北', '京', '是', 'the', 'capital']
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunekit._config import suggest
from tunekit.errors import ConfigError, MissingDependencyError

__all__ = [
    "METRICS",
    "Metric",
    "MetricFunction",
    "check_metrics",
    "mean",
    "metric_names",
    "normalise_text",
    "text_tokens",
]

MetricFunction = Callable[[str, str, dict[str, Any]], float]
Kind = Literal["text", "choice", "likelihood"]

# Scripts written without spaces between words: each character is a token.
_UNSPACED = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B to G
)
_WORD = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+")
_WORD_OR_MARK = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+|[^\w\s]")


def normalise_text(text: str) -> str:
    """What ``exact_match`` and ``contains`` compare: NFKC (full-width forms become ASCII), case folded, whitespace
    collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_tokens(text: str, *, punctuation: bool = False) -> list[str]:
    """The tokens ROUGE and BLEU count: a character of an unspaced script (Chinese, Japanese, Thai, ...) each, else a
    run of letters and digits (lowercased unless ``punctuation``, which also keeps each punctuation mark as a token,
    for BLEU)."""
    text = unicodedata.normalize("NFKC", text)
    if punctuation:
        return _WORD_OR_MARK.findall(text)
    return _WORD.findall(text.casefold())


@dataclass(frozen=True)
class Metric:
    """One metric: its ``name``, what it scores (``kind``: ``"text"`` compares generated text with the reference,
    ``"choice"`` picks among a row's choices, ``"likelihood"`` scores the reference), whether higher is better, and
    for text metrics the per-row function (the data's score is the mean of the rows')."""

    name: str
    kind: Kind
    higher_is_better: bool = True
    row_score: MetricFunction | None = None
    custom: bool = False

    def score(self, prediction: str, reference: str, row: dict[str, Any]) -> float:
        """This metric on one row (text metrics and callables)."""
        assert self.row_score is not None, self.name
        return float(self.row_score(prediction, reference, row))


def _exact_match(prediction: str, reference: str, row: dict[str, Any]) -> float:
    return float(normalise_text(prediction) == normalise_text(reference))


def _contains(prediction: str, reference: str, row: dict[str, Any]) -> float:
    return float(normalise_text(reference) in normalise_text(prediction))


class _Tokenizer:
    """rouge-score's tokenizer interface (``tokenize(text) -> list[str]``) over :func:`text_tokens`."""

    def tokenize(self, text: str) -> list[str]:
        return text_tokens(text)


_SCORERS: dict[str, Any] = {}


def _rouge_l(prediction: str, reference: str, row: dict[str, Any]) -> float:
    if "rouge_l" not in _SCORERS:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise MissingDependencyError(
                'the rouge_l metric needs rouge-score, which is not installed: pip install "tunekit[eval]" '
                "(or pip install rouge-score)"
            ) from None
        _SCORERS["rouge_l"] = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    if not text_tokens(reference) and not text_tokens(prediction):
        return 1.0
    return float(_SCORERS["rouge_l"].score(reference, prediction)["rougeL"].fmeasure)


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise MissingDependencyError(
            'the bleu and chrf metrics need sacrebleu, which is not installed: pip install "tunekit[eval]" '
            "(or pip install sacrebleu)"
        ) from None
    return sacrebleu


def _spaced(text: str) -> str:
    return " ".join(text_tokens(text, punctuation=True))


def _bleu(prediction: str, reference: str, row: dict[str, Any]) -> float:
    bleu = _sacrebleu().BLEU(tokenize="none", effective_order=True)
    return min(1.0, float(bleu.sentence_score(_spaced(prediction), [_spaced(reference)]).score) / 100)


def _chrf(prediction: str, reference: str, row: dict[str, Any]) -> float:
    return min(1.0, float(_sacrebleu().CHRF().sentence_score(prediction, [reference]).score) / 100)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("exact_match", "text", row_score=_exact_match),
        Metric("contains", "text", row_score=_contains),
        Metric("rouge_l", "text", row_score=_rouge_l),
        Metric("bleu", "text", row_score=_bleu),
        Metric("chrf", "text", row_score=_chrf),
        Metric("accuracy", "choice"),
        Metric("perplexity", "likelihood", higher_is_better=False),
    )
}
# Names other tools use for these metrics, so the error suggests tunekit's.
_ALIASES = {
    "em": "exact_match",
    "exact": "exact_match",
    "exactmatch": "exact_match",
    "rouge": "rouge_l",
    "rougel": "rouge_l",
    "rouge-l": "rouge_l",
    "sacrebleu": "bleu",
    "bleu4": "bleu",
    "bleu-4": "bleu",
    "chrf++": "chrf",
    "acc": "accuracy",
    "ppl": "perplexity",
}


def metric_names() -> list[str]:
    """The names of the built-in metrics."""
    return list(METRICS)


def _callable_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def check_metrics(metrics: str | Sequence[str | MetricFunction], *, where: str = "evaluate") -> list[Metric]:
    """``metrics`` (names and callables) as :class:`Metric` objects, checked before anything loads: an unknown name
    raises ConfigError with the nearest valid one; a name given twice, or no metric at all, is refused."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]  # type: ignore[list-item]
    if not isinstance(metrics, (list, tuple)):
        raise ConfigError(
            f"{where}(metrics={metrics!r}): pass a list of metric names or functions, e.g. metrics=['exact_match']"
        )
    out: list[Metric] = []
    for m in metrics:
        if isinstance(m, str):
            if m not in METRICS:
                raise ConfigError(
                    f"{where}(metrics=[..., {m!r}, ...]): unknown metric {m!r}; "
                    f"{suggest(m, metric_names(), _ALIASES)} (the metrics are {', '.join(METRICS)}, or a function "
                    "(prediction, reference, row) -> float)"
                )
            out.append(METRICS[m])
        elif callable(m):
            out.append(Metric(_callable_name(m), "text", row_score=m, custom=True))
        else:
            raise ConfigError(
                f"{where}(metrics=[..., {m!r}, ...]): a metric is a name ({', '.join(METRICS)}) or a function "
                f"(prediction, reference, row) -> float, not {type(m).__name__}"
            )
    if not out:
        raise ConfigError(f"{where}(metrics=[]): name at least one metric, e.g. metrics=['exact_match']")
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}(metrics={names!r}): {twice[0]!r} is given twice; each metric is named once")
    return out


def mean(values: Sequence[float]) -> float:
    """The mean of ``values`` (NaN for none)."""
    return math.fsum(values) / len(values) if values else math.nan
