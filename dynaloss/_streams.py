"""Endless batch streams for a teacher's rounds, drawn from the loaders a training loop already has."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["forever"]

T = TypeVar("T")


def forever(batches: Iterable[T]) -> Iterator[T]:
    """Cycle through ``batches`` without end, asking it for a new pass each time.

    A ``DataLoader`` with ``shuffle=True`` then reshuffles on every pass, where ``itertools.cycle`` would replay
    its first pass for ever.

    Raises:
        ValueError: if a pass yields no batch (the stream would never yield).
    """
    while True:
        empty = True
        for item in batches:
            empty = False
            yield item
        if empty:
            raise ValueError("the teacher's data loader yields no batches")
