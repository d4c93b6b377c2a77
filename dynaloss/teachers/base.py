"""The interface every teacher model follows: a gradient in, a bounded DLN update out, with memory."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from dynaloss._state import ValidatedLoad

__all__ = ["TeacherModel"]

Memory = tuple[Tensor, ...]


class TeacherModel(ValidatedLoad, ABC):
    """Maps the DLN's hypergradient to an update direction, coordinate by coordinate.

    A teacher model is a pure function of its parameters, the flat hypergradient and its memory:
    ``forward(grad, memory) -> (direction, new_memory)``. The caller applies ``phi + dln_lr * direction``
    and keeps the memory between rounds (:class:`dynaloss.Teacher` stores, detaches and saves it).
    """

    @abstractmethod
    def initial_memory(self, num_coordinates: int, *, like: Tensor) -> Memory:
        """The memory before the first round, for ``num_coordinates`` DLN parameters (device/dtype of ``like``)."""

    @abstractmethod
    def forward(self, grad: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        """``(P,)`` hypergradient and memory in; ``(P,)`` update direction and the new memory out."""

    @property
    def learnable(self) -> bool:
        """Whether stage III (teacher learning) has anything to learn."""
        return any(p.requires_grad for p in self.parameters())
