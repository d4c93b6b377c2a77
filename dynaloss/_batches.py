"""Drawing and checking the batches a teacher round consumes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, cast

import torch
from torch import Tensor

__all__ = ["Batch", "as_batch", "draw_batches"]


class Batch(NamedTuple):
    """Inputs, targets and optional per-sample weights (the paper's ``w``)."""

    inputs: Tensor
    targets: Tensor
    sample_weight: Tensor | None = None


def as_batch(item: object, name: str, device: torch.device) -> Batch:
    """Turn ``(x, y)`` or ``(x, y, w)`` into a :class:`Batch` on ``device``, or raise naming what is wrong.

    ``w`` must be floating-point: an integer or boolean third element raises ``TypeError`` (it is most often
    a loader's sample index, which as weights would silently give sample 0 the weight 0).
    """
    if isinstance(item, Batch):
        parts = tuple(item)
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        parts = tuple(item) + (None,) * (3 - len(item))
    else:
        raise TypeError(
            f"{name} must yield (inputs, targets) or (inputs, targets, weight), got {type(item).__name__}"
            + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        )
    for label, value in zip(("inputs", "targets", "weight"), parts):
        if (value is not None or label != "weight") and not isinstance(value, Tensor):
            raise TypeError(f"{name} yielded {label} of type {type(value).__name__}, expected a torch.Tensor")
    inputs, targets, weight = cast("tuple[Tensor, Tensor, Tensor | None]", parts)
    if inputs.dim() == 0:
        raise ValueError(f"{name} yielded 0-d inputs; a batch needs a leading batch dimension")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} yielded an empty batch (inputs of shape {tuple(inputs.shape)})")
    if targets.dim() == 0 or targets.shape[0] != inputs.shape[0]:
        raise ValueError(f"{name} yielded {inputs.shape[0]} inputs but targets of shape {tuple(targets.shape)}")
    if weight is not None and not weight.is_floating_point():
        raise TypeError(
            f"{name} yielded a third element of dtype {weight.dtype}: it must be floating-point per-sample weights "
            "of the targets' shape (the paper's w); a loader that yields (inputs, targets, index) must drop the "
            "index, e.g. ((x, y) for x, y, _ in loader)"
        )
    if weight is not None and weight.shape != targets.shape:
        raise ValueError(
            f"{name} yielded weight of shape {tuple(weight.shape)}, expected the targets' {tuple(targets.shape)}"
        )
    moved_weight = None if weight is None else weight.to(device, non_blocking=True)
    return Batch(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True), moved_weight)


def draw_batches(iterator: Iterator[object], count: int, name: str, device: torch.device) -> list[Batch]:
    """Take ``count`` batches from ``iterator``, each as a :class:`Batch` on ``device`` (:func:`as_batch`).

    Raises:
        TypeError: ``iterator`` is not an iterator, or a batch is not of the structure :func:`as_batch` takes.
        ValueError: ``iterator`` ended before ``count`` batches, or a batch is malformed (:func:`as_batch`).
    """
    if not isinstance(iterator, Iterator):
        raise TypeError(
            f"{name} must be an iterator (something next() works on), got {type(iterator).__name__}; "
            f"pass iter(loader) for one pass or dynaloss.forever(loader) for an endless one"
        )
    batches = []
    for index in range(count):
        try:
            item = next(iterator)
        except StopIteration:
            raise ValueError(f"{name} ended after {index} batches; a round needs {count}") from None
        batches.append(as_batch(item, name, device))
    return batches
