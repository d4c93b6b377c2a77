"""MultiPartDLN: the detection DLN, a learned weighting of a k-part objective."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynaloss import functional as DF
from dynaloss._checks import check_finite, check_floating, check_positive_int, check_same_device, check_tensor
from dynaloss._state import ValidatedLoad

__all__ = ["MultiPartDLN"]


class MultiPartDLN(ValidatedLoad):
    r"""A single-layer perceptron over the parts of a composite loss (the paper's detection DLN).

    .. math::
        L_\phi(l_1, \dots, l_k) = \sum_i e^{\phi_i} \, l_i

    with :math:`e^{\phi}` initialised to ``init_weights``, so that at the start it reproduces the framework's
    own weighted sum (for ultralytics YOLO: ``7.5·box + 0.5·cls + 1.5·dfl``), exactly up to the float rounding
    of ``exp(log(w))`` (in float32 ``7.5`` comes back as ``7.5000005``). There is no bias: a constant never
    moves the student, so its hypergradient is exactly zero.

    The learnable parameter is the log-gain ``log_weight`` (:math:`\phi`), not the gain: a teacher round
    moves each parameter by at most ``dln_lr`` (``1e-3`` by default), which on a gain of ``7.5`` would be a
    change of 0.01 % per round, while on its log it is a *relative* change of up to ``dln_lr`` whatever the
    gain's size. Gains also stay positive: a negative gain would make the student maximise that part.

    Args:
        num_parts: number of loss parts ``k``.
        init_weights: ``k`` starting gains, the framework's; each must be ``> 0``.
        reduction: how a batch of part vectors is reduced: ``'none'`` | ``'mean'`` | ``'sum'``
            (default: ``'sum'``, the framework's convention for a single part vector).

    Shape:
        - parts: ``(k,)`` or ``(B, k)``.
        - output: scalar, or ``()``/``(B,)`` with ``reduction='none'``.

    Attributes:
        log_weight: the ``(k,)`` learnable log-gains, what a :class:`dynaloss.Teacher` updates.
        weight: the effective gains ``exp(log_weight)`` (read-only, differentiable; ``.detach()`` to read
            values, write ``log_weight`` to set them).

    Examples::

        >>> loss_fn = MultiPartDLN(3, [7.5, 0.5, 1.5])
        >>> loss_fn.weight
        tensor([7.5000, 0.5000, 1.5000], grad_fn=<ExpBackward0>)
    """

    def __init__(self, num_parts: int, init_weights: Sequence[float] | Tensor, *, reduction: str = "sum") -> None:
        super().__init__()
        self.num_parts = check_positive_int(num_parts, "num_parts")
        self.reduction = DF.check_reduction(reduction)
        weights = torch.as_tensor(init_weights, dtype=torch.get_default_dtype()).flatten()
        if weights.numel() != num_parts:
            raise ValueError(f"init_weights must hold num_parts={num_parts} values, got {weights.numel()}")
        check_finite(weights, "init_weights")
        self.log_weight = nn.Parameter(_log_gains(weights, "init_weights"))

    @property
    def weight(self) -> Tensor:
        """The effective gains ``exp(log_weight)``, ``(k,)``, differentiable with respect to ``log_weight``."""
        return self.log_weight.exp()

    def extra_repr(self) -> str:
        return f"num_parts={self.num_parts}, reduction={self.reduction!r}"

    def forward(self, parts: Tensor) -> Tensor:
        """The weighted sum of ``parts``, computed in the wider of their dtype and the DLN's (float64 parts with
        the float32 DLN: float64)."""
        check_floating(check_tensor(parts, "parts"), "parts", "floating-point loss values")
        check_same_device({"parts": parts}, self.log_weight, "the DLN")
        if parts.dim() not in (1, 2) or parts.shape[-1] != self.num_parts:
            raise ValueError(f"parts must be ({self.num_parts},) or (B, {self.num_parts}), got {tuple(parts.shape)}")
        if parts.numel() == 0:  # an empty batch would make 'mean' a silent NaN
            raise ValueError(f"parts is empty (shape {tuple(parts.shape)})")
        check_finite(parts, "parts")
        dtype = torch.promote_types(parts.dtype, self.log_weight.dtype)
        per_vector = parts.to(dtype) @ self.log_weight.exp().to(dtype)
        if self.reduction == "none":
            return per_vector
        return per_vector.sum() if self.reduction == "sum" else per_vector.mean()


def _log_gains(gains: Tensor, name: str) -> Tensor:
    """``log(gains)``, taken in float64 (the nearest log to the gain) and returned in ``gains``' dtype."""
    if not bool((gains > 0).all()):
        raise ValueError(f"{name} must all be > 0 (the DLN learns their logs), got {gains.tolist()}")
    return gains.detach().double().log().to(gains.dtype)
