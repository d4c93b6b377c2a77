"""The student's optimizer as a differentiable function: ``torch.optim``'s SGD, Adam and AdamW update rules.

The unroll applies the user's optimizer's own rule: one :class:`OptimizerRule` per optimizer, found in
:data:`RULES` by the optimizer's exact type (:func:`register_rule` adds one). Each is written out of place
(no in-place updates, so autograd differentiates through it), starts from the optimizer's current state and
reads each param group's current hyperparameters, so a learning-rate scheduler is followed as it is. An
unroll equals the same number of ``optimizer.step()`` calls to float rounding (the arithmetic follows
``torch.optim``'s single-tensor implementations). Like ``torch.optim``, a parameter that a step's loss does
not reach (no gradient) is skipped by that step entirely: no weight decay, no moment update, no step count.
docs/design-notes-core.md says why the unroll follows the optimizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "RULES",
    "AdamRule",
    "OptimizerRule",
    "PlainSGD",
    "SGDRule",
    "SlotState",
    "UpdateRule",
    "check_optimizer",
    "optimizer_rule",
    "register_rule",
    "write_optimizer_state",
]


@dataclass(frozen=True)
class SlotState:
    """An optimizer's per-parameter state during an unroll, one entry per trainable parameter.

    Attributes:
        slots: slot name (``'momentum_buffer'``, ``'exp_avg'``, ``'exp_avg_sq'``, ``'max_exp_avg_sq'``) to
            one tensor (or ``None``: not created yet) per trainable parameter.
        steps: the step count per parameter (``0``: not stepped yet), for the rules that keep one (Adam's).
    """

    slots: dict[str, tuple[Tensor | None, ...]]
    steps: tuple[int, ...]

    def detached(self) -> SlotState:
        """The same values cut from the graph: a new unroll starts from them as constants."""
        return replace(
            self, slots={k: tuple(None if t is None else t.detach() for t in v) for k, v in self.slots.items()}
        )

    def tensors(self) -> list[Tensor]:
        return [t for values in self.slots.values() for t in values if t is not None]


class UpdateRule(ABC):
    """How one unrolled step turns parameters and gradients into new parameters (and optimizer state)."""

    @abstractmethod
    def initial(self) -> SlotState:
        """The optimizer state the unroll starts from."""

    @abstractmethod
    def apply(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None], state: SlotState
    ) -> tuple[list[Tensor], SlotState]:
        """One step; a parameter whose gradient is ``None`` keeps its value and its state."""


class PlainSGD(UpdateRule):
    """``theta - lr * grad``: the paper's student, and the rule without a user optimizer (``student_lr``)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def initial(self) -> SlotState:
        return SlotState({}, ())

    def apply(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None], state: SlotState
    ) -> tuple[list[Tensor], SlotState]:
        reached = [i for i, g in enumerate(grads) if g is not None]
        stepped = list(params)
        if reached:
            # one fused (and differentiable) update instead of two ops per parameter
            taken = [grads[i] for i in reached]
            new = torch._foreach_add([params[i] for i in reached], taken, alpha=-self.lr)  # type: ignore[arg-type]
            for i, tensor in zip(reached, new):
                stepped[i] = tensor
        return stepped, state


