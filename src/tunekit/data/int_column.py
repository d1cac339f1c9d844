"""Integers that grow with the rows (row numbers, positions in a table, a mixture's order) held in a numpy array, 8
bytes each, rather than in a Python list (an int object and a pointer each, about 36 bytes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

__all__ = ["IntColumn"]

_READ = 10_000  # values an iteration converts to Python ints at a time


class IntColumn(Sequence[int]):
    """Integers (row numbers, positions in a table) held in a numpy ``int64`` array, 8 bytes each, read as Python
    ints: what a list of them reads as, without a Python object per row. ``values``: an array, an Arrow array or
    any sequence of integers."""

    def __init__(self, values: Any) -> None:
        import numpy as np

        if isinstance(values, IntColumn):
            values = values.array
        elif hasattr(values, "to_numpy"):  # Arrow
            values = values.to_numpy(zero_copy_only=False)
        self.array: Any = np.asarray(values, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, k: int) -> int: ...
    @overload
    def __getitem__(self, k: slice) -> list[int]: ...
    def __getitem__(self, k: int | slice) -> int | list[int]:
        if isinstance(k, slice):
            return [int(v) for v in self.array[k].tolist()]
        return int(self.array[k])

    def take(self, ks: Iterable[int]) -> list[int]:
        """The items at ``ks`` (in that order, repeats included)."""
        import numpy as np

        picks = np.fromiter(ks, dtype=np.int64)
        return [int(v) for v in self.array[picks].tolist()]

    def __iter__(self) -> Iterator[int]:
        for k in range(0, len(self.array), _READ):
            yield from self.array[k : k + (_READ)].tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, IntColumn)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __add__(self, other: Sequence[int]) -> list[int]:  # as a list adds: rows + skipped rows
        return [*self, *other]

    def __radd__(self, other: Sequence[int]) -> list[int]:
        return [*other, *self]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IntColumn({len(self)} values)"
