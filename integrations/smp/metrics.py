"""Mean intersection-over-union from a confusion matrix, ignoring the ``ignore_index`` pixels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "mean_iou"]


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class, over the counted pixels."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    counted = target != ignore_index
    truth, predicted = target[counted].long(), prediction[counted].long()
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_classes):
        raise ValueError(f"target holds classes outside [0, {num_classes}) (ignore_index={ignore_index})")
    index = truth * num_classes + predicted
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> tuple[float, Tensor]:
    """``(mIoU, per-class IoU)``; classes absent from both truth and prediction are left out of the mean (NaN)."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))
    present = ~iou.isnan()
    return (float(iou[present].mean()) if bool(present.any()) else float("nan")), iou
