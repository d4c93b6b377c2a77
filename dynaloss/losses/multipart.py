"""MultiPartDLN: the detection DLN, a learned weighting of a k-part objective."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynaloss import functional as DF
from dynaloss._checks import check_finite, check_positive_int, check_tensor

__all__ = ["MultiPartDLN"]


class MultiPartDLN(nn.Module):
    r"""A single-layer perceptron over the parts of a composite loss (the paper's detection DLN).

    .. math::
        L_\phi(l_1, \dots, l_k) = \sum_i \phi_i \, l_i

    with :math:`\phi` initialised to ``init_weights``, so that at the start it reproduces the framework's
    own weighted sum exactly (for ultralytics YOLO: ``7.5·box + 0.5·cls + 1.5·dfl``). There is no bias:
    a constant never moves the student, so its hypergradient is exactly zero.

    Args:
        num_parts: number of loss parts ``k``.
        init_weights: ``k`` starting weights, the framework's gains.
        reduction: how a batch of part vectors is reduced: ``'none'`` | ``'mean'`` | ``'sum'``
            (default: ``'sum'``, the framework's convention for a single part vector).

    Shape:
        - parts: ``(k,)`` or ``(B, k)``.
        - output: scalar, or ``()``/``(B,)`` with ``reduction='none'``.

    Examples::

        >>> loss_fn = MultiPartDLN(3, [7.5, 0.5, 1.5])
        >>> loss_fn(torch.tensor([1.0, 2.0, 3.0]))
        tensor(13., grad_fn=<SumBackward0>)
    """

    def __init__(self, num_parts: int, init_weights: Sequence[float] | Tensor, *, reduction: str = "sum") -> None:
        super().__init__()
        self.num_parts = check_positive_int(num_parts, "num_parts")
        self.reduction = DF.check_reduction(reduction)
        weights = torch.as_tensor(init_weights, dtype=torch.get_default_dtype()).flatten()
        if weights.numel() != num_parts:
            raise ValueError(f"init_weights must hold num_parts={num_parts} values, got {weights.numel()}")
        check_finite(weights, "init_weights")
        self.weight = nn.Parameter(weights.clone())

    def extra_repr(self) -> str:
        return f"num_parts={self.num_parts}, reduction={self.reduction!r}"

    def forward(self, parts: Tensor) -> Tensor:
        check_tensor(parts, "parts")
        if parts.dim() not in (1, 2) or parts.shape[-1] != self.num_parts:
            raise ValueError(f"parts must be ({self.num_parts},) or (B, {self.num_parts}), got {tuple(parts.shape)}")
        if parts.numel() == 0:  # an empty batch would make 'mean' a silent NaN
            raise ValueError(f"parts is empty (shape {tuple(parts.shape)})")
        check_finite(parts, "parts")
        per_vector = parts.to(self.weight.dtype) @ self.weight
        if self.reduction == "none":
            return per_vector
        return per_vector.sum() if self.reduction == "sum" else per_vector.mean()
