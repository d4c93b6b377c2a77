"""Hand-made optimizers as teachers: the paper's Table 6 ablation (Adam, SGD, RMSProp instead of the LSTM)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dynaloss._checks import check_positive_float
from dynaloss.teachers.base import Memory, TeacherModel

__all__ = ["OPTIMIZER_TEACHERS", "OptimizerTeacher"]

OPTIMIZER_TEACHERS = ("adam", "sgd", "rmsprop")


class OptimizerTeacher(TeacherModel):
    """A fixed update rule with the teacher interface; ``dln_lr`` is its learning rate.

    The direction is the negative of what the optimizer would subtract, so ``phi + dln_lr * direction`` is
    one optimizer step on the DLN. It has no parameters: stage III has nothing to learn. Its state records
    its kind and hyperparameters, and a state of another (an Adam teacher's into an RMSprop teacher) is
    refused: the memory's layout is the same for every kind, its meaning is not.

    Args:
        kind: ``'adam'`` | ``'sgd'`` | ``'rmsprop'``.
        betas: Adam's moment decays (default: ``(0.9, 0.999)``).
        alpha: RMSProp's square decay (default: ``0.99``).
        eps: denominator guard (default: ``1e-8``).
    """

    def __init__(
        self, kind: str, *, betas: tuple[float, float] = (0.9, 0.999), alpha: float = 0.99, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if kind not in OPTIMIZER_TEACHERS:
            raise ValueError(f"kind must be one of {OPTIMIZER_TEACHERS}, got {kind!r}")
        for name, value in (("betas[0]", betas[0]), ("betas[1]", betas[1]), ("alpha", alpha)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
        self.kind = kind
        self.betas = (float(betas[0]), float(betas[1]))
        self.alpha = float(alpha)
        self.eps = check_positive_float(eps, "eps")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def get_extra_state(self) -> dict[str, Any]:
        # the memory's layout is one for every kind: only the state says whose moments they are
        return {"kind": self.kind, "betas": list(self.betas), "alpha": self.alpha, "eps": self.eps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = self.get_extra_state()
        theirs = {key: state.get(key) for key in mine} if isinstance(state, dict) else {"state": state}
        if isinstance(theirs["betas"], tuple):
            theirs["betas"] = list(theirs["betas"])
        if theirs != mine:
            raise ValueError(f"the state is of an OptimizerTeacher with {theirs}, this one has {mine}")

    def initial_memory(self, num_coordinates: int, *, like: Tensor) -> Memory:
        zeros = like.new_zeros(num_coordinates)
        # (first moment, second moment, step count) for every kind: one layout, one state_dict format
        return zeros, zeros.clone(), like.new_zeros(())

    def forward(self, grad: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        first, second, step = memory
        step = step + 1
        if self.kind == "sgd":
            return -grad, (first, second, step)
        if self.kind == "rmsprop":
            second = self.alpha * second + (1 - self.alpha) * grad * grad
            return -grad / (second.sqrt() + self.eps), (first, second, step)
        beta1, beta2 = self.betas
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        first_hat = first / (1 - beta1**step)
        second_hat = second / (1 - beta2**step)
        return -first_hat / (second_hat.sqrt() + self.eps), (first, second, step)
