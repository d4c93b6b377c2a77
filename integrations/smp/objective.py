"""PSPNet's training objective with a Dynamic Loss Network, and its cross-entropy counterpart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss import PairwiseDLN
from dynaloss._checks import check_positive_float, check_tensor
from dynaloss._stage_loss import StageLossFn

__all__ = ["AUX_WEIGHT", "VOC_IGNORE_INDEX", "PSPNetCELoss", "PSPNetDLNLoss", "check_segmentation_batch"]

AUX_WEIGHT = 0.4  # the PSPNet paper's weight of the auxiliary loss
VOC_IGNORE_INDEX = 255


def check_segmentation_batch(
    outputs: object, target: object, num_classes: int, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Unpack ``(main, aux)`` logits and check them against ``target``; raise naming what is wrong."""
    if not isinstance(outputs, Sequence) or len(outputs) != 2:
        raise TypeError(f"outputs must be (main, aux) logits as PSPNetAux returns, got {type(outputs).__name__}")
    main, aux = (check_tensor(o, name) for o, name in zip(outputs, ("outputs.main", "outputs.aux")))
    target = check_tensor(target, "target")
    for name, logits in (("main", main), ("aux", aux)):
        if logits.dim() != 4 or logits.shape[1] != num_classes:
            raise ValueError(f"{name} logits must be (B, {num_classes}, H, W), got shape {tuple(logits.shape)}")
    if target.shape != main.shape[:1] + main.shape[2:] or aux.shape != main.shape:
        raise ValueError(
            f"masks must be (B, H, W) = {tuple(main.shape[:1] + main.shape[2:])} for logits {tuple(main.shape)} "
            f"(aux {tuple(aux.shape)}), got masks of shape {tuple(target.shape)}"
        )
    if target.is_floating_point():
        raise TypeError(f"masks must hold integer class indices, got dtype {target.dtype}")
    counted = target[target != ignore_index]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= num_classes):
        raise ValueError(
            f"masks hold class indices outside [0, {num_classes}) (min {int(counted.min())}, max "
            f"{int(counted.max())}, ignore_index={ignore_index}): is num_classes={num_classes} right?"
        )
    return main, aux, target


class PSPNetDLNLoss(nn.Module):
    r"""``DLN(p, y) + 0.4 DLN(aux_p, y)``: PSPNet's objective with one shared :class:`dynaloss.PairwiseDLN`.

    Args:
        num_classes: classes ``C``.
        aux_weight: weight of the auxiliary term (default: ``0.4``).
        ignore_index: mask value that does not count (default: ``255``, VOC's).
        max_pixels: random valid pixels per image the DLN evaluates, an unbiased estimate of the mean over
            all of them. Each pixel costs ``C - 1`` rows through a 4-layer 40-wide MLP, so the DLN's cost per
            image is bounded by ``max_pixels * (C - 1)`` rows (default: ``4096``: 82k rows per image for VOC,
            ~1/40 of a 512x512 crop; ``None`` uses every pixel).
        init: the DLN's initialisation, see :class:`dynaloss.PairwiseDLN` (default: ``'warm'``).
        dln: an existing DLN to share (default: a new one).

    Shape:
        - outputs: ``(main, aux)``, each ``(B, C, H, W)`` logits.
        - target: ``(B, H, W)`` class indices.
        - output: scalar.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        aux_weight: float = AUX_WEIGHT,
        ignore_index: int = VOC_IGNORE_INDEX,
        max_pixels: int | None = 4096,
        init: str = "warm",
        dln: PairwiseDLN | None = None,
    ) -> None:
        super().__init__()
        if dln is None:
            dln = PairwiseDLN(num_classes, init=init, ignore_index=ignore_index, max_pixels=max_pixels)
        if dln.num_classes != num_classes or dln.ignore_index != ignore_index:
            raise ValueError(
                f"dln has num_classes={dln.num_classes}, ignore_index={dln.ignore_index}; "
                f"expected {num_classes}, {ignore_index}"
            )
        self.dln = dln
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = check_positive_float(aux_weight, "aux_weight")

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        main, aux, target = check_segmentation_batch(outputs, target, self.num_classes, self.ignore_index)
        return self.dln(main, target) + self.aux_weight * self.dln(aux, target)

    def stage_loss(self, params: Mapping[str, Tensor], targets: Sequence[Tensor]) -> StageLossFn | None:
        """The objective of a teacher's unroll stage: the DLN's own stage loss on both heads (the stage-loss
        protocol of :mod:`dynaloss._stage_loss`)."""
        inner = self.dln.stage_loss({k.removeprefix("dln."): v for k, v in params.items()}, targets)
        if inner is None:
            return None

        def loss(outputs: Sequence[Tensor], target: Tensor) -> Tensor:
            main, aux, target = check_segmentation_batch(outputs, target, self.num_classes, self.ignore_index)
            return inner(main, target) + self.aux_weight * inner(aux, target)

        return loss


class PSPNetCELoss(nn.Module):
    """``CE(p, y) + 0.4 CE(aux_p, y)``: PSPNet's own objective and the validation error of a teacher round.

    Args:
        num_classes: classes ``C``; masks are checked against it.
        aux_weight: weight of the auxiliary term (default: ``0.4``).
        ignore_index: mask value that does not count (default: ``255``).
    """

    def __init__(
        self, num_classes: int, *, aux_weight: float = AUX_WEIGHT, ignore_index: int = VOC_IGNORE_INDEX
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = check_positive_float(aux_weight, "aux_weight")

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        main, aux, target = check_segmentation_batch(outputs, target, self.num_classes, self.ignore_index)
        ce = F.cross_entropy
        return ce(main, target, ignore_index=self.ignore_index) + self.aux_weight * ce(
            aux, target, ignore_index=self.ignore_index
        )
