"""Warm start: the matrices of a pairwise DLN that is a known loss before teaching begins.

- :func:`one_vs_all_weights` (``init='warm'``, sigmoid rows): the one-vs-all binary cross-entropy
  ``-log s_y - sum_j log(1 - s_j)``, whose logit gradients ``(s_y - 1, s_j)`` match softmax cross-entropy's in
  size. The DLN averages its ``C - 1`` pair rows, so each row is ``-log s_y - (C - 1) log(1 - s_j)``
  (:func:`one_vs_all_pair_ce`). The MLP is *built*, not fitted: both terms are interpolated exactly at knots
  spread evenly in logit space.
- :func:`cross_entropy_weights` (``init='ce'``, softmax rows): softmax cross-entropy itself, exactly (not at
  knots), since the rows' true-class feature is linear in ``-log p_y``.

docs/design-notes.md says why the DLN is built rather than fitted, and why softmax rows;
docs/design-notes-core.md what the spare units cost the CE start.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dynaloss import functional as DF

__all__ = [
    "cross_entropy_weights",
    "one_vs_all_pair_ce",
    "one_vs_all_weights",
]


def one_vs_all_pair_ce(num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The pair loss whose mean over the ``C - 1`` wrong classes is the one-vs-all binary cross-entropy."""
    return lambda true_prob, wrong_prob: -torch.log(true_prob) - (num_classes - 1) * torch.log1p(-wrong_prob)


# Knots of the construction lie at sigmoid(z) for z evenly spaced in [-_SPAN, _SPAN].
_SPAN = 7.0
# Entries the construction leaves empty get this magnitude rather than 0: under the monotone constraint
# the DLN computes with |w|, whose gradient at exactly 0 is 0, and the teacher could never move them.
_EMPTY = 1e-6


def _convex_knots(function: Callable[[Tensor], Tensor], knots: Tensor) -> Tensor:
    """Slopes of the piecewise-linear interpolant of ``function`` between consecutive ``knots``."""
    values = function(knots)
    return (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])


def one_vs_all_weights(num_classes: int, hidden: int = 40, depth: int = 4) -> list[Tensor]:
    """Layer matrices of a pairwise DLN whose rows compute :func:`one_vs_all_pair_ce`, interpolated.

    The row loss ``-log s_y - (C - 1) log(1 - s_j)`` is a sum of a convex decreasing function of ``s_y``
    and a convex increasing one of ``s_j``. Each is written as a non-negative sum of hinges:
    ``sum_k c_k relu(1 - s_y / t_k)`` and ``sum_k d_k relu((s_j - v_k) / (1 - v_k))``, half of the first
    layer's units each (knot ``t_k`` / ``v_k`` in the bias column, scaled so every unit's input is at most
    1), which makes the interpolant exact at the knots. The later hidden layers pass the units through
    (identity), and the last layer holds ``c`` and ``d``. Every matrix already satisfies the monotone
    constraint, so the DLN computes the same loss with ``monotone`` on or off.

    Args:
        num_classes: ``C``.
        hidden: width of the hidden layers (at least 2).
        depth: number of hidden layers (at least 1).

    Returns:
        float32 matrices ``(hidden, 4)``, ``(hidden, hidden)`` x ``(depth - 1)``, ``(1, hidden)``.
    """
    if hidden < 2:
        raise ValueError(f"the one-vs-all warm start needs hidden >= 2 (a unit per term), got {hidden}")
    true_units, wrong_units = hidden // 2, hidden - hidden // 2
    dtype = torch.float64

    # -log s on knots t_1 < ... < t_K < 1; unit k is the hinge at the (k + 1)-th knot (the last one at 1),
    # and the slope below t_2 continues down to s = 0.
    t = torch.sigmoid(torch.linspace(-_SPAN, _SPAN, true_units, dtype=dtype))
    t = torch.cat([t, t.new_ones(1)])
    slopes = _convex_knots(lambda s: -torch.log(s), t)  # increasing, negative
    hinge_at = t[1:]
    # on (t_k, t_k+1) the slope is -(c_k + ... + c_K)
    c = torch.cat([slopes[1:] - slopes[:-1], -slopes[-1:]])
    # -(C - 1) log(1 - s) on knots 0 = v_1 < ... < v_K (and one more to end the last piece)
    v = torch.sigmoid(torch.linspace(-_SPAN, _SPAN, wrong_units, dtype=dtype))
    v = torch.cat([v.new_zeros(1), v])
    rises = _convex_knots(lambda s: -(num_classes - 1) * torch.log1p(-s), v)  # increasing, positive
    hinge_from = v[:-1]
    d = torch.cat([rises[:1], rises[1:] - rises[:-1]])

    first = torch.full((hidden, 4), _EMPTY, dtype=dtype)
    first[:, 0] = -_EMPTY  # the monotone constraint's sign for the true-class column
    first[:true_units, 0] = -1.0 / hinge_at  # relu(1 - s_y / t): input 1 at s_y = 0, 0 at the knot
    first[:true_units, 2] = 1.0
    scale = 1.0 - hinge_from  # relu((s_j - v) / (1 - v)): input 1 at s_j = 1
    first[true_units:, 1] = 1.0 / scale
    first[true_units:, 2] = -hinge_from / scale
    last = torch.cat([c * hinge_at, d * scale])[None, :]  # undo the units' scaling
    middle = [torch.eye(hidden, dtype=dtype).clamp_min(_EMPTY) for _ in range(depth - 1)]
    return [m.float() for m in [first, *middle, last]]


