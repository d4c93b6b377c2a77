"""The batches a detection teacher round draws: the trainer's training images, re-split every epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from dynaloss.integrations.teaching import TeachingConfig, forever, resplit
from dynaloss.integrations.ultralytics.targets import pad_targets

__all__ = ["RoundBatches"]

Preprocess = Callable[[dict[str, Any]], dict[str, Any]]


class RoundBatches:
    """Teacher-train and teacher-val batches from one set of training images.

    The paper holds out part of the *training* set as the teacher's validation data and re-draws that split
    every epoch. Teacher-train batches come from the dataset the student trains on (augmented as the student
    sees it); teacher-val batches from the same images without augmentation.

    Args:
        augmented: the trainer's training dataset.
        plain: the same images, in the same order, without augmentation.
        config: batch sizes and ``val_ratio``.
        preprocess: the trainer's ``preprocess_batch`` (device, scaling to [0, 1], multi-scale).
        seed: the split of epoch ``e`` is drawn from ``seed + e``.
    """

    def __init__(
        self, augmented: Dataset[Any], plain: Dataset[Any], config: TeachingConfig, preprocess: Preprocess, seed: int
    ) -> None:
        if len(augmented) != len(plain):  # type: ignore[arg-type]
            raise ValueError(f"augmented and plain datasets differ in size: {len(augmented)} vs {len(plain)}")  # type: ignore[arg-type]
        self.augmented, self.plain = augmented, plain
        self.config, self.preprocess, self.seed = config, preprocess, seed
        self.train: Iterator[tuple[Tensor, Tensor]] | None = None
        self.val: Iterator[tuple[Tensor, Tensor]] | None = None
        self.val_images = 0  # images in this epoch's teacher-validation split

    def start_epoch(self, epoch: int) -> None:
        """Draw this epoch's split and restart both iterators on it."""
        train_idx, val_idx = resplit(len(self.plain), self.config.val_ratio, self.seed + epoch)  # type: ignore[arg-type]
        self.val_images = len(val_idx)
        self.train = self._batches(self.augmented, train_idx, self.config.train_batch, self.seed + epoch)
        self.val = self._batches(self.plain, val_idx, self.config.val_batch, self.seed + epoch + 1)

    def _batches(
        self, dataset: Dataset[Any], indices: list[int], batch: int, seed: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=batch,
            shuffle=True,
            collate_fn=dataset.collate_fn,  # type: ignore[attr-defined]
            generator=torch.Generator().manual_seed(seed),
            num_workers=0,
        )
        return (self._as_round_batch(b) for b in forever(loader))

    def _as_round_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        batch = self.preprocess(batch)
        images = batch["img"]
        return images, pad_targets(batch["batch_idx"], batch["cls"], batch["bboxes"], images.shape[0])
