"""What a pairwise DLN's rows are made of: one class per feature family, found by name in :data:`FAMILIES`.

A row of the pairwise DLN is ``[a_y, a_j, 1, 0]``: the true class's and one wrong class's prediction, each in
``[0, 1]`` with 1 the most confident, and the pair's 1-vs-1 labels. A family says how ``a_y`` and ``a_j`` come
from the logits, and everything that follows from that:

- :meth:`FeatureFamily.first_layer`: the first layer's output on every row of every sample, for the exact MLP;
- :meth:`FeatureFamily.affine_first`: the first layer as an affine map of the coordinates ``(u, v)`` the fast
  path evaluates the DLN at;
- :meth:`FeatureFamily.coordinates` and :meth:`FeatureFamily.logit_grad`: those coordinates, and the chain
  rule from the DLN's slopes in them back to the logits;
- :meth:`FeatureFamily.u_edges` and :meth:`FeatureFamily.u_cell`: how the fast path's table cuts the ``u`` axis.

Adding a family is one new subclass and one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from dynaloss.settings import FEATURES

__all__ = [
    "DEFICIT_FLOOR",
    "FAMILIES",
    "LOGIT_SPAN",
    "LOG_PROB_SPAN",
    "Coordinates",
    "FeatureFamily",
    "SigmoidFeatures",
    "SoftmaxCoordinates",
    "SoftmaxFeatures",
    "feature_family",
    "logit_cell",
    "logit_edges",
]

# The softmax rows' true-class feature is 1 + log p_y / LOG_PROB_SPAN, clamped to [0, 1]: cross-entropy
# -log p_y is then linear in it up to LOG_PROB_SPAN nats (p_y >= 1.3e-14), which a bias-free LeakyReLU MLP
# represents exactly. Beyond, the feature is 0 and the gradient through it is cut.
LOG_PROB_SPAN = 32.0
# The table's sigmoid axes are cut uniformly in logit space over [-LOGIT_SPAN, LOGIT_SPAN]; beyond it (a
# sigmoid within 1.1e-7 of 0 or 1) is the end cell.
LOGIT_SPAN = 16.0
# The table's deficit axis (cross-entropy / LOG_PROB_SPAN) is logarithmic from this value to 1.
DEFICIT_FLOOR = 1e-9


@dataclass(frozen=True)
class Coordinates:
    """Where the rows of ``(M, C)`` logits fall, and what the chain rule back to the logits needs.

    Attributes:
        u: ``(M, 1)``: the true class's coordinate.
        v: ``(M, C)``: every class's coordinate (the true class's own row is left out by the caller).
        u_source: ``(M, 1)``: what the table's ``u`` axis is indexed by (:meth:`FeatureFamily.u_cell`).
        v_source: ``(M, C)``: what its ``v`` axis is indexed by (:func:`logit_cell`).
    """

    u: Tensor
    v: Tensor
    u_source: Tensor
    v_source: Tensor


@dataclass(frozen=True)
class SoftmaxCoordinates(Coordinates):
    """:class:`Coordinates` of softmax rows, with what their chain rule needs: ``log p_y`` ``(M, 1)`` and
    ``log p`` ``(M, C)``."""

    true_log_prob: Tensor
    log_probs: Tensor


class FeatureFamily(ABC):
    """How the rows' predictions come from the logits (see the module's doc); stateless, one instance each."""

    name: str

    @abstractmethod
    def first_layer(self, first: Tensor, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(true_term (M, H), probs (M, C))``: the first layer on row ``j`` is ``true_term + probs_j W[:, 1]``.

        ``first`` is the ``(H, 4)`` first layer; ``logits`` ``(M, C)`` and ``target`` ``(M,)`` class indices.
        Both are computed in ``first``'s dtype.
        """

    @abstractmethod
    def affine_first(self, first: Tensor) -> Tensor:
        """``(H, 3)``: the first layer as an affine map of ``(u, v)``: columns ``w_u``, ``w_v``, constant."""

    @abstractmethod
    def coordinates(self, logits: Tensor, index: Tensor) -> Coordinates:
        """The rows' coordinates for ``(M, C)`` logits whose classes are ``index`` ``(M, 1)``."""

    @abstractmethod
    def logit_grad(self, slope_u: Tensor, slope_v: Tensor, at: Coordinates, index: Tensor) -> Tensor:
        """``(M, C)``: the gradient in the logits of the sum of a sample's rows, from their slopes ``(M, C)``."""

    @abstractmethod
    def u_edges(self, grid: int) -> Tensor:
        """The ``grid + 1`` float64 edges of the table's ``u`` axis, from 0 to 1."""

    @abstractmethod
    def u_cell(self, source: Tensor, grid: int) -> Tensor:
        """The table's ``u`` cell (unclamped, real-valued) of :attr:`Coordinates.u_source`."""

    def wrong_allowance(self, least_u: Tensor, least_v: Tensor, u_end: Tensor) -> Tensor:
        """How much error the table may make in ``f_v`` over a square (``least_v``: its least ``|f_v|``).

        ``least_u`` is the square's least ``|f_u|`` and ``u_end`` its far ``u`` edge.
        """
        return least_v

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SigmoidFeatures(FeatureFamily):
    """The paper's rows: ``a_y = sigmoid(z_y)``, ``a_j = sigmoid(z_j)``; ``(u, v) = (a_y, a_j)``."""

    name = "sigmoid"

    def first_layer(self, first: Tensor, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.sigmoid(logits).to(first.dtype)
        true_prob = probs.gather(1, target[:, None].long())
        return true_prob * first[:, 0] + first[:, 2], probs

    def affine_first(self, first: Tensor) -> Tensor:
        return first[:, :3].clone()

    def coordinates(self, logits: Tensor, index: Tensor) -> Coordinates:
        v = torch.sigmoid(logits)
        return Coordinates(u=v.gather(1, index), v=v, u_source=logits.gather(1, index), v_source=logits)

    def logit_grad(self, slope_u: Tensor, slope_v: Tensor, at: Coordinates, index: Tensor) -> Tensor:
        pair = slope_v * at.v * (1 - at.v)  # d f / d (the wrong class's logit)
        return pair.scatter_add(1, index, slope_u.sum(1, keepdim=True) * at.u * (1 - at.u))

    def u_edges(self, grid: int) -> Tensor:
        return logit_edges(grid)

    def u_cell(self, source: Tensor, grid: int) -> Tensor:
        return logit_cell(source, grid)


class SoftmaxFeatures(FeatureFamily):
    """Rows that hold softmax cross-entropy: ``a_y = 1 - d`` with the *deficit* ``d = min(-log p_y, U) / U``, and
    ``a_j = sigmoid(z_j - z_y) = p_j / (p_y + p_j)``, with ``p = softmax(z)`` and ``U =`` :data:`LOG_PROB_SPAN`;
    ``(u, v) = (d, a_j)`` (docs/design-notes-core.md says why these).
    """

    name = "softmax"

    def first_layer(self, first: Tensor, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # in the first layer's dtype before the softmax: half-precision log-probabilities would be coarse
        logits = logits.to(first.dtype)
        index = target[:, None].long()
        true_log_prob = torch.log_softmax(logits, dim=-1).gather(1, index).clamp_min(-LOG_PROB_SPAN)
        probs = torch.sigmoid(logits - logits.gather(1, index))
        # a_y W0 + W2 with a_y = 1 - d = 1 + log p_y / U, formed without rounding 1 - d
        true_term = torch.addcmul(first[:, 0] + first[:, 2], true_log_prob, first[:, 0], value=1 / LOG_PROB_SPAN)
        return true_term, probs

    def affine_first(self, first: Tensor) -> Tensor:
        return torch.stack([-first[:, 0], first[:, 1], first[:, 0] + first[:, 2]], 1)  # a W0 + W2 with a = 1 - u

    def coordinates(self, logits: Tensor, index: Tensor) -> Coordinates:
        log_probs = torch.log_softmax(logits, 1)
        true_log_prob = log_probs.gather(1, index)
        u = true_log_prob.clamp_min(-LOG_PROB_SPAN) / -LOG_PROB_SPAN
        margin = logits - logits.gather(1, index)
        return SoftmaxCoordinates(u, torch.sigmoid(margin), u, margin, true_log_prob, log_probs)

    def logit_grad(self, slope_u: Tensor, slope_v: Tensor, at: Coordinates, index: Tensor) -> Tensor:
        assert isinstance(at, SoftmaxCoordinates)
        pair = slope_v * at.v * (1 - at.v)  # d f / d (the wrong class's margin)
        # d margin_j = d z_j - d z_y; d u = -(1/U) d log p_y = (p - onehot) / U, unless clamped.
        # p - onehot with the true class's entry as expm1(log p_y): exact where p_y rounds to 1
        shortfall = at.log_probs.exp().scatter_(1, index, torch.expm1(at.true_log_prob))
        total_u = slope_u.sum(1, keepdim=True)
        gain = torch.where(at.true_log_prob > -LOG_PROB_SPAN, total_u / LOG_PROB_SPAN, 0.0)
        return pair.scatter_add(1, index, -pair.sum(1, keepdim=True)).addcmul_(gain, shortfall)

    def u_edges(self, grid: int) -> Tensor:
        # uniform in log space from DEFICIT_FLOOR up, where a trained student's rows crowd
        floor = torch.zeros(1, dtype=torch.float64)
        return torch.cat([floor, torch.logspace(math.log10(DEFICIT_FLOOR), 0.0, grid, dtype=torch.float64)])

    def u_cell(self, source: Tensor, grid: int) -> Tensor:
        # cell 0 is [0, floor], cell k >= 1 ends at floor * step ** k
        log_floor = math.log(DEFICIT_FLOOR)
        return (source.log() - log_floor) / (-log_floor / (grid - 1)) + 1

    def wrong_allowance(self, least_u: Tensor, least_v: Tensor, u_end: Tensor) -> Tensor:
        # A wrong class's row also moves the logits through the deficit: its term is at least |f_u| v p_y / U
        # (as 1 - p_y >= p_j >= v_j p_y), against an error of at most sqrt(2) spread_v v, so the deficit's
        # slope vouches for the wrong class's too where f_v itself is negligible.
        least_p_true = torch.exp(-LOG_PROB_SPAN * u_end)
        return torch.maximum(least_v, least_u * least_p_true / (LOG_PROB_SPAN * math.sqrt(2)))


def logit_edges(grid: int) -> Tensor:
    """The ``grid + 1`` float64 edges of a sigmoid axis, uniform in logit space, the end cells reaching 0 and 1."""
    edges = torch.sigmoid(torch.linspace(-LOGIT_SPAN, LOGIT_SPAN, grid + 1, dtype=torch.float64))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def logit_cell(logit: Tensor, grid: int) -> Tensor:
    """The (unclamped, real-valued) cell of a sigmoid axis from the logit (or margin) it is the sigmoid of."""
    return (logit + LOGIT_SPAN) * (grid / (2 * LOGIT_SPAN))


# by name, in the order of dynaloss.settings.FEATURES
FAMILIES: Mapping[str, FeatureFamily] = MappingProxyType(
    {family.name: family for family in (SigmoidFeatures(), SoftmaxFeatures())}
)


def feature_family(features: object) -> FeatureFamily:
    """The family named ``features`` (one of :data:`dynaloss.settings.FEATURES`), else raise ``ValueError``."""
    family = FAMILIES.get(features) if isinstance(features, str) else None
    if family is None:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    return family
