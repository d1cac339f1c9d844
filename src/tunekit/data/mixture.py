"""``tk.Mix``: several data sources trained as one, each read in its own layout, drawn with weights or counts.

Each source is loaded, validated and normalised on its own (an Alpaca file beside a ShareGPT file beside an
OpenAI-messages file), so an error names the source and the row number in *that* source. Then rows are drawn:

- no ``weights`` nor ``counts``: every row of every source, one source after the other (like
  ``datasets.concatenate_datasets``, LLaMA-Factory's ``mix_strategy: concat``);
- ``counts=[n1, n2, ...]``: exactly ``n_i`` rows of source ``i``;
- ``weights=[w1, w2, ...]`` (relative, normalised to sum to 1) with ``size``: ``size`` rows, source ``i`` giving
  ``w_i * size`` of them (rounded so that they add up to ``size``); without ``size``, the largest mixture in which
  no source repeats a row (the smallest source relative to its weight runs out first, like
  ``datasets.interleave_datasets(stopping_strategy="first_exhausted")`` and LLaMA-Factory's ``interleave_under``).

A source asked for more rows than it has repeats all of them (every row once per full pass, as
``stopping_strategy="all_exhausted"`` oversamples) and draws the rest at random. Which rows are drawn, and the order
the sources are interleaved in, come from ``Training(seed=...)``: the same seed draws the same rows. Unlike
``interleave_datasets``, which draws each row's source at random, the counts are exact: a 70/30 mixture of 1,000 rows
holds 700 and 300 of them.

The sources must train the same objective: demonstrations (prompt/completion, Alpaca, messages, ShareGPT: all become
conversations) mix with each other, preference pairs with preference pairs, and so on; a preference source beside an
SFT source is refused. Preference pairs beside labelled answers train KTO: each pair becomes two labelled answers
(chosen desirable, rejected not), as trl's ``unpair_preference_dataset`` does.

Example:
    >>> import tunekit as tk
    >>> mix = tk.Mix({"alpaca.json": 0.7, "chats.jsonl": 0.3}, size=1000)
    >>> mix.names, mix.weights
    (['alpaca.json', 'chats.jsonl'], [0.7, 0.3])
    >>> from tunekit.data.mixture import draw_counts
    >>> draw_counts(mix, available=[5000, 200])
    [700, 300]
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import Field, field_validator, model_validator

from tunekit._config import Config
from tunekit.data.columns import Format
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.int_column import IntColumn
from tunekit.data.mapping import Data
from tunekit.errors import ConfigError, DatasetError

__all__ = [
    "DEMONSTRATIONS",
    "Interleaved",
    "Mix",
    "MixPart",
    "MixedData",
    "draw_counts",
    "draw_rows",
    "interleave",
    "interleaved_order",
    "mix_parts",
    "mixed_format",
    "source_name",
    "unpair",
    "unpaired",
]

T = TypeVar("T")
_LABELLED = frozenset({"preference", "unpaired_preference"})  # pairs and labelled answers mix, for KTO

# The demonstration formats: each normalises to a conversation, so they mix (as "messages").
DEMONSTRATIONS = frozenset({"prompt_completion", "alpaca", "messages", "sharegpt"})
_KINDS = {
    "text": "raw text (CausalLM)",
    "preference": "preference pairs (DPO, ORPO, reward models, KTO)",
    "unpaired_preference": "labelled answers (KTO)",
    "prompt_only": "prompts only (online RL)",
    **{fmt: "demonstrations (SFT)" for fmt in DEMONSTRATIONS},
}


def source_name(source: Any, k: int) -> str:
    """How errors and reports name source ``k`` (0-based) of a mixture: its path or dataset name, else its place."""
    inner = source.source if isinstance(source, Data) else source
    if isinstance(inner, str):
        return inner
    return f"source {k + 1} ({type(inner).__name__})"


class Mix(Config):
    """Several data sources trained as one: accepted wherever data is (``fit``, ``eval_data``, ``plan``,
    ``prepare``, a YAML config's ``data:``, ``tunekit validate-data A B ...``).

    ``tk.Mix({source: weight, ...}, size=...)`` or ``tk.Mix([source, ...], weights=[...] | counts=[...],
    size=...)``; a source is anything ``fit`` takes (a path, a dataset name, a :class:`tunekit.Data` with its own
    column names, split or subset, rows, a ``datasets.Dataset``, a DataFrame), each in its own layout. Without
    ``weights`` or ``counts`` every row of every source trains; ``counts`` draws that many rows of each source;
    ``weights`` (relative) share ``size`` rows between the sources (default ``size``: the most rows no source
    repeats in). A source asked for more rows than it has repeats them. The rows drawn and their order follow
    ``Training(seed=...)``. Errors name the source and the row in it; ``plan()`` and ``tunekit validate-data`` report
    the rows and tokens of each source. See :mod:`tunekit.data.mixture` for how rows are drawn.

    Example:
        >>> import tunekit as tk
        >>> mix = tk.Mix(["alpaca.json", tk.Data("org/chats", split="train")], weights=[3, 1], size=2000)
        >>> mix.names
        ['alpaca.json', 'org/chats']
        >>> tk.Mix(["a.jsonl", "b.jsonl"], counts=[500, 100]).counts
        [500, 100]
    """

    sources: list[Any] = Field(
        description="The sources: paths, dataset names, tk.Data, rows, Datasets or DataFrames; or {source: weight}."
    )
    weights: list[float] | None = Field(
        None, description="Relative weight of each source (normalised to sum to 1); needs no size."
    )
    counts: list[int] | None = Field(None, description="Exactly this many rows of each source (instead of weights).")
    size: int | None = Field(
        None, description="Rows in the mixture with weights; default: the most rows no source repeats in."
    )

    def __init__(self, sources: Any = None, /, **data: Any) -> None:
        if sources is not None:
            if "sources" in data:
                raise ConfigError("Mix(...): the sources are given twice (positionally and as sources=); keep one")
            data["sources"] = sources
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _weighted_mapping(cls, data: Any) -> Any:
        """``{source: weight}`` is ``sources=[...], weights=[...]``."""
        if not isinstance(data, dict) or "sources" not in data:
            if isinstance(data, dict):
                given = ", ".join(f"{k}=..." for k in data)
                raise ConfigError(
                    f"Mix({given}): the sources are missing; e.g. tk.Mix({{'a.jsonl': 0.7, 'b.json': 0.3}})"
                )
            return data
        sources = data["sources"]
        if isinstance(sources, dict):
            if data.get("weights") is not None or data.get("counts") is not None:
                raise ConfigError(
                    "Mix({source: weight}, weights=/counts=...): the weights are given twice; pass the sources as a "
                    "list with weights=[...] or counts=[...], or as {source: weight} alone"
                )
            for key, weight in sources.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                    raise ConfigError(
                        f"Mix(sources={{{key!r}: {weight!r}}}): a source's weight must be a positive number (its "
                        "share of the mixture), e.g. tk.Mix({'a.jsonl': 0.7, 'b.json': 0.3})"
                    )
            data = {**data, "sources": list(sources), "weights": list(sources.values())}
        return data

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, v: Any) -> Any:
        if isinstance(v, (str, Data)) or not isinstance(v, (list, tuple)):
            raise ConfigError(
                f"Mix(sources={v!r:.60}): expected a list of sources (or {{source: weight}}), e.g. "
                "tk.Mix(['alpaca.json', 'chats.jsonl'])"
            )
        if not v:
            raise ConfigError("Mix([]): no sources; give at least one, e.g. tk.Mix(['a.jsonl', 'b.json'])")
        out = []
        for k, item in enumerate(v):
            if isinstance(item, Mix):
                raise ConfigError(
                    f"Mix(sources=...): source {k + 1} is a Mix itself; list its sources in this one instead"
                )
            if isinstance(item, dict):  # a YAML config's {path: ..., columns: ...}
                try:
                    item = Data(**item)
                except ConfigError as e:
                    raise ConfigError(f"Mix(sources=...): source {k + 1}: {e}") from None
            elif not isinstance(item, Data):
                try:
                    Data(item)  # the same check of what a source may be
                except ConfigError as e:
                    raise ConfigError(f"Mix(sources=...): source {k + 1}: {e}") from None
            out.append(item)
        return out

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, (list, tuple)) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in v
        ):
            raise ConfigError(f"Mix(weights={v!r:.60}): expected a list of numbers, one per source")
        bad = [w for w in v if not math.isfinite(w) or w <= 0]
        if bad:
            raise ConfigError(
                f"Mix(weights={list(v)}): every weight must be a positive number, got {bad[0]!r}; leave a source out "
                "rather than weighting it 0"
            )
        return [float(w) for w in v]

    @field_validator("counts", mode="before")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) for n in v):
            raise ConfigError(f"Mix(counts={v!r:.60}): expected a list of whole numbers of rows, one per source")
        if any(n < 1 for n in v):
            raise ConfigError(f"Mix(counts={list(v)}): every count must be at least 1; leave a source out instead")
        return list(v)

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"Mix(size={v!r}): expected a whole number of rows, at least 1")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Mix:
        n = len(self.sources)
        for option in ("weights", "counts"):
            given = getattr(self, option)
            if given is not None and len(given) != n:
                raise ConfigError(f"Mix: {len(given)} {option} for {n} sources; give one per source")
        if self.weights is not None and self.counts is not None:
            raise ConfigError("Mix: give weights (shares of size) or counts (rows per source), not both")
        if self.size is not None and self.weights is None:
            hint = "; counts already fix the size" if self.counts is not None else ""
            raise ConfigError(f"Mix(size={self.size}): size is shared out by weights=[...]{hint}")
        return self

    @property
    def names(self) -> list[str]:
        """How errors and reports name each source (its path or dataset name, else ``source k``)."""
        names = [source_name(s, k) for k, s in enumerate(self.sources)]
        return [f"{name} (#{k + 1})" if names.count(name) > 1 else name for k, name in enumerate(names)]


def draw_counts(mix: Mix, available: list[int]) -> list[int]:
    """How many rows each source gives (``available``: its valid rows)."""
    if mix.counts is not None:
        return list(mix.counts)
    if mix.weights is None:
        return list(available)
    total = sum(mix.weights)
    shares = [w / total for w in mix.weights]
    size = mix.size
    if size is None:  # the largest mixture no source repeats in (the first to run out ends it)
        size = min(math.floor(n / s + 1e-9) for n, s in zip(available, shares))
        size = max(size, 1)
    exact = [s * size for s in shares]
    out = [math.floor(x) for x in exact]
    # Largest remainder: the rows rounding lost go to the sources that lost the most (ties: the first source).
    for k in sorted(range(len(out)), key=lambda k: (out[k] - exact[k], k))[: size - sum(out)]:
        out[k] += 1
    return out


def draw_rows(available: int, count: int, rng: random.Random) -> list[int]:
    """``count`` indices into ``available`` rows: every row once per full pass, the rest drawn without repeats."""
    passes, rest = divmod(count, available)
    picked = list(range(available)) * passes + sorted(rng.sample(range(available), rest))
    return picked


@dataclass
class MixPart:
    """One source of a mixture: its name, its drawn examples (normalised in its own layout) and its valid rows."""

    name: str
    data: NormalisedData
    available: int


@dataclass
class MixedData(NormalisedData):
    """The examples of a mixture, with each source's part (encoded one by one, so that errors and counts stay per
    source). ``interleaved``: the sources' rows are shuffled together by ``seed`` (a mixture drawn by weight or
    count), else they follow one another."""

    parts: list[MixPart] = field(default_factory=list)
    interleaved: bool = False
    seed: int = 0


def mixed_format(names: list[str], formats: list[Format], what: str = "training") -> Format:
    """The one format a mixture of sources in ``formats`` trains as; DatasetError when they do not mix."""
    kinds = {_KINDS.get(f, str(f)) for f in formats}
    if len(kinds) > 1 and set(formats) != _LABELLED:
        listed = "; ".join(f"{n}: {f} ({_KINDS.get(f, str(f))})" for n, f in zip(names, formats))
        raise DatasetError(
            f"the {what} sources cannot train together, they hold different kinds of data ({listed}); one run trains "
            "one objective: mix sources of one kind (demonstrations with demonstrations, preference pairs with "
            "preference pairs, ...), and train the other kind in a run of its own (e.g. SFT first, then DPO)"
        )
    if len(set(formats)) == 1:
        return formats[0]
    if set(formats) == _LABELLED:  # KTO: each pair becomes two labelled answers (unpair)
        return "unpaired_preference"
    return "messages"  # demonstrations in several layouts: each became a conversation


def unpaired(ex: Example) -> list[Example]:
    """One preference pair as KTO's two labelled answers: the chosen answer desirable, then the rejected one not,
    both keeping the pair's row number."""
    return [
        replace(ex, chosen=None, rejected=None, completion=answer, label=label)
        for answer, label in ((ex.chosen, True), (ex.rejected, False))
    ]


