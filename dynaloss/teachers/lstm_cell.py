"""``lstm_cell``: ``nn.LSTMCell``'s step over many rows at once, with a hand-written first-order backward.

``lstm_cell(x, h, c, cell)`` returns ``cell(x, (h, c))``: the new hidden state and memory of one LSTM step
for every row, with ``cell``'s weights and the gates in ``nn.LSTMCell``'s order (input, forget, cell, output).
Values and gradients (with respect to ``x``, ``h``, ``c`` and the cell's four tensors) equal
``nn.LSTMCell``'s up to float rounding. Gradients for ``h`` and ``c`` are computed only when they require
grad. The function is twice differentiable: under ``create_graph=True`` the backward recomputes the cell
with ordinary autograd operations, so second derivatives are those of ``nn.LSTMCell``'s formula.
The LSTM teacher applies it to every DLN coordinate. Why it is written this way, and what it saves:
docs/design-notes.md, "LSTM cell".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["lstm_cell"]


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, cell: nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """``cell(x, (h, c))``: the same gates in the same order (input, forget, cell, output), up to float rounding.

    Args:
        x: ``(P, input_size)``; h, c: ``(P, hidden_size)``.

    Returns:
        ``(h', c')``, each ``(P, hidden_size)``.
    """
    return _LSTMCellRows.apply(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)


class _LSTMCellRows(torch.autograd.Function):
    """The cell's autograd node: ``x (P, I)``, ``h, c (P, H)`` and the cell's tensors in; ``h', c' (P, H)`` out."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor]:
        hidden = h.shape[1]
        inputs = torch.cat([x, h], 1)
        gates = torch.addmm(b_ih + b_hh, inputs, torch.cat([w_ih, w_hh], dim=1).t())  # (P, 4H)
        gates[:, 2 * hidden : 3 * hidden] *= 2  # the cell gate's tanh(z) is 2 sigmoid(2z) - 1
        squashed = gates.sigmoid_()
        in_gate, forget_gate, cell_half, out_gate = squashed.split(hidden, 1)
        cell_gate = cell_half * 2 - 1
        c = c.contiguous()
        new_c = forget_gate * c + in_gate * cell_gate
        tanh_c = (new_c * 2).sigmoid_().mul_(2).sub_(1)
        new_h = out_gate * tanh_c
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, inputs, squashed, cell_gate, tanh_c)
        return new_h, new_c

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor | None, grad_c: Tensor | None) -> tuple[Tensor | None, ...]:
        x, h, c, w_ih, w_hh, b_ih, b_hh, inputs, squashed, cell_gate, tanh_c = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a graph of the gradient is wanted
            return _differentiable_backward(ctx.needs_input_grad, (x, h, c, w_ih, w_hh, b_ih, b_hh), grad_h, grad_c)
        hidden, input_size = c.shape[1], w_ih.shape[1]
        in_gate, forget_gate, _, out_gate = squashed.split(hidden, 1)
        grad_new_c = torch.zeros_like(c) if grad_c is None else grad_c.contiguous()
        grad_gates = torch.empty_like(squashed)  # (P, 4H), pre-activation gradients, gate by gate
        d_in, d_forget, d_cell, d_out = grad_gates.split(hidden, 1)
        if grad_h is not None:
            grad_h = grad_h.contiguous()
            torch.mul(grad_h, tanh_c, out=d_out)
            d_out.mul_(out_gate * (1 - out_gate))
            grad_new_c = grad_new_c + grad_h * out_gate * (1 - tanh_c * tanh_c)
        else:
            d_out.zero_()
        torch.mul(grad_new_c, cell_gate, out=d_in).mul_(in_gate * (1 - in_gate))
        torch.mul(grad_new_c, c, out=d_forget).mul_(forget_gate * (1 - forget_gate))
        torch.mul(grad_new_c, in_gate, out=d_cell).mul_(1 - cell_gate * cell_gate)
        needs = ctx.needs_input_grad
        grad_x = grad_h_prev = grad_c_prev = grad_w_ih = grad_w_hh = grad_bias = None
        if needs[0]:
            grad_x = grad_gates @ w_ih
        if needs[1]:
            grad_h_prev = grad_gates @ w_hh
        if needs[2]:
            grad_c_prev = grad_new_c * forget_gate
        if needs[3] or needs[4]:
            grad_w = grad_gates.t() @ inputs  # one product for both matrices
            grad_w_ih, grad_w_hh = grad_w[:, :input_size], grad_w[:, input_size:]
        if needs[5] or needs[6]:
            grad_bias = grad_gates.sum(0)
        return grad_x, grad_h_prev, grad_c_prev, grad_w_ih, grad_w_hh, grad_bias, grad_bias


def _differentiable_backward(
    needs: tuple[bool, ...], values: tuple[Tensor, ...], grad_h: Tensor | None, grad_c: Tensor | None
) -> tuple[Tensor | None, ...]:
    """The cell's vector-Jacobian product through ordinary autograd operations, so that it has a graph too."""
    wanted = [value for value, need in zip(values, needs) if need]
    outputs = _autograd_cell(*values)
    pairs = [(out, grad) for out, grad in zip(outputs, (grad_h, grad_c)) if grad is not None]
    grads = iter(
        torch.autograd.grad(
            [out for out, _ in pairs], wanted, [grad for _, grad in pairs], create_graph=True, allow_unused=True
        )
    )
    return tuple(next(grads) if need else None for need in needs)


def _autograd_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """The same cell as plain autograd operations (``nn.LSTMCell``'s formula)."""
    gates = torch.addmm(b_ih + b_hh, torch.cat([x, h], 1), torch.cat([w_ih, w_hh], dim=1).t())
    in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
    new_c = forget_gate.sigmoid() * c + in_gate.sigmoid() * cell_gate.tanh()
    return out_gate.sigmoid() * new_c.tanh(), new_c
