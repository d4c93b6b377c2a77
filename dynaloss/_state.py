"""Loading a state dict whole or not at all: everything is checked on a copy before anything is written."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dynaloss._checks import NonFiniteError

__all__ = ["ValidatedLoad", "check_finite_state", "check_state_dict"]


def check_finite_state(state: Any, name: str) -> None:
    """Raise :class:`NonFiniteError` naming the entry if any floating tensor in ``state`` (nested) is not finite."""
    if isinstance(state, Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            raise NonFiniteError(f"{name} contains NaN or Inf values")
    elif isinstance(state, Mapping):
        for key, value in state.items():
            check_finite_state(value, f"{name}[{key!r}]")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            check_finite_state(value, f"{name}[{index}]")


def check_state_dict(module: nn.Module, state: object, name: str = "state", *, strict: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` if ``module`` would not load ``state`` whole, or if it holds a non-finite
    value; ``module`` itself is not touched (the load is tried on a copy)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a state dict (a mapping), got {type(state).__name__}")
    check_finite_state(state, name)
    trial = copy.deepcopy(module)
    try:
        nn.Module.load_state_dict(trial, state, strict=strict)
    except RuntimeError as error:  # torch's message lists every missing, unexpected and mis-shaped key
        raise ValueError(f"{name} does not fit this {type(module).__name__}: {error}") from None


class ValidatedLoad(nn.Module):
    """``load_state_dict`` that checks the whole state first (keys, shapes, extra state, finiteness), so that a
    state that does not fit raises and leaves the module as it was, instead of half-loaded."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        check_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
