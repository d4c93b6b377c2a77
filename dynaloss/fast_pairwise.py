"""A fixed pairwise DLN at about the cost of cross-entropy: its surface in certified affine pieces.

Between two teacher rounds the DLN does not change, and what the student's step needs from it is a function
of two numbers per row, ``f(u, v)``: the true class's feature and one wrong class's (the constant features
are fixed). The MLP is piecewise affine in them (LeakyReLU), so most small rectangles of the ``(u, v)``
square hold a single affine piece. :class:`PairSurface` cuts the square into a grid (uniform in logit space,
where the rows are, so saturated sigmoids get cells of their own; logarithmic in the cross-entropy for
softmax features), and for every block of cells that rows keep landing in it *certifies* once, by interval
arithmetic through the network and as a quadtree, which squares have slopes everywhere within ``tol`` of the
slopes at their centre, relative to their size. A certified square answers with stored numbers (the value
at its corner and the two slopes); a row in a cell that cannot be certified (a kink of a unit that matters
runs through it) is computed exactly. So the error is bounded *everywhere*, not measured at samples: per
row each slope is within ``tol`` of the MLP's, relative (see :meth:`PairSurface._certify` for the one
exception), and the value within the slopes' error times the square's size.

:func:`fast_pairwise_loss` turns the rows' values and slopes into the per-sample loss and, in the same pass,
its gradient with respect to the logits (the features' derivatives are closed-form), so the backward is one
multiplication. It differentiates in the logits only, once: a caller that needs the DLN's parameters'
gradient, or a second derivative (a teacher's unroll), takes the exact MLP instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dynaloss.functional import LOG_PROB_SPAN

__all__ = [
    "BLOCK",
    "CERTIFY_AFTER",
    "DEFICIT_FLOOR",
    "GRID",
    "LOGIT_SPAN",
    "MIN_SIDE",
    "REFINE_AFTER",
    "SMALL_BATCH_ROWS",
    "TOLERANCE",
    "PairSurface",
    "fast_pairwise_loss",
    "surface_slopes",
]

# Cells per axis. Finer leaves fewer rows to the exact path near kinks (and holds a 4-byte entry per cell:
# 4 MiB at 1024).
GRID = 1024
# The softmax features' deficit axis (cross-entropy / 32) is logarithmic from this value (3.2e-8 nats) to 1.
DEFICIT_FLOOR = 1e-9
# Cells are certified in square blocks of this side, split where they hold a kink: the largest square one
# entry stands for (its value's error bound grows with its size).
BLOCK = 16
# A block is certified once this many rows have landed in it (they are computed exactly until then), with
# squares split no smaller than MIN_SIDE cells (a kink through one leaves its rows exact): that costs up to
# some 250 exact rows' work, so a block a batch barely touches is not worth it.
CERTIFY_AFTER = 256
MIN_SIDE = 4
# ... and certified again down to single cells once this many rows it could not answer have landed in it.
REFINE_AFTER = 4096
# Up to this many rows (B x C) a call skips the table: its fixed cost (a few gathers, a read-back, the
# bookkeeping of uncertified rows) is then more than the MLP's own on every row, exactly (measured on a
# 2-core CPU: the two cross at about 800 rows for the CE start, about 5,000 for the warm one).
SMALL_BATCH_ROWS = 1024
# A sigmoid axis is cut uniformly in logit space over [-LOGIT_SPAN, LOGIT_SPAN]; beyond it (a sigmoid within
# 1.1e-7 of 0 or 1) is the end cell.
LOGIT_SPAN = 16.0
# A square is certified when each slope varies over it by at most this share of its least size there.
TOLERANCE = 1e-5

# A cell's status, the table's last column: ordered so that the largest in a batch says what it needs.
# (_COARSE: exact-only in a square of MIN_SIDE, to be certified finer; _EXACT: exact-only for good)
_AFFINE, _EXACT, _COARSE, _UNKNOWN = 0, 1, 2, 3
_STATUS = 5


def surface_slopes(first: Tensor, rest: Sequence[Tensor], u: Tensor, v: Tensor, negative_slope: float = 0.01) -> Tensor:
    """The MLP's exact value and partial derivatives at ``(u, v)``, in one forward-mode pass.

    Args:
        first: ``(H, 3)``: the first layer as an affine map of ``(u, v)``: columns ``w_u``, ``w_v``, constant.
        rest: the later layer matrices.
        u, v: ``(R,)`` coordinates.

    Returns:
        ``(R, 3)``: ``[f, df/du, df/dv]`` per row.
    """
    hidden = torch.addcmul(torch.addcmul(first[:, 2], u[:, None], first[:, 0]), v[:, None], first[:, 1])
    # value and the two tangents, stacked so that each layer is one matrix product
    tangents = first[:, :2].T.unsqueeze(1).expand(2, len(u), -1)
    state = torch.cat([hidden.unsqueeze(0), tangents], 0)  # (3, R, H)
    for matrix in rest:
        slope = torch.where(state[0] > 0, 1.0, negative_slope).to(state.dtype)
        state = (state * slope) @ matrix.T
    return state.squeeze(-1).T


class PairSurface:
    """The certified-affine table of one fixed pairwise DLN, on one device and dtype (see the module's doc).

    Cells are certified lazily, a block of ``BLOCK x BLOCK`` of them at once when rows keep landing in the
    block (:meth:`evaluate`, :meth:`_certify_blocks`), so a table costs only the part of the square a
    student's rows visit. It holds its own copy of the network: a DLN that changes needs a new table.

    Args:
        weights: the MLP's matrices as the loss computes with them (constrained and pinned, if monotone).
        features: ``'sigmoid'`` (``u = sigmoid(z_y)``, ``v = sigmoid(z_j)``) or ``'softmax'`` (``u`` the
            deficit ``min(-log p_y, U) / U``, the row's first feature being ``1 - u``; ``v = sigmoid(z_j - z_y)``).
        grid: cells per axis, a multiple of :data:`BLOCK`.
        tol: the certification tolerance (see :data:`TOLERANCE`).
    """

    def __init__(self, weights: Sequence[Tensor], features: str, *, grid: int = GRID, tol: float = TOLERANCE) -> None:
        if grid % BLOCK:
            raise ValueError(f"grid must be a multiple of {BLOCK}, got {grid}")
        first = weights[0].detach()
        if features == "softmax":  # a W0 + W2 with a = 1 - u
            self.first = torch.stack([-first[:, 0], first[:, 1], first[:, 0] + first[:, 2]], 1)
        else:
            self.first = first[:, :3].clone()
        self.rest = [matrix.detach().clone() for matrix in weights[1:]]
        self.features, self.grid, self.tol = features, grid, tol
        dtype, device = first.dtype, first.device
        logit_edges = torch.sigmoid(torch.linspace(-LOGIT_SPAN, LOGIT_SPAN, grid + 1, dtype=torch.float64))
        logit_edges[0], logit_edges[-1] = 0.0, 1.0
        # the deficit's axis is cut uniformly in log space from DEFICIT_FLOOR up, where a trained student's
        # rows crowd (a cross-entropy of 1e-6 nats and one of 1e-3 are far apart in what the DLN does)
        deficit_edges = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                torch.logspace(math.log10(DEFICIT_FLOOR), 0.0, grid, dtype=torch.float64),
            ]
        )
        self._log_floor, self._log_step = math.log(DEFICIT_FLOOR), -math.log(DEFICIT_FLOOR) / (grid - 1)
        self.u_edges = (deficit_edges if features == "softmax" else logit_edges).to(device, dtype)
        self.v_edges = logit_edges.to(device, dtype)
        # What a row reads, with two gathers: its cell's entry in ``rows``, then that row of ``pool``: the value
        # at the cell's corner, the slopes, the corner, and the status. Pool row 0 is an empty cell (zeros,
        # affine), where a sample's own class is sent so that its row adds nothing without a mask (cell id
        # ``grid ** 2``); row 1 stands for every cell not certified yet.
        self.pool = torch.zeros(2, 6, dtype=dtype, device=device)
        self.pool[1, _STATUS] = _UNKNOWN
        self.rows = torch.ones(grid * grid + 1, dtype=torch.int32, device=device)
        # per block: the rows the table could not answer so far, and how far it is certified (0 not, 1 to
        # squares of MIN_SIDE, 2 to single cells)
        self.visits = torch.zeros((grid // BLOCK) ** 2, dtype=torch.int32, device=device)
        self.depth = torch.zeros((grid // BLOCK) ** 2, dtype=torch.int8, device=device)
        self.rows[-1] = 0
        self.empty_cell = grid * grid

    def u_index(self, source: Tensor) -> Tensor:
        """Cell column of the ``u`` axis from its source: the true logit (sigmoid) or the deficit (softmax)."""
        if self.features == "softmax":  # cell 0 is [0, floor], cell k >= 1 ends at floor * step ** k
            scaled = (source.log() - self._log_floor) / self._log_step + 1
        else:
            scaled = (source + LOGIT_SPAN) * (self.grid / (2 * LOGIT_SPAN))
        return scaled.clamp(0, self.grid - 1).long()

    def v_index(self, logit: Tensor) -> Tensor:
        """Cell row of the ``v`` axis from the wrong class's logit (sigmoid) or margin ``z_j - z_y`` (softmax)."""
        return ((logit + LOGIT_SPAN) * (self.grid / (2 * LOGIT_SPAN))).clamp(0, self.grid - 1).long()

    def evaluate(self, u: Tensor, v: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, f_u, f_v)`` at the rows ``(u, v)`` in cells ``cell`` (``u_cell * grid + v_cell``), any shape.

        Rows in certified cells are read from the table, the others computed exactly; ``u`` may broadcast.
        A block is certified once :data:`CERTIFY_AFTER` rows have landed in it (until then they are exact):
        certifying costs about as much as that many exact rows, so a block is certified when it is in use,
        not when a single row passes by.
        """
        if cell.numel() <= SMALL_BATCH_ROWS:  # the MLP itself, in one forward-mode pass, costs less here
            rows = surface_slopes(self.first, self.rest, u.expand_as(v).reshape(-1), v.reshape(-1))
            value, slope_u, slope_v = (rows.view(*v.shape, 3) * (cell != self.empty_cell)[..., None]).unbind(-1)
            return value, slope_u, slope_v
        stored = self.pool[self.rows[cell]]
        worst = int(stored[..., _STATUS].max())  # one read-back decides what else is needed
        if worst >= _COARSE:
            # Rows the table cannot answer yet are counted per block: a block is certified once CERTIFY_AFTER of
            # them have landed in it, and again to single cells once REFINE_AFTER have (its kinks then cost
            # more exact rows than finer squares would cost to certify).
            blocks = self._block_of(cell[stored[..., _STATUS] >= _COARSE])
            self.visits.index_add_(0, blocks, torch.ones_like(blocks, dtype=self.visits.dtype))
            counts, depth = self.visits[blocks], self.depth[blocks]
            for level, (after, side) in enumerate(((CERTIFY_AFTER, MIN_SIDE), (REFINE_AFTER, 1))):
                ready = torch.unique(blocks[(counts >= after) & (depth == level)])
                if len(ready):
                    self._certify_blocks(ready, side, _EXACT if side == 1 else _COARSE)
                    self.depth[ready] = level + 1
                    stored = self.pool[self.rows[cell]]
        corner_value, slope_u, slope_v, u0, v0, status = stored.unbind(-1)
        value = torch.addcmul(corner_value, slope_u, u - u0).addcmul_(slope_v, v - v0)
        if worst != _AFFINE:
            exact = status != _AFFINE
            if bool(exact.any()):
                rows = surface_slopes(self.first, self.rest, u.expand_as(v)[exact], v[exact])
                value, slope_u, slope_v = value.clone(), slope_u.clone(), slope_v.clone()
                value[exact], slope_u[exact], slope_v[exact] = rows.unbind(1)
        return value, slope_u, slope_v

    def _block_of(self, cells: Tensor) -> Tensor:
        per_axis = self.grid // BLOCK
        return cells // self.grid // BLOCK * per_axis + cells % self.grid // BLOCK

    def _certify_blocks(self, blocks: Tensor, min_side: int, leftover: int) -> None:
        """Certify ``blocks`` as a quadtree: a square that holds one affine piece is stored as one entry for
        all its cells, a square that does not is split in four, down to squares of ``min_side`` cells, which
        are left exact-only (status ``leftover``). The cost follows the length of the kinks through a block, not its
        area."""
        per_axis = self.grid // BLOCK
        u_start, v_start, side = blocks // per_axis * BLOCK, blocks % per_axis * BLOCK, BLOCK
        while len(u_start):
            entries, affine = self._certify(u_start, v_start, side, leftover)
            done = affine if side > min_side else torch.ones_like(affine)
            self._store(u_start[done], v_start[done], side, entries[done])
            half, (u_start, v_start) = side // 2, (u_start[~done], v_start[~done])
            quadrants = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=blocks.device) * half
            u_start = (u_start[:, None] + quadrants[:, 0]).reshape(-1)
            v_start = (v_start[:, None] + quadrants[:, 1]).reshape(-1)
            side = half

    def _store(self, u_start: Tensor, v_start: Tensor, side: int, entries: Tensor) -> None:
        """Point every cell of the squares at its square's new entry in the pool."""
        first_row = len(self.pool)
        self.pool = torch.cat([self.pool, entries])
        offsets = torch.arange(side, device=u_start.device)
        u_cell = (u_start[:, None, None] + offsets[:, None]).expand(-1, side, side)
        v_cell = (v_start[:, None, None] + offsets).expand(-1, side, side)
        entry = torch.arange(first_row, first_row + len(entries), dtype=torch.int32, device=u_start.device)
        self.rows[(u_cell * self.grid + v_cell).reshape(-1)] = entry[:, None].expand(-1, side * side).reshape(-1)

    def _certify(self, u_start: Tensor, v_start: Tensor, side: int, leftover: int) -> tuple[Tensor, Tensor]:
        """The table entries of the squares of ``side`` cells at ``(u_start, v_start)``, and which are affine.

        An entry is ``[f at the corner, f_u and f_v at the centre, the corner, status]``: status 0 (affine
        within the tolerance) or ``leftover`` (exact-only).
        """
        u0, u1 = self.u_edges[u_start], self.u_edges[u_start + side]
        v0, v1 = self.v_edges[v_start], self.v_edges[v_start + side]
        low, high = _first_layer_bounds(self.first, u0, u1, v0, v1)
        slope_low = slope_high = self.first[:, :2].T.expand(len(u0), 2, -1)  # (k, 2, H)
        for matrix in self.rest:
            # LeakyReLU is increasing and its slope is in [0.01, 1]: both bounds follow from the input's
            lo_act, hi_act = F.leaky_relu(low, 0.01), F.leaky_relu(high, 0.01)
            # (>= : a unit at 0 only on the cell's edge is active inside it; its kink is the edge)
            gain_low = torch.where(low >= 0, 1.0, 0.01).to(low.dtype)[:, None]
            gain_high = torch.where(high > 0, 1.0, 0.01).to(low.dtype)[:, None]
            slope_low, slope_high = (
                torch.minimum(gain_low * slope_low, gain_high * slope_low),
                torch.maximum(gain_low * slope_high, gain_high * slope_high),
            )
            low, high = _interval_product(lo_act, hi_act, matrix)
            slope_low, slope_high = _interval_product(slope_low, slope_high, matrix)
        slope_low, slope_high = slope_low.squeeze(-1), slope_high.squeeze(-1)  # (k, 2): f_u, f_v anywhere
        spread = slope_high - slope_low
        least = torch.where(slope_low * slope_high > 0, torch.minimum(slope_low.abs(), slope_high.abs()), 0.0)
        # Each slope reaches the logits through its feature's derivative, the same factor for the error as
        # for the slope itself, so each is certified relative to its own size. With softmax features a
        # wrong class's row also moves the logits through the deficit: its term is at least
        # |f_u| v p_y / U (as 1 - p_y >= p_j >= v_j p_y), against an error of at most sqrt(2) spread_v v,
        # so the deficit's slope vouches for the wrong class's too where f_v itself is negligible.
        allowed_v = least[:, 1]
        if self.features == "softmax":
            least_p_true = torch.exp(-LOG_PROB_SPAN * u1)
            allowed_v = torch.maximum(allowed_v, least[:, 0] * least_p_true / (LOG_PROB_SPAN * math.sqrt(2)))
        affine = (spread[:, 0] <= self.tol * least[:, 0]) & (spread[:, 1] <= self.tol * allowed_v)
        corner = surface_slopes(self.first, self.rest, u0, v0)
        centre = surface_slopes(self.first, self.rest, (u0 + u1) / 2, (v0 + v1) / 2)
        status = torch.where(affine, _AFFINE, leftover).to(corner.dtype)
        return torch.stack([corner[:, 0], centre[:, 1], centre[:, 2], u0, v0, status], 1), affine

    def certified_share(self) -> float:
        """The share of the certified cells that are affine, not exact-only (for reports and tests)."""
        status = self.pool[2:, _STATUS]
        return float((status == _AFFINE).sum() / max(len(status), 1))


def _interval_product(low: Tensor, high: Tensor, matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of ``x @ matrix.T`` for every ``x`` between ``low`` and ``high`` (elementwise)."""
    positive = matrix.clamp_min(0).T
    if bool((matrix >= 0).all()):  # a monotone DLN's later layers: half the work
        return low @ positive, high @ positive
    negative = matrix.clamp_max(0).T
    return low @ positive + high @ negative, high @ positive + low @ negative


def _first_layer_bounds(first: Tensor, u0: Tensor, u1: Tensor, v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor]:
    """Exact bounds of the first layer's outputs over the cells ``[u0, u1] x [v0, v1]``: ``(k, H)`` each."""
    wu, wv, const = first[:, 0], first[:, 1], first[:, 2]
    at_u0, at_u1 = u0[:, None] * wu, u1[:, None] * wu
    at_v0, at_v1 = v0[:, None] * wv, v1[:, None] * wv
    low = const + torch.minimum(at_u0, at_u1) + torch.minimum(at_v0, at_v1)
    high = const + torch.maximum(at_u0, at_u1) + torch.maximum(at_v0, at_v1)
    return low, high


class _FastPairwiseLoss(torch.autograd.Function):
    """The pairwise DLN loss of ``(M, C)`` logits, per sample or averaged, its logit gradient formed in the forward."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, surface: PairSurface, mean: bool) -> Tensor:  # type: ignore[override]
        loss, grad = _loss_and_grad(surface, logits.to(surface.first.dtype), target)
        if mean:
            loss, grad = loss.mean(), grad.div_(len(loss))
        ctx.save_for_backward(grad)
        ctx.logits_dtype, ctx.mean = logits.dtype, mean
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: its result would silently lack the second derivative
            raise RuntimeError(
                "PairwiseDLN's fast path is differentiable once; for a second derivative (create_graph=True) "
                "build the DLN with fast=False"
            )
        (grad,) = ctx.saved_tensors
        scaled = grad * grad_loss if ctx.mean else grad * grad_loss[:, None]
        return scaled.to(ctx.logits_dtype), None, None, None


def fast_pairwise_loss(surface: PairSurface, logits: Tensor, target: Tensor, *, mean: bool = False) -> Tensor:
    """The mean of the DLN over each sample's ``C - 1`` wrong-class rows, ``(M,)``, through ``surface``.

    With ``mean=True``, their mean over the samples (a scalar). Differentiable once, in ``logits`` only.
    Args as :func:`dynaloss.functional.pairwise_mean_loss`; every target must be a class index.
    """
    return _FastPairwiseLoss.apply(logits, target, surface, mean)  # type: ignore[no-any-return]


def _loss_and_grad(surface: PairSurface, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss (M,), d loss / d logits (M, C))``: the rows through the surface, the features' chain rule by hand."""
    num_classes = logits.shape[1]
    index = target[:, None].long()
    true_logit = logits.gather(1, index)
    if surface.features == "softmax":
        log_probs = torch.log_softmax(logits, 1)
        true_log_prob = log_probs.gather(1, index)
        u = true_log_prob.clamp_min(-LOG_PROB_SPAN) / -LOG_PROB_SPAN  # the deficit, (M, 1)
        u_cell = surface.u_index(u)
        margin = logits - true_logit
        v, v_cell = torch.sigmoid(margin), surface.v_index(margin)
    else:
        v = torch.sigmoid(logits)
        u, u_cell, v_cell = v.gather(1, index), surface.u_index(true_logit), surface.v_index(logits)
    # the sample's own class goes to the empty cell: its row is computed with the others and adds nothing
    cell = torch.add(v_cell, u_cell, alpha=surface.grid).scatter_(1, index, surface.empty_cell)
    value, slope_u, slope_v = surface.evaluate(u, v, cell)
    loss = value.sum(1) / (num_classes - 1)
    pair = slope_v * v * (1 - v)  # d f / d (the wrong class's logit or margin)
    total_u = slope_u.sum(1, keepdim=True)
    if surface.features == "softmax":
        # d margin_j = d z_j - d z_y; d u = -(1/U) d log p_y = (p - onehot) / U, unless clamped.
        # p - onehot with the true class's entry as expm1(log p_y): exact where p_y rounds to 1
        shortfall = log_probs.exp().scatter_(1, index, torch.expm1(true_log_prob))
        gain = torch.where(true_log_prob > -LOG_PROB_SPAN, total_u / LOG_PROB_SPAN, 0.0)
        grad = pair.scatter_add(1, index, -pair.sum(1, keepdim=True)).addcmul_(gain, shortfall)
    else:
        grad = pair.scatter_add(1, index, total_u * u * (1 - u))
    return loss, grad / (num_classes - 1)
