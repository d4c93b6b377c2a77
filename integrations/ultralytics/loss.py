"""The YOLO criterion whose objective is a :class:`dynaloss.MultiPartDLN` over ultralytics' own loss parts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from ultralytics.utils import IterableSimpleNamespace
from ultralytics.utils.loss import v8DetectionLoss

from dynaloss import MultiPartDLN
from dynaloss.integrations.ultralytics.targets import unpad_targets

__all__ = ["PART_NAMES", "DLNDetectionLoss", "DetectionObjective", "loss_gains"]

PART_NAMES = ("box", "cls", "dfl")


def _hyperparameters(model: nn.Module) -> IterableSimpleNamespace:
    args = getattr(model, "args", None)
    if isinstance(args, dict):  # a model loaded from a .pt file keeps its args as a dict
        return IterableSimpleNamespace(**args)
    if args is None:
        raise ValueError(
            f"{type(model).__name__} has no .args (the loss gains box/cls/dfl live there); set "
            f"model.args = ultralytics.cfg.get_cfg() as ultralytics' trainer does"
        )
    return args


def loss_gains(model: nn.Module) -> tuple[float, float, float]:
    """Ultralytics' gains ``(box, cls, dfl)`` (7.5, 0.5, 1.5 by default) from ``model.args``."""
    hyp = _hyperparameters(model)
    return float(hyp.box), float(hyp.cls), float(hyp.dfl)


class DLNDetectionLoss:
    r"""Ultralytics' detection criterion with a learnable weighting of its three parts.

    .. math::
        L = \mathrm{DLN}_\phi(l_\mathrm{box}, l_\mathrm{cls}, l_\mathrm{dfl}) \cdot B,
        \qquad \phi_0 = (g_\mathrm{box}, g_\mathrm{cls}, g_\mathrm{dfl})

    The parts are ultralytics' own (``v8DetectionLoss``: task-aligned assignment, BCE, CIoU and DFL), taken
    before its gains; the DLN starts at those gains, so at the start the loss and its gradients equal
    ultralytics' gained sum. Install it as a model's ``criterion`` (what :class:`DLNDetectionTrainer`
    does); it keeps ultralytics' call contract ``criterion(preds, batch) -> (loss, items)``, with ``items``
    the *gained* parts under ultralytics' names so logs stay comparable.

    Copies of the model (the EMA, the validator's) must keep teaching and reporting with the same DLN, so a
    deep copy of this criterion is the criterion itself.

    Args:
        model: the ``DetectionModel`` (on its final device; ``model.args`` holds the gains).
        dln: the DLN to weight the parts with (default: a new ``MultiPartDLN(3, gains)``).
        tal_topk: top-k of ultralytics' task-aligned assigner (default: ``10``, ultralytics').

    Attributes:
        dln: the :class:`dynaloss.MultiPartDLN`.
        objective: the same loss as an ``nn.Module`` on ``(preds, padded_targets)``: what a
            :class:`dynaloss.Teacher` teaches (see :class:`DetectionObjective`).
    """

    def __init__(self, model: nn.Module, dln: MultiPartDLN | None = None, *, tal_topk: int = 10) -> None:
        self.gains = loss_gains(model)
        if dln is None:
            dln = MultiPartDLN(len(PART_NAMES), self.gains)
        if not isinstance(dln, MultiPartDLN) or dln.num_parts != len(PART_NAMES) or dln.reduction != "sum":
            raise ValueError(
                f"dln must be a MultiPartDLN over {len(PART_NAMES)} parts {PART_NAMES} with reduction='sum'"
            )
        self.dln = dln
        self._parts = v8DetectionLoss(model, tal_topk=tal_topk)
        if not self._parts.use_dfl:
            raise ValueError("the model's Detect head has reg_max=1 (no DFL part); DLNDetectionLoss needs box/cls/dfl")
        # ultralytics applies its gains inside; with unit gains it hands out the bare parts for the DLN to weight
        self._parts.hyp = IterableSimpleNamespace(
            **{**vars(_hyperparameters(model)), "box": 1.0, "cls": 1.0, "dfl": 1.0}
        )
        self.loss_names = self._parts.loss_names
        self.objective = DetectionObjective(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> DLNDetectionLoss:
        return self

    def parts(self, preds: Any, batch: dict[str, Tensor]) -> Tensor:
        """``(3,)`` bare parts ``(box, cls, dfl)`` of ``preds`` (train-mode dict or eval-mode tuple) on ``batch``.

        Raises:
            ValueError: ``batch`` holds a class the model's head does not have.
        """
        cls = batch["cls"]
        if cls.numel() and (int(cls.max()) >= self._parts.nc or int(cls.min()) < 0):
            raise ValueError(
                f"the batch holds classes in [{int(cls.min())}, {int(cls.max())}] but the model's Detect head has "
                f"nc={self._parts.nc}: the data and the model disagree on the number of classes"
            )
        return self._parts.get_assigned_targets_and_loss(self._parts.parse_output(preds), batch)[1]

    def gained(self, parts: Tensor) -> Tensor:
        """Ultralytics' gained parts ``gains * parts``."""
        return parts * parts.new_tensor(self.gains)

    def __call__(self, preds: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Ultralytics' criterion contract: ``(DLN(parts) * B, {'box_loss': .., 'cls_loss': .., 'dfl_loss': ..})``."""
        preds = self._parts.parse_output(preds)
        parts = self.parts(preds, batch)
        batch_size = preds["boxes"].shape[0]
        return self.dln(parts) * batch_size, dict(zip(self.loss_names, self.gained(parts).detach()))

    def validation_error(self, preds: Any, targets: Tensor) -> Tensor:
        """The original objective, ultralytics' gained sum, on padded targets: a teacher round's validation error."""
        return self.gained(self.parts(preds, unpad_targets(targets))).sum()


class DetectionObjective(nn.Module):
    """``DLN(box, cls, dfl)`` on ``(preds, targets)`` with padded targets: the loss a teacher round unrolls.

    Its only parameters are the DLN's, so ``functional_call`` swaps them during an unroll and a
    :class:`dynaloss.Teacher` updates them in place.

    Attributes:
        scale: the factor on ``DLN(parts)`` (default: ``1.0``). Ultralytics' optimizer steps on the gradient
            of ``B · DLN(parts)`` summed over ``accumulate`` batches: an unroll that follows that optimizer
            needs ``scale = B · accumulate`` (images per optimizer step) for its steps to be as long as the
            real ones; :class:`DLNDetectionTrainer` sets it before each round.

    Shape:
        - preds: the detection model's output on ``B`` images.
        - targets: ``(B, M, 5)`` from :func:`pad_targets`.
        - output: scalar.
    """

    def __init__(self, criterion: DLNDetectionLoss) -> None:
        super().__init__()
        self.dln = criterion.dln
        self._criterion = criterion  # a plain object, so not part of this module's tree
        self.scale = 1.0

    def forward(self, preds: Any, targets: Tensor) -> Tensor:
        return self.dln(self._criterion.parts(preds, unpad_targets(targets))) * self.scale

    def part_weights(self) -> dict[str, float]:
        """The DLN's current gain of each part (``exp`` of its learned log-gain), by name."""
        with torch.no_grad():
            return dict(zip(PART_NAMES, (float(w) for w in self.dln.weight)))