def unpair(norm: NormalisedData) -> NormalisedData:
    """Preference pairs as KTO's labelled answers (:func:`unpaired`, what trl's ``unpair_preference_dataset``
    does), in a list (:func:`tunekit.data.mixed_tables.unpair_table` writes an Arrow table's a chunk at a time)."""
    examples = [answer for ex in norm.examples for answer in unpaired(ex)]
    return NormalisedData("unpaired_preference", examples, norm.skipped)


def mix_parts(
    mix: Mix,
    parts: list[MixPart],
    seed: int,
    what: str = "training",
    draw: Callable[[NormalisedData, list[int]], NormalisedData] | None = None,
) -> MixedData:
    """The mixture of ``parts`` (each with all its valid examples): rows drawn per :func:`draw_counts`, interleaved by
    ``seed`` when drawn by weight or count, one source after the other otherwise. ``draw``: a source's drawn examples
    (its examples at the indices given, repeats included) as their own data, e.g. an Arrow table of them; then the
    mixture's examples are read from the parts (:class:`Interleaved`), not gathered in a list."""
    counts = draw_counts(mix, [len(p.data.examples) for p in parts])
    drawn: list[MixPart] = []
    for k, (part, count) in enumerate(zip(parts, counts)):
        rng = random.Random(f"{seed}:{k}")
        picked = draw_rows(len(part.data.examples), count, rng)
        if draw is not None:
            data = draw(part.data, picked)
        else:
            data = NormalisedData(part.data.format, [part.data.examples[i] for i in picked], part.data.skipped)
        drawn.append(MixPart(part.name, data, part.available))
    fmt = mixed_format([p.name for p in drawn], [p.data.format for p in drawn], what)
    interleaved = mix.weights is not None or mix.counts is not None
    order = seed if interleaved else None
    parted = [p.data.examples for p in drawn]
    examples = Interleaved(parted, order) if draw is not None else interleave(parted, order)
    skipped = [s for p in drawn for s in p.data.skipped]
    return MixedData(fmt, examples, skipped, parts=drawn, interleaved=interleaved, seed=seed)


