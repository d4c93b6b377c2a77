"""A fixed pairwise DLN's loss with its logit gradient formed in the forward: exactly, or through a table.

What a student's step needs from a DLN that does not change is a function of two numbers per row,
``f(u, v)``: the true class's coordinate and one wrong class's (:mod:`dynaloss._features`). Two evaluators
give its value and slopes at every row:

- :class:`ExactPairs`: the MLP itself, in one forward-mode pass (:func:`surface_slopes`);
- :class:`PairSurface`: a table of the surface in affine pieces certified by interval arithmetic, each slope
  within ``tol`` (relative) of the MLP's, rows it cannot certify computed exactly.

:func:`fast_pairwise_loss` turns either's values and slopes into the per-sample loss and, in the same pass,
its gradient in the logits (the features' chain rule, closed-form), so the backward is one multiplication.
It differentiates in the logits only, once. :class:`dynaloss.PairwiseDLN` takes the table for calls of at
least :data:`TABLE_ROWS` rows (``B x C``) and the exact pass below. docs/design-notes-core.md says how the
table is built and where it pays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dynaloss._features import Coordinates, FeatureFamily, logit_cell, logit_edges

__all__ = ["TABLE_ROWS", "ExactPairs", "PairSurface", "fast_pairwise_loss", "surface_slopes"]

# A call of at least this many rows (B x C) goes through the table, a smaller one through the exact pass
# (benchmarks/fast_path.py; docs/results.md, "The fast path").
TABLE_ROWS = 25_000

# The table's cells per axis (it holds a 4-byte entry per cell), the side of the square blocks it certifies
# (the largest square one entry stands for), how many rows must land in a block before it is certified, the
# smallest square it splits down to then, how many uncertified rows make it certify again down to single
# cells, and the certification tolerance (per slope, relative to its least size over the square).
_GRID = 1024
_BLOCK = 16
_CERTIFY_AFTER = 256
_MIN_SIDE = 4
_REFINE_AFTER = 4096
_TOLERANCE = 1e-5

# A cell's status, the table's last column: ordered so that the largest in a batch says what it needs.
# (_COARSE: exact-only in a square of _MIN_SIDE, to be certified finer; _EXACT: exact-only for good)
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


class ExactPairs:
    """The value and slopes of a fixed DLN at every row, exactly: the MLP in one forward-mode pass.

    Args:
        matrices: the MLP's matrices as the loss computes with them (constrained and pinned, if monotone),
            in the dtype to compute in; they are read, not copied.
        family: what the rows are made of.
    """

    def __init__(self, matrices: Sequence[Tensor], family: FeatureFamily) -> None:
        self.family = family
        self.first = family.affine_first(matrices[0].detach())
        self.rest = [matrix.detach() for matrix in matrices[1:]]

    def rows(self, at: Coordinates, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, f_u, f_v)`` at every row ``(M, C)``, 0 at each sample's own class (``index``, ``(M, 1)``)."""
        rows = surface_slopes(self.first, self.rest, at.u.expand_as(at.v).reshape(-1), at.v.reshape(-1))
        wrong = torch.ones_like(at.v, dtype=torch.bool).scatter_(1, index, False)
        value, slope_u, slope_v = (rows.view(*at.v.shape, 3) * wrong[..., None]).unbind(-1)
        return value, slope_u, slope_v


