"""Input checks shared by the loss modules: each raises ``ValueError``/``TypeError`` naming the value."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["NonFiniteError", "check_finite", "check_positive_float", "check_positive_int", "check_tensor"]


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or Inf."""


def check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


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