class OptimizerRule(UpdateRule):
    """The update rule of one kind of ``torch.optim`` optimizer, for the student parameters it holds.

    A subclass per optimizer, found in :data:`RULES` by the optimizer's exact type (:func:`optimizer_rule`).
    ``hyper[i]`` is the param group of the ``i``-th trainable parameter as it is *now* (its current ``lr``,
    momentum, betas, ...), and :meth:`initial` reads the optimizer's state.

    Args:
        params: the trainable parameters, in the unroll's order.
        optimizer: the optimizer that holds them.
    """

    slot_names: ClassVar[tuple[str, ...]]
    """The per-parameter state tensors the optimizer keeps, by their ``optimizer.state`` keys."""

    def __init__(self, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self.hyper = [self.hyperparameters(optimizer, group_of[id(p)]) for p in self.params]

    @classmethod
    def hyperparameters(cls, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> dict[str, Any]:
        """A param group's hyperparameters as plain floats (a tensor ``lr`` is read once, here)."""
        return {
            "lr": float(group["lr"]),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "maximize": bool(group.get("maximize", False)),
        }

    @abstractmethod
    def step(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        """One parameter's step, out of place: ``state`` holds its :attr:`slot_names` and ``'step'``, its count."""

    @abstractmethod
    def state_entries(
        self, old: Mapping[str, Any], values: Mapping[str, Tensor | None], count: int, h: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The ``optimizer.state`` entries of one parameter after the unroll (its entries before: ``old``)."""

    def initial(self) -> SlotState:
        states = [self.optimizer.state.get(p, {}) for p in self.params]
        slots = {name: tuple(_detached(s.get(name)) for s in states) for name in self.slot_names}
        steps = tuple(int(_value(s.get("step", 0))) for s in states)
        return SlotState(slots, steps)

    def apply(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None], state: SlotState
    ) -> tuple[list[Tensor], SlotState]:
        stepped = list(params)
        slots = {name: list(values) for name, values in state.slots.items()}
        steps = list(state.steps)
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            own: dict[str, Any] = {"step": steps[i], **{name: values[i] for name, values in slots.items()}}
            stepped[i], own = self.step(params[i], grad, own, self.hyper[i])
            steps[i] = own.pop("step")
            for name, value in own.items():
                slots[name][i] = value
        return stepped, SlotState({k: tuple(v) for k, v in slots.items()}, tuple(steps))


class SGDRule(OptimizerRule):
    """``torch.optim.SGD``'s step (``_single_tensor_sgd``): momentum, dampening, Nesterov, weight decay."""

    slot_names = ("momentum_buffer",)

    @classmethod
    def hyperparameters(cls, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **super().hyperparameters(optimizer, group),
            "momentum": float(group.get("momentum", 0.0)),
            "dampening": float(group.get("dampening", 0.0)),
            "nesterov": bool(group.get("nesterov", False)),
        }

    def step(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        if h["maximize"]:
            grad = -grad
        if h["weight_decay"] != 0:
            grad = grad.add(param, alpha=h["weight_decay"])
        if h["momentum"] != 0:
            buffer = state["momentum_buffer"]
            buffer = grad if buffer is None else buffer.mul(h["momentum"]).add(grad, alpha=1 - h["dampening"])
            state = {**state, "momentum_buffer": buffer}
            grad = grad.add(buffer, alpha=h["momentum"]) if h["nesterov"] else buffer
        return param.add(grad, alpha=-h["lr"]), state

    def state_entries(
        self, old: Mapping[str, Any], values: Mapping[str, Tensor | None], count: int, h: Mapping[str, Any]
    ) -> dict[str, Any]:
        buffer = values["momentum_buffer"]
        if h["momentum"] == 0 or buffer is None:
            return {}  # torch.optim.SGD keeps no state without momentum
        return {"momentum_buffer": buffer.detach().clone()}


class AdamRule(OptimizerRule):
    """``torch.optim.Adam``'s and ``AdamW``'s step (``_single_tensor_adam``): AMSGrad, coupled or decoupled weight
    decay."""

    slot_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    @classmethod
    def hyperparameters(cls, optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            **super().hyperparameters(optimizer, group),
            "betas": (float(beta1), float(beta2)),
            "eps": float(group["eps"]),
            "amsgrad": bool(group.get("amsgrad", False)),
            # AdamW is Adam with decoupled weight decay (a group key since torch 2.6, a class before)
            "decoupled": bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))),
        }

    def step(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        if h["maximize"]:
            grad = -grad
        step = state["step"] + 1
        lr, (beta1, beta2), weight_decay = h["lr"], h["betas"], h["weight_decay"]
        if weight_decay != 0:
            if h["decoupled"]:
                param = param.mul(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg = _zeros_if_none(state["exp_avg"], param)
        exp_avg_sq = _zeros_if_none(state["exp_avg_sq"], param)
        exp_avg = exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = exp_avg_sq.mul(beta2).addcmul(grad, grad, value=1 - beta2)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / (1 - beta1**step)
        second = exp_avg_sq
        new_state: dict[str, Any] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": None}
        if h["amsgrad"]:
            second = torch.maximum(_zeros_if_none(state["max_exp_avg_sq"], param), exp_avg_sq)
            new_state["max_exp_avg_sq"] = second
        denom = (_safe_sqrt(second) / bias_correction2_sqrt).add(h["eps"])
        return param.addcdiv(exp_avg, denom, value=-step_size), new_state

    def state_entries(
        self, old: Mapping[str, Any], values: Mapping[str, Tensor | None], count: int, h: Mapping[str, Any]
    ) -> dict[str, Any]:
        if count == 0:
            return {}  # never stepped: torch.optim.Adam has no state for it either
        scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        old_step = old.get("step")
        step_like = old_step if isinstance(old_step, Tensor) else torch.tensor(0.0, dtype=scalar_dtype)
        entries: dict[str, Any] = {"step": torch.full_like(step_like, float(count))}
        entries.update((name, value.detach().clone()) for name, value in values.items() if value is not None)
        return entries


def _safe_sqrt(value: Tensor) -> Tensor:
    """``sqrt`` whose derivative stays finite at 0 (a coordinate with zero gradient so far).

    The derivative of ``sqrt`` at 0 is infinite and the upstream gradient there is 0, which autograd turns
    into NaN. Clamping at the dtype's smallest normal moves the value by at most ~1e-19 (float32), far below
    ``eps``, and gives those coordinates the derivative they have in the limit: none.
    """
    return value.clamp_min(torch.finfo(value.dtype).tiny).sqrt()


def _zeros_if_none(value: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if value is None else value


def _detached(value: object) -> Tensor | None:
    return value.detach() if isinstance(value, Tensor) else None


def _value(step: object) -> float:
    return float(step.item()) if isinstance(step, Tensor) else float(step)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- building
RULES: dict[type[torch.optim.Optimizer], type[OptimizerRule]] = {}
"""The rule of each supported optimizer, by its exact type (a subclass may override ``step()`` with another rule,
which the unroll would silently not follow)."""


def register_rule(optimizer_type: type[torch.optim.Optimizer], rule: type[OptimizerRule]) -> None:
    """Make the unroll follow ``optimizer_type`` (exactly that type) with ``rule``."""
    RULES[optimizer_type] = rule


register_rule(torch.optim.SGD, SGDRule)
register_rule(torch.optim.Adam, AdamRule)
register_rule(torch.optim.AdamW, AdamRule)


def _rule_type(optimizer: object) -> type[OptimizerRule]:
    rule = RULES.get(type(optimizer))  # type: ignore[arg-type]
    if rule is None:
        supported = ", ".join(f"torch.optim.{kind.__name__}" for kind in RULES)
        raise TypeError(
            f"optimizer must be one of {supported} (the update rules the teacher's unroll can differentiate), got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        )
    return rule


def check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """Return ``optimizer`` if the unroll can follow its rule, else raise ``TypeError`` naming the supported ones."""
    _rule_type(optimizer)
    return optimizer  # type: ignore[return-value]


def optimizer_rule(optimizer: torch.optim.Optimizer, student: nn.Module) -> tuple[OptimizerRule, list[str]]:
    """The rule of ``optimizer`` for ``student``, and the names of the parameters it trains.

    A student parameter trains in the unroll when it requires grad *and* the optimizer holds it: one the
    optimizer does not hold is never stepped by ``optimizer.step()``, so the unroll keeps it fixed too.

    Raises:
        TypeError: ``optimizer``'s type has no rule in :data:`RULES`.
        ValueError: the optimizer holds none of the student's trainable parameters.
    """
    rule = _rule_type(optimizer)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad and id(p) in held]
    if not named:
        raise ValueError(
            f"the optimizer ({type(optimizer).__name__}) holds none of the student's trainable parameters: "
            "pass the optimizer that trains this student"
        )
    return rule([p for _, p in named], optimizer), [n for n, _ in named]


def write_optimizer_state(rule: OptimizerRule, state: SlotState) -> None:
    """Write ``state`` into the optimizer: where the same number of ``optimizer.step()`` calls would leave it."""
    with torch.no_grad():
        for i, param in enumerate(rule.params):
            values = {name: state.slots[name][i] for name in rule.slot_names}
            entries = rule.state_entries(rule.optimizer.state.get(param, {}), values, state.steps[i], rule.hyper[i])
            if entries:
                rule.optimizer.state[param].update(entries)
