"""Mean intersection-over-union over a data set, ignoring the ``ignore_index`` pixels.

The IoU is ``segmentation_models_pytorch.metrics.iou_score`` on the data set's per-class counts. The counting is
a confusion matrix of our own rather than ``smp.metrics.get_stats``, for its semantics: ``get_stats`` drops a
target value outside ``[0, num_classes)`` (other than ``ignore_index``) without a word, because its
``torch.histc`` ignores values outside the histogram's range, so a mask in another label scheme (or a wrong
``num_classes``) would yield a plausible mIoU; :func:`confusion_matrix` raises. It is also one ``bincount`` on
the device where ``get_stats`` loops over the images in Python and copies each image's counts to the CPU, and
the matrix gives the pixel accuracy the trainer reports as well.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import Tensor

__all__ = ["confusion_matrix", "mean_iou"]


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class, over the counted pixels.

    Raises:
        ValueError: the shapes differ, or ``target`` holds a class outside ``[0, num_classes)`` that is not
            ``ignore_index``.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    counted = target != ignore_index
    truth, predicted = target[counted].long(), prediction[counted].long()
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_classes):
        raise ValueError(f"target holds classes outside [0, {num_classes}) (ignore_index={ignore_index})")
    index = truth * num_classes + predicted
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> tuple[float, Tensor]:
    """``(mIoU, per-class IoU)`` of a data set's confusion matrix, in float64.

    A class absent from both truth and prediction has no IoU (NaN) and is left out of the mean, which is
    ``nan`` when no class is present. smp's ``reduction='macro'`` would count such a class as
    ``zero_division`` instead, so the per-class scores are taken unreduced and averaged here.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    tn = confusion.sum() - tp - fp - fn
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=float("nan"))
    present = ~iou.isnan()
    return (float(iou[present].mean()) if bool(present.any()) else float("nan")), iou
