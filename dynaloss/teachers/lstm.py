"""LSTMTeacher: the paper's coordinate-wise LSTM that turns a hypergradient into a DLN update."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss._checks import check_positive_float, check_positive_int
from dynaloss.teachers.base import Memory, TeacherModel
from dynaloss.teachers.lstm_cell import lstm_cell

__all__ = ["LSTMTeacher", "preprocess_gradient"]


def preprocess_gradient(grad: Tensor, k: float = 10.0, eps: float = 0.0) -> Tensor:
    r"""Scale-free encoding of each gradient coordinate (Andrychowicz et al., 2016).

    .. math::
        g \mapsto \begin{cases} (\log(|g| + \epsilon) / k,\ \mathrm{sign}\, g) & |g| \ge e^{-k} \\
        (-1,\ e^{k} g) & \text{otherwise} \end{cases}

    Args:
        grad: ``(P,)`` gradient coordinates.
        k: the cut-off exponent (default: ``10``).
        eps: added to ``|g|`` inside the logarithm: ``0`` as in Andrychowicz et al., ``1e-8`` as in the
            L2T-DLN authors' code (at most 2.2e-5 apart in the first feature) (default: ``0``).

    Returns:
        ``(P, 2)`` features.
    """
    large = grad.abs() >= math.exp(-k)
    # clamp keeps log finite on the branch that where() discards (a NaN there would poison its gradient)
    log_mag = torch.log(grad.abs().clamp_min(math.exp(-k)) + eps) / k
    first = torch.where(large, log_mag, torch.full_like(grad, -1.0))
    second = torch.where(large, torch.sign(grad), grad * math.exp(k))
    return torch.stack([first, second], dim=-1)


class LSTMTeacher(TeacherModel):
    r"""Four stacked ``nn.LSTMCell`` (``2 -> 64 -> 64 -> 64 -> 1``) applied to every DLN coordinate.

    Every DLN parameter is one row of the batch, so the teacher is independent of the DLN's size. Its
    output, the last cell's hidden state, lies in ``(-1, 1)``: ``dln_lr`` bounds each coordinate's change
    per round. The cells hold ``nn.LSTMCell`` parameters and are computed by
    :func:`~dynaloss.teachers.lstm_cell.lstm_cell` (a hand-written backward; twice differentiable), not by
    cuDNN's ``nn.LSTM``, which has no double backward.

    Args:
        hidden_size: width of the inner cells (default: ``64``).
        num_layers: number of stacked cells, the last of width 1 (default: ``4``).
        preprocess_k: the cut-off of :func:`preprocess_gradient` (default: ``10``).
        preprocess_eps: the ``eps`` of :func:`preprocess_gradient` (default: ``0``; the authors' code: ``1e-8``).
        output_sign: ``+1``: the update direction is the last cell's hidden state, and the DLN moves by
            :math:`\phi' = \phi + \gamma T` (the paper's Eq. 3); ``-1``: its negation, so
            :math:`\phi' = \phi - \gamma T` (the authors' code). The two are one family (negating the last
            cell's output weights and biases maps one to the other), but the same weights give opposite
            updates (default: ``+1``).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 4,
        preprocess_k: float = 10.0,
        preprocess_eps: float = 0.0,
        output_sign: int = 1,
    ) -> None:
        super().__init__()
        check_positive_int(hidden_size, "hidden_size")
        check_positive_int(num_layers, "num_layers", minimum=2)
        self.preprocess_k = check_positive_float(preprocess_k, "preprocess_k")
        if isinstance(preprocess_eps, bool) or not isinstance(preprocess_eps, (int, float)):
            raise TypeError(f"preprocess_eps must be a float, got {type(preprocess_eps).__name__}")
        if not (math.isfinite(preprocess_eps) and preprocess_eps >= 0):
            raise ValueError(f"preprocess_eps must be a finite number >= 0, got {preprocess_eps!r}")
        self.preprocess_eps = float(preprocess_eps)
        if isinstance(output_sign, bool) or output_sign not in (1, -1):
            raise ValueError(f"output_sign must be 1 or -1, got {output_sign!r}")
        self.output_sign = int(output_sign)
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
        x = preprocess_gradient(grad, self.preprocess_k, self.preprocess_eps).to(next(self.parameters()).dtype)
        new_memory: list[Tensor] = []
        for layer, cell in enumerate(self.cells):
            h, c = lstm_cell(x, memory[2 * layer], memory[2 * layer + 1], cell)  # type: ignore[arg-type]
            new_memory += [h, c]
            x = h
        direction = x.squeeze(-1)
        return (direction if self.output_sign == 1 else -direction), tuple(new_memory)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value:g}" for key, value in self.get_extra_state().items())

    def get_extra_state(self) -> dict[str, Any]:
        # the same weights are another teacher under the other sign or encoding: a state says which it is
        return {
            "preprocess_k": self.preprocess_k,
            "preprocess_eps": self.preprocess_eps,
            "output_sign": self.output_sign,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"the state is of an LSTMTeacher with {state}, this one has {mine}")