def interleave(parts: Sequence[Sequence[T]], seed: int | None) -> list[T]:
    """The parts' items one part after the other, or (``seed`` given) shuffled together by it."""
    out = [item for part in parts for item in part]
    if seed is not None:
        random.Random(f"{seed}:order").shuffle(out)
    return out


def interleaved_order(total: int, seed: int | None) -> list[int] | None:
    """Where :func:`interleave` takes each of its ``total`` items from (indices into the parts one after the other);
    None when it keeps their order. Shuffling the indices as :func:`interleave` shuffles the items orders them
    alike (the shuffle's swaps depend only on the length and the seed)."""
    if seed is None:
        return None
    order = list(range(total))
    random.Random(f"{seed}:order").shuffle(order)
    return order


class Interleaved(Sequence[Any]):
    """:func:`interleave` of ``parts``, each item read from its part when asked for (parts read from Arrow tables
    stay there: only the order, one index per item, is held). A part with ``take(indices)`` (an
    :class:`tunekit.data.tables.ExampleColumn`) is read a batch of items at a time."""

    def __init__(self, parts: Sequence[Sequence[Any]], seed: int | None) -> None:
        self.parts = list(parts)
        self.offsets = [0, *itertools.accumulate(len(p) for p in self.parts)]
        order = interleaved_order(self.offsets[-1], seed)
        self.order = IntColumn(order) if order is not None else None  # 8 bytes an item, not a Python list

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, j: int) -> tuple[int, int]:
        at = self.order[j] if self.order is not None else j
        part = bisect.bisect_right(self.offsets, at) - 1
        return part, at - self.offsets[part]

    def take(self, picks: Iterable[int]) -> list[Any]:
        """The items at ``picks``, each part read once."""
        located = [self._locate(j) for j in picks]
        out: list[Any] = [None] * len(located)
        for p, part in enumerate(self.parts):
            slots = [n for n, (q, _) in enumerate(located) if q == p]
            if not slots:
                continue
            local = [located[n][1] for n in slots]
            got = part.take(local) if hasattr(part, "take") else [part[i] for i in local]
            for n, item in zip(slots, got):
                out[n] = item
        return out

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return self.take(range(*k.indices(len(self))))
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        part, i = self._locate(k)
        return self.parts[part][i]

    def __iter__(self) -> Iterator[Any]:
        for k in range(0, len(self), _BATCH):
            yield from self.take(range(k, min(k + _BATCH, len(self))))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, Interleaved)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


_BATCH = 1024  # items an Interleaved reads at a time
