"""Endless, resumable batches of dataset indices: where a stream stands is one integer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = ["IndexBatches", "load_batch"]


class IndexBatches:
    """Batches of ``indices``, reshuffled every pass; pass ``p`` is a function of ``(seed, p)`` only.

    Because the order never depends on what was drawn before, :attr:`position` (batches drawn so far) is
    the whole state: a resumed stream set to the same position yields the same batches, and nothing is
    loaded to get there.

    Args:
        indices: the dataset indices to draw from.
        batch_size: indices per batch; the last short batch of a pass is dropped when ``drop_last``.
        seed: seed of the shuffles.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, *, drop_last: bool = False) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        full, rest = divmod(len(self.indices), batch_size)
        self.per_pass = full if drop_last or not rest else full + 1
        if self.per_pass == 0:
            raise ValueError(f"{len(self.indices)} indices make no batch of {batch_size} (drop_last={drop_last})")
        self.position = 0

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        pass_index, within = divmod(self.position, self.per_pass)
        order = self.indices[
            torch.randperm(
                len(self.indices), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            )
        ]
        self.position += 1
        return order[within * self.batch_size : (within + 1) * self.batch_size].tolist()


def load_batch(
    dataset: Dataset[tuple[Tensor, Tensor]], indices: list[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(images, masks)`` of ``indices``, stacked and on ``device``."""
    images, masks = default_collate([dataset[i] for i in indices])
    return images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