# Where cross_entropy_weights puts the knots of its spare units: true-class hinges at these cross-entropies
# (nats), wrong-class hinges at these pair probabilities.
_CE_KNOTS = (0.05, 8.0)
_WRONG_KNOTS = (0.0, 0.9)


def cross_entropy_weights(hidden: int = 40, depth: int = 4) -> list[Tensor]:
    """Layer matrices of a ``features='softmax'`` pairwise DLN that computes softmax cross-entropy.

    On a row ``[1 - d, q_j, 1, 0]`` with ``d = -log(p_y) / U`` (:class:`dynaloss._features.SoftmaxFeatures`)
    the first unit is ``leaky_relu(1 - (1 - d)) = d``, the later hidden layers pass it through and the last
    multiplies it by ``U``: every row, and so their mean, is ``-log p_y`` wherever ``p_y >= exp(-U)``.

    The other units are there for the teacher and cost the loss nothing: hinges ``relu(1 - a_y / k)`` of the
    true class (active where its cross-entropy exceeds a knot between 0.05 and 8 nats: such a hinge makes
    hard samples count more) and ``relu(q_j - v)`` of a wrong class (``v`` in ``[0, 0.9]``), half each. Their
    last-layer entries are ``_EMPTY ** 2``, yet the validation error's gradient reaches those entries at full
    size (it is the unit's output), so a teacher can turn any of them on. The entries that would mix them
    into the first unit are ``_EMPTY ** 2`` too, and the rest ``_EMPTY`` (docs/design-notes-core.md). Every
    matrix satisfies the monotone constraint.

    Args:
        hidden: width of the hidden layers (at least 1).
        depth: number of hidden layers (at least 1).

    Returns:
        float32 matrices ``(hidden, 4)``, ``(hidden, hidden)`` x ``(depth - 1)``, ``(1, hidden)``.
    """
    if hidden < 1 or depth < 1:
        raise ValueError(f"the cross-entropy start needs hidden >= 1 and depth >= 1, got {hidden} and {depth}")
    dtype = torch.float64
    spare = hidden - 1
    true_units, wrong_units = spare // 2, spare - spare // 2

    first = torch.full((hidden, 4), _EMPTY, dtype=dtype)
    first[:, 0] = -_EMPTY  # the monotone constraint's sign for the true-class column
    first[0] = torch.tensor([-1.0, _EMPTY**2, 1.0, _EMPTY**2], dtype=dtype)  # 1 - a_y = d
    # relu(1 - a_y / k): input 1 at a_y = 0, 0 at the knot k = 1 - ce / U
    low, high = (math.log10(ce) for ce in _CE_KNOTS)
    knots = 1.0 - torch.logspace(low, high, true_units, dtype=dtype) / DF.LOG_PROB_SPAN
    rows = slice(1, 1 + true_units)
    first[rows, 0] = -1.0 / knots
    first[rows, 2] = 1.0
    # relu(q_j - v): input at most 1, and at least -1 (a LeakyReLU passes 1 % of a negative input)
    rows = slice(1 + true_units, hidden)
    first[rows, 1] = 1.0
    first[rows, 2] = -torch.linspace(_WRONG_KNOTS[0], _WRONG_KNOTS[1], wrong_units, dtype=dtype)

    middle = torch.eye(hidden, dtype=dtype).clamp_min(_EMPTY)
    middle[0, 1:] = _EMPTY**2
    last = torch.full((1, hidden), _EMPTY**2, dtype=dtype)
    last[0, 0] = DF.LOG_PROB_SPAN
    return [m.float() for m in [first, *(middle.clone() for _ in range(depth - 1)), last]]
