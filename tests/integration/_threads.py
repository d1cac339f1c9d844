"""One intra-op thread for the modules that import this fixture (the method catalogue's tests).

Tiny models gain nothing from intra-op threads, and on a busy shared machine (CI, laptops) two
processes each spinning two OpenMP threads over two cores run several times slower than with one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
