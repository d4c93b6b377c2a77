"""LSTMTeacher: the paper's coordinate-wise LSTM that turns a hypergradient into a DLN update."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dynaloss._checks import check_positive_float, check_positive_int
from dynaloss.teachers.base import Memory, TeacherModel
from dynaloss.teachers.lstm_cell import lstm_cell

__all__ = ["LSTMTeacher", "preprocess_gradient"]


def preprocess_gradient(grad: Tensor, k: float = 10.0) -> Tensor:
    r"""Scale-free encoding of each gradient coordinate (Andrychowicz et al., 2016).

    .. math::
        g \mapsto \begin{cases} (\log|g| / k,\ \mathrm{sign}\, g) & |g| \ge e^{-k} \\
        (-1,\ e^{k} g) & \text{otherwise} \end{cases}

    Args:
        grad: ``(P,)`` gradient coordinates.
        k: the cut-off exponent (default: ``10``).

    Returns:
        ``(P, 2)`` features.
    """
    large = grad.abs() >= math.exp(-k)
    # clamp keeps log finite on the branch that where() discards (a NaN there would poison its gradient)
    log_mag = torch.log(grad.abs().clamp_min(math.exp(-k))) / k
    first = torch.where(large, log_mag, torch.full_like(grad, -1.0))
    second = torch.where(large, torch.sign(grad), grad * math.exp(k))
    return torch.stack([first, second], dim=-1)


class LSTMTeacher(TeacherModel):
    """Four stacked ``nn.LSTMCell`` (``2 -> 64 -> 64 -> 64 -> 1``) applied to every DLN coordinate.

    Every DLN parameter is one row of the batch, so the teacher is independent of the DLN's size. Its
    output, the last cell's hidden state, lies in ``(-1, 1)``: ``dln_lr`` bounds each coordinate's change
    per round. The cells hold ``nn.LSTMCell`` parameters and are computed by
    :func:`~dynaloss.teachers.lstm_cell.lstm_cell` (a hand-written backward; twice differentiable), not by
    cuDNN's ``nn.LSTM``, which has no double backward.

    Args:
        hidden_size: width of the inner cells (default: ``64``).
        num_layers: number of stacked cells, the last of width 1 (default: ``4``).
        preprocess_k: the cut-off of :func:`preprocess_gradient` (default: ``10``).
    """

    def __init__(self, hidden_size: int = 64, num_layers: int = 4, preprocess_k: float = 10.0) -> None:
        super().__init__()
        check_positive_int(hidden_size, "hidden_size")
        check_positive_int(num_layers, "num_layers", minimum=2)
        self.preprocess_k = check_positive_float(preprocess_k, "preprocess_k")
        widths = [2] + [hidden_size] * (num_layers - 1) + [1]
        self.cells = nn.ModuleList(nn.LSTMCell(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self._widths = widths[1:]

    def initial_memory(self, num_coordinates: int, *, like: Tensor) -> Memory:
        memory = []
        for width in self._widths:
            zeros = like.new_zeros(num_coordinates, width)
            memory += [zeros, zeros.clone()]
        return tuple(memory)

    def forward(self, grad: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        x = preprocess_gradient(grad, self.preprocess_k).to(next(self.parameters()).dtype)
        new_memory: list[Tensor] = []
        for layer, cell in enumerate(self.cells):
            h, c = lstm_cell(x, memory[2 * layer], memory[2 * layer + 1], cell)  # type: ignore[arg-type]
            new_memory += [h, c]
            x = h
        return x.squeeze(-1), tuple(new_memory)
