"""The DLN as the unroll calls it: what depends only on the DLN's parameters is computed once per stage.

Within a stage the DLN's parameters do not change. A loss module that knows what in it depends only on them
says so through the *stage-loss protocol*: a method

    ``stage_loss(params, targets) -> loss(outputs, target, sample_weight=None) | None``

which gets the stage's parameters (by name, as in ``named_parameters``) and every target of the stage, and
returns the stage's loss function, or ``None`` to decline. A weighted batch's weights are the loss's third
argument, by position. :class:`dynaloss.PairwiseDLN` implements it: its constrained, range-pinned matrices
are computed once per stage, and the stage's targets are checked at once. A module that wraps a DLN (the
PSPNet objective) passes the protocol on to it. Any other loss module goes through ``functional_call``
unchanged. docs/design-notes-core.md says what it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from dynaloss._batches import Batch
from dynaloss._checks import check_loss_value

__all__ = ["StageLoss", "StagedLoss", "StageLossFn"]

StageLossFn = Callable[..., Tensor]
"""``loss(outputs, target, sample_weight=None) -> Tensor``: a stage's loss, parameters fixed; a weighted batch's
weights come as the third argument, by position."""


@runtime_checkable
class StagedLoss(Protocol):
    """A loss module that can prepare its loss for a stage of a teacher's unroll (see the module's doc)."""

    def stage_loss(self, params: Mapping[str, Tensor], targets: Sequence[Tensor]) -> StageLossFn | None: ...


class StageLoss:
    """``loss(outputs, batch)`` of one unroll stage: a DLN and its (stage-constant) parameters.

    Args:
        loss_fn: the DLN module, or a module that holds one.
        loss_params: its learnable parameters for this stage, by name (others are read from the module).
        batches: the stage's batches, whose targets a :class:`StagedLoss` checks once here.

    Attributes:
        inputs_finite: ``None``, or a boolean tensor on the device: whether every DLN input (and sample
            weight) of the stage so far was finite (checked by the caller with the round's other checks);
            tracked for losses that follow the protocol.
    """

    def __init__(self, loss_fn: nn.Module, loss_params: Mapping[str, Tensor], batches: Sequence[Batch]) -> None:
        self.loss_fn = loss_fn
        self.loss_params = dict(loss_params)
        self.inputs_finite: Tensor | None = None
        self._staged: StageLossFn | None = None
        if isinstance(loss_fn, StagedLoss) and batches and all(_integer(batch.targets) for batch in batches):
            self._staged = loss_fn.stage_loss(self.loss_params, [batch.targets for batch in batches])

    def __call__(self, outputs: Tensor, batch: Batch) -> Tensor:
        """The loss of ``outputs`` on ``batch``; ``ValueError``/``TypeError`` unless it is a 0-d floating tensor
        (a ``reduction='none'`` loss, say, which a step cannot differentiate)."""
        extra = () if batch.sample_weight is None else (batch.sample_weight,)
        if self._staged is None:
            value = functional_call(self.loss_fn, self.loss_params, (outputs, batch.targets, *extra))
            return check_loss_value(value, f"loss_fn ({type(self.loss_fn).__name__})", outputs)
        loss = check_loss_value(
            self._staged(outputs, batch.targets, *extra), f"loss_fn ({type(self.loss_fn).__name__})", outputs
        )
        tensors = [outputs] if isinstance(outputs, Tensor) else [t for t in outputs if isinstance(t, Tensor)]
        finite = torch.stack([torch.isfinite(t).all() for t in [*tensors, *extra]]).all()
        self.inputs_finite = finite if self.inputs_finite is None else self.inputs_finite & finite
        return loss


def _integer(targets: Tensor) -> bool:
    return not (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
