"""Input checks shared by the loss modules: each raises ``ValueError``/``TypeError`` naming the value."""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn

__all__ = [
    "NonFiniteError",
    "check_finite",
    "check_floating",
    "check_loss_value",
    "check_not_compiled",
    "check_optimizer_excludes",
    "check_positive_float",
    "check_positive_int",
    "check_same_device",
    "check_tensor",
]


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or Inf."""


def check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(value: Tensor, name: str, what: str) -> Tensor:
    """Raise ``TypeError`` unless ``value`` is a real floating-point tensor; ``what`` says what it must be.

    Integer and boolean tensors are refused, not cast: weights of dtype int64 are most often something else
    (a loader's sample indices), and casting them would silently weight sample 0 by 0.
    """
    if not value.is_floating_point():
        raise TypeError(f"{name} must be {what}, got dtype {value.dtype}")
    return value


def check_same_device(tensors: dict[str, Tensor], reference: Tensor, where: str) -> None:
    """Raise ``ValueError`` naming the first of ``tensors`` that is not on ``reference``'s device (``where``'s)."""
    for name, tensor in tensors.items():
        if tensor.device != reference.device:
            raise ValueError(
                f"{name} is on {tensor.device} but {where} is on {reference.device}: move them to one device"
            )


def check_finite(value: Tensor, name: str) -> None:
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf values")


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_loss_value(value: object, name: str, outputs: object) -> Tensor:
    """``value``, returned by the user's ``name``, as a 0-d tensor; ``TypeError``/``ValueError`` naming ``name``
    (instead of torch's error inside the round) unless it is a floating tensor of one element differentiable in
    the student's ``outputs``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must return a 0-d floating-point tensor, got {type(value).__name__}")
    if not value.is_floating_point() or value.numel() != 1:
        raise ValueError(
            f"{name} must return a 0-d floating-point tensor (a scalar: reduce it, e.g. .mean()), "
            f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        )
    differentiable = isinstance(outputs, Tensor) and outputs.requires_grad
    if differentiable and torch.is_grad_enabled() and not value.requires_grad:
        raise ValueError(
            f"{name} returned a tensor that does not depend on the student's outputs (no grad_fn): compute it "
            "from them with torch operations (not through .item(), .detach() or numpy)"
        )
    return value.reshape(())


def check_not_compiled(module: nn.Module, name: str) -> None:
    """Raise ``TypeError`` if ``module`` is, or holds, a ``torch.compile``'d module (naming it).

    A teacher round differentiates through the student's steps (a second derivative), which compiled modules
    do not support: torch fails only after compiling, some 20 s in. The module a compiled one wraps,
    ``._orig_mod``, shares its parameters: pass that.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing can be compiled
    compiled = getattr(eval_frame, "OptimizedModule", None)
    if not isinstance(compiled, type):
        return
    for path, submodule in module.named_modules():
        if isinstance(submodule, compiled):
            where = f"{name}.{path}" if path else name
            raise TypeError(
                f"{where} is a torch.compile'd module: a teacher round differentiates through the student's steps "
                f"twice, which compiled modules do not support; pass the module it wraps, {where}._orig_mod "
                "(it shares the compiled module's parameters)"
            )


def check_optimizer_excludes(
    optimizer: torch.optim.Optimizer, loss_fn: nn.Module, advice: str = "build it from the student's parameters"
) -> None:
    """Raise ``ValueError`` if the student's ``optimizer`` holds any of the DLN's (``loss_fn``'s) parameters.

    The teacher alone updates the DLN: an optimizer step on it would train the loss to be small (and, on the
    fast path, change it behind the teacher's back). ``advice`` ends the message: how to build it instead.
    """
    dln = {id(p) for p in loss_fn.parameters()}
    held = sum(id(p) in dln for group in optimizer.param_groups for p in group["params"])
    if held:
        raise ValueError(
            f"the student's optimizer ({type(optimizer).__name__}) holds {held} of the DLN's parameters: the "
            f"teacher alone updates the DLN (an optimizer step on it trains the loss to be small); {advice}"
        )


def check_ignore_index(value: object) -> int:
    """``value`` if it is an int (not a bool), else ``TypeError``: the target value a loss leaves out."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ignore_index must be an int, got {type(value).__name__}")
    return value


def check_class_weight(weight: object, num_classes: int) -> Tensor | None:
    """``weight`` if it is ``None`` or ``(C,)`` finite, non-negative floating-point class weights, else an error."""
    if weight is None:
        return None
    weight = check_floating(check_tensor(weight, "weight"), "weight", "floating-point class weights")
    if weight.shape != (num_classes,):
        raise ValueError(f"weight must have shape ({num_classes},), got {tuple(weight.shape)}")
    check_finite(weight, "weight")
    if bool((weight < 0).any()):  # a negative class weight makes the student maximise that class's loss
        raise ValueError(f"weight must hold class weights >= 0, got {weight.tolist()}")
    return weight


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool, else ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value
