"""Ultralytics' ragged box labels as one padded tensor, the form a teacher round's batches need.

A :class:`dynaloss.Teacher` draws ``(images, targets)`` batches whose targets have the batch as their first
dimension. Ultralytics keeps the boxes of a batch flat (``batch_idx``, ``cls``, ``bboxes``), so a round
carries them padded to ``(B, M, 5)`` rows ``[cls, cx, cy, w, h]`` and the loss unpacks them again.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PAD_CLASS", "pad_targets", "unpad_targets"]

PAD_CLASS = -1.0  # class value of a padding row; real classes are >= 0


def pad_targets(batch_idx: Tensor, cls: Tensor, bboxes: Tensor, batch_size: int) -> Tensor:
    """``(B, M, 5)`` rows ``[cls, cx, cy, w, h]`` per image, ``M`` the most boxes in one image.

    Args:
        batch_idx: ``(n,)`` image index of each box.
        cls: ``(n,)`` or ``(n, 1)`` class of each box.
        bboxes: ``(n, 4)`` normalised ``xywh`` boxes.
        batch_size: ``B``; images without boxes get only padding rows.
    """
    index = batch_idx.long().flatten()
    rows = torch.cat([cls.reshape(-1, 1).to(bboxes.dtype), bboxes], 1)
    counts = torch.bincount(index, minlength=batch_size) if index.numel() else index.new_zeros(batch_size)
    out = rows.new_full((batch_size, int(counts.max()) if index.numel() else 0, 5), 0.0)
    out[..., 0] = PAD_CLASS
    if index.numel():
        # position of each box among its image's boxes, in the order they came
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(index)
        slot[order] = torch.arange(index.numel(), device=index.device) - starts[index[order]]
        out[index, slot] = rows
    return out


def unpad_targets(targets: Tensor) -> dict[str, Tensor]:
    """Inverse of :func:`pad_targets`: ultralytics' ``batch_idx``, ``cls`` ``(n, 1)`` and ``bboxes`` ``(n, 4)``."""
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(f"targets must be (B, M, 5) rows [cls, cx, cy, w, h], got shape {tuple(targets.shape)}")
    real = targets[..., 0] >= 0
    image, _ = real.nonzero(as_tuple=True)
    rows = targets[real]
    return {"batch_idx": image.to(targets.dtype), "cls": rows[:, :1], "bboxes": rows[:, 1:]}
