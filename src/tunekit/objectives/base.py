"""The Objective base: what signal trains the parameters. Pure configuration."""

from __future__ import annotations

from typing import ClassVar

from tunekit._config import Config

__all__ = ["Objective"]


class Objective(Config):
    """Base class of objectives; ``data_formats`` names the record formats it accepts."""

    data_formats: ClassVar[frozenset[str]] = frozenset()

    @property
    def name(self) -> str:
        return type(self).__name__