class PairSurface:
    """The certified-affine table of one fixed pairwise DLN, on one device and dtype.

    Cells are certified lazily, a block of them at once when rows keep landing in the block
    (:meth:`evaluate`), so a table costs only the part of the square a student's rows visit. Per row each slope
    is within ``tol`` of the MLP's, relative, and the value within the slopes' error times the square's size.
    It holds its own copy of the network: a DLN that changes needs a new table.

    Args:
        matrices: the MLP's matrices as the loss computes with them (constrained and pinned, if monotone).
        family: what the rows are made of; it decides how the ``u`` axis is cut.
        grid: cells per axis, a multiple of 16 (default: ``1024``).
        tol: the certification tolerance (default: ``1e-5``).

    Raises:
        ValueError: ``grid`` is not a multiple of 16.
    """

    def __init__(
        self, matrices: Sequence[Tensor], family: FeatureFamily, *, grid: int = _GRID, tol: float = _TOLERANCE
    ) -> None:
        if grid % _BLOCK:
            raise ValueError(f"grid must be a multiple of {_BLOCK}, got {grid}")
        first = matrices[0].detach()
        self.family, self.grid, self.tol = family, grid, tol
        self.first = family.affine_first(first)
        self.rest = [matrix.detach().clone() for matrix in matrices[1:]]
        dtype, device = first.dtype, first.device
        self.u_edges = family.u_edges(grid).to(device, dtype)
        self.v_edges = logit_edges(grid).to(device, dtype)
        # What a row reads, with two gathers: its cell's entry in ``rows``, then that row of ``pool``: the value
        # at the cell's corner, the slopes, the corner, and the status. Pool row 0 is an empty cell (zeros,
        # affine), where a sample's own class is sent so that its row adds nothing without a mask (cell id
        # ``grid ** 2``); row 1 stands for every cell not certified yet.
        self.pool = torch.zeros(2, 6, dtype=dtype, device=device)
        self.pool[1, _STATUS] = _UNKNOWN
        self.rows_of = torch.ones(grid * grid + 1, dtype=torch.int32, device=device)
        # per block: the rows the table could not answer so far, and how far it is certified (0 not, 1 to
        # squares of _MIN_SIDE, 2 to single cells)
        self.visits = torch.zeros((grid // _BLOCK) ** 2, dtype=torch.int32, device=device)
        self.depth = torch.zeros((grid // _BLOCK) ** 2, dtype=torch.int8, device=device)
        self.rows_of[-1] = 0
        self.empty_cell = grid * grid

    def rows(self, at: Coordinates, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, f_u, f_v)`` at every row ``(M, C)``, 0 at each sample's own class (``index``, ``(M, 1)``)."""
        # the sample's own class goes to the empty cell: its row is computed with the others and adds nothing
        cell = self.cell(at.u_source, at.v_source).scatter_(1, index, self.empty_cell)
        return self.evaluate(at.u, at.v, cell)

    def cell(self, u_source: Tensor, v_source: Tensor) -> Tensor:
        """The cells (``u_cell * grid + v_cell``) of the rows whose axes' sources are given (they broadcast)."""
        u_cell = self.family.u_cell(u_source, self.grid).clamp(0, self.grid - 1).long()
        v_cell = logit_cell(v_source, self.grid).clamp(0, self.grid - 1).long()
        return torch.add(v_cell, u_cell, alpha=self.grid)

    def evaluate(self, u: Tensor, v: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, f_u, f_v)`` at the rows ``(u, v)`` in cells ``cell`` (``u_cell * grid + v_cell``), any shape.

        Rows in certified cells are read from the table, the others computed exactly; ``u`` may broadcast.
        A block is certified once 256 rows have landed in it (until then they are exact).
        """
        stored = self.pool[self.rows_of[cell]]
        worst = int(stored[..., _STATUS].max())  # one read-back decides what else is needed
        if worst >= _COARSE:
            # Rows the table cannot answer yet are counted per block: a block is certified once _CERTIFY_AFTER of
            # them have landed in it, and again to single cells once _REFINE_AFTER have.
            blocks = self._block_of(cell[stored[..., _STATUS] >= _COARSE])
            self.visits.index_add_(0, blocks, torch.ones_like(blocks, dtype=self.visits.dtype))
            counts, depth = self.visits[blocks], self.depth[blocks]
            for level, (after, side) in enumerate(((_CERTIFY_AFTER, _MIN_SIDE), (_REFINE_AFTER, 1))):
                ready = torch.unique(blocks[(counts >= after) & (depth == level)])
                if len(ready):
                    self._certify_blocks(ready, side, _EXACT if side == 1 else _COARSE)
                    self.depth[ready] = level + 1
                    stored = self.pool[self.rows_of[cell]]
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
        per_axis = self.grid // _BLOCK
        return cells // self.grid // _BLOCK * per_axis + cells % self.grid // _BLOCK

    def _certify_blocks(self, blocks: Tensor, min_side: int, leftover: int) -> None:
        """Certify ``blocks`` as a quadtree: a square that holds one affine piece is stored as one entry for
        all its cells, a square that does not is split in four, down to squares of ``min_side`` cells, which
        are left exact-only (status ``leftover``). The cost follows the length of the kinks through a block, not its
        area."""
        per_axis = self.grid // _BLOCK
        u_start, v_start, side = blocks // per_axis * _BLOCK, blocks % per_axis * _BLOCK, _BLOCK
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
        self.rows_of[(u_cell * self.grid + v_cell).reshape(-1)] = entry[:, None].expand(-1, side * side).reshape(-1)

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
        # for the slope itself, so each is certified relative to its own size (the family may allow more).
        allowed_v = self.family.wrong_allowance(least[:, 0], least[:, 1], u1)
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


Evaluator = ExactPairs | PairSurface


class _FastPairwiseLoss(torch.autograd.Function):
    """The pairwise DLN loss of ``(M, C)`` logits, per sample or averaged, its logit gradient formed in the forward."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, pairs: Evaluator, mean: bool) -> Tensor:  # type: ignore[override]
        loss, grad = _loss_and_grad(pairs, logits.to(pairs.first.dtype), target)
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


def fast_pairwise_loss(pairs: Evaluator, logits: Tensor, target: Tensor, *, mean: bool = False) -> Tensor:
    """The mean of the DLN over each sample's ``C - 1`` wrong-class rows, ``(M,)``, evaluated by ``pairs``.

    Args:
        pairs: the evaluator (:class:`ExactPairs` or :class:`PairSurface`); its dtype is the one computed in.
        logits: ``(M, C)``.
        target: ``(M,)`` class indices, every one in ``[0, C)``.
        mean: return the mean over the samples (a scalar) instead (default: ``False``).

    Returns:
        ``(M,)`` or a scalar, in ``pairs``' dtype; differentiable once, in ``logits`` only.
    """
    return _FastPairwiseLoss.apply(logits, target, pairs, mean)  # type: ignore[no-any-return]


def _loss_and_grad(pairs: Evaluator, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss (M,), d loss / d logits (M, C))``: the rows' values and slopes, the features' chain rule."""
    index = target[:, None].long()
    at = pairs.family.coordinates(logits, index)
    value, slope_u, slope_v = pairs.rows(at, index)
    scale = logits.shape[1] - 1
    return value.sum(1) / scale, pairs.family.logit_grad(slope_u, slope_v, at, index) / scale
