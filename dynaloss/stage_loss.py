"""The DLN as the unroll calls it: what depends only on the DLN's parameters is computed once per stage.

Within a stage the DLN's parameters do not change, so a :class:`dynaloss.PairwiseDLN`'s constrained,
range-pinned matrices (:meth:`~dynaloss.PairwiseDLN.mlp_weights`, some 30 small operations) are the same for
every step. Calling the module each step would recompute them, differentiate through them and, in the
hypergradient, differentiate through them a second time; and its value checks read back from the device at
every step. :class:`StageLoss` computes the matrices once, checks the targets of the whole stage with one
read-back, keeps the shape checks, and tracks the finiteness of the DLN's inputs on the device. The loss
itself is the module's own (:meth:`~dynaloss.PairwiseDLN.loss_with`); any other loss module goes through
``functional_call`` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from dynaloss.batches import Batch
from dynaloss.losses.pairwise import PairwiseDLN

__all__ = ["StageLoss"]


class StageLoss:
    """``loss(outputs, batch)`` of one unroll stage: a DLN and its (stage-constant) parameters.

    Args:
        loss_fn: the DLN module.
        loss_params: its learnable parameters for this stage, by name (others are read from the module).
        batches: the stage's batches; a :class:`~dynaloss.PairwiseDLN`'s targets are all checked here, with
            one read-back from the device.

    Attributes:
        inputs_finite: ``None``, or a boolean tensor on the device: whether every DLN input (and sample
            weight) of the stage so far was finite (checked by the caller with the round's other checks).
    """

    def __init__(self, loss_fn: nn.Module, loss_params: Mapping[str, Tensor], batches: Sequence[Batch]) -> None:
        self.loss_fn = loss_fn
        self.loss_params = dict(loss_params)
        self.inputs_finite: Tensor | None = None
        self._weights: list[Tensor] | None = None
        # type(), not isinstance(): a subclass may compute another loss in its own forward
        if type(loss_fn) is PairwiseDLN and all(_integer(batch.targets) for batch in batches) and batches:
            loss_fn.check_target(torch.cat([batch.targets.reshape(-1) for batch in batches]))
            layers = [self.loss_params.get(name, param) for name, param in loss_fn.named_parameters()]
            self._weights = loss_fn.mlp_weights(layers)

    def __call__(self, outputs: Tensor, batch: Batch) -> Tensor:
        extra = {} if batch.weight is None else {"weight": batch.weight}
        if self._weights is None:
            return functional_call(self.loss_fn, self.loss_params, (outputs, batch.targets), extra)
        dln: PairwiseDLN = self.loss_fn  # type: ignore[assignment]
        dln.check_shapes(outputs, batch.targets, batch.weight)
        finite = torch.isfinite(outputs).all()
        if batch.weight is not None:
            finite = finite & torch.isfinite(batch.weight).all()
        self.inputs_finite = finite if self.inputs_finite is None else self.inputs_finite & finite
        return dln.loss_with(self._weights, outputs, batch.targets, batch.weight)


def _integer(targets: Tensor) -> bool:
    return not (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
