"""Rollback: teaching that makes the student persistently worse is undone, not left to run on.

:class:`Rollback` holds the rule: it watches the validation error of the committed rounds and, when its mean
over the last ``window`` rounds rises ``rise`` times above the best such mean so far, names the
:class:`Snapshot` to return to. :class:`Learned` is the mechanism: it takes and restores snapshots of exactly
what a teacher learns, the DLN, the teacher model and the teacher model's optimizer. The teacher model's
memory is not in a snapshot: after a rollback the :class:`dynaloss.Teacher` starts it afresh (as before its
first round) and multiplies its ``dln_lr`` by ``slowdown``.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynaloss._checks import check_positive_float, check_positive_int

__all__ = ["FLOOR_SHARE", "Learned", "Rollback", "Snapshot"]

# A rise is measured against the best windowed mean, but never against less than this share of the first
# window's mean (docs/design-notes.md, "Rollback").
FLOOR_SHARE = 0.25


@dataclass(frozen=True)
class Snapshot:
    """A copy of what a teacher has learned, taken before a round: what a rollback returns to.

    Attributes:
        round: the teacher's round count when it was taken (the index of the round that followed).
        loss_fn: the DLN's ``state_dict``.
        teacher_model: the teacher model's ``state_dict``.
        teacher_optimizer: the teacher model's optimizer's ``state_dict`` (``None``: a teacher model with
            nothing to learn).
    """

    round: int
    loss_fn: dict[str, Any]
    teacher_model: dict[str, Any]
    teacher_optimizer: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain containers and tensors (what ``torch.load(weights_only=True)`` reads back)."""
        return {
            "round": self.round,
            "loss_fn": self.loss_fn,
            "teacher_model": self.teacher_model,
            "teacher_optimizer": self.teacher_optimizer,
        }

    @classmethod
    def from_dict(cls, state: object) -> Snapshot:
        """The inverse of :meth:`as_dict`; ``ValueError`` unless ``state`` has its keys and types."""
        keys = ("round", "loss_fn", "teacher_model", "teacher_optimizer")
        if not isinstance(state, Mapping) or set(state) != set(keys):
            raise ValueError(f"a rollback snapshot must be a mapping with keys {keys}, got {state!r:.200}")
        round_, dln, model, optimizer = (state[key] for key in keys)
        if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
            raise ValueError(f"a rollback snapshot's 'round' must be an int >= 0, got {round_!r}")
        if not isinstance(dln, Mapping) or not isinstance(model, Mapping):
            raise ValueError("a rollback snapshot's 'loss_fn' and 'teacher_model' must be state dicts")
        if optimizer is not None and not isinstance(optimizer, Mapping):
            raise ValueError(
                f"a rollback snapshot's 'teacher_optimizer' must be a state dict or None, got {optimizer!r:.200}"
            )
        return cls(round_, dict(dln), dict(model), None if optimizer is None else dict(optimizer))


class Learned:
    """What a teacher learns, and nothing else: the DLN, the teacher model and its optimizer.

    Args:
        loss_fn: the DLN.
        teacher_model: the teacher model.
        teacher_optimizer: the teacher model's optimizer (``None``: it has nothing to learn).
    """

    def __init__(
        self, loss_fn: nn.Module, teacher_model: nn.Module, teacher_optimizer: torch.optim.Optimizer | None
    ) -> None:
        self.loss_fn, self.teacher_model, self.teacher_optimizer = loss_fn, teacher_model, teacher_optimizer

    def snapshot(self, rounds: int) -> Snapshot:
        """A deep copy of the three states, labelled with the teacher's round count ``rounds``."""
        optimizer = self.teacher_optimizer
        return Snapshot(
            rounds,
            copy.deepcopy(self.loss_fn.state_dict()),
            copy.deepcopy(self.teacher_model.state_dict()),
            None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Load ``snapshot`` into the three; the snapshot itself stays as it was (it may be restored again)."""
        self.loss_fn.load_state_dict(snapshot.loss_fn)
        self.teacher_model.load_state_dict(snapshot.teacher_model)
        if self.teacher_optimizer is not None:
            # an optimizer's load_state_dict keeps the given tensors: copy, or the next steps change the snapshot
            self.teacher_optimizer.load_state_dict(copy.deepcopy(snapshot.teacher_optimizer))  # type: ignore[arg-type]


class Rollback:
    """Decides when a run of teacher rounds has made things persistently worse, and what to return to.

    Each committed round hands over its validation error and the :class:`Snapshot` taken *before* the round
    (the DLN that error measured). The snapshot to return to is the one at the start of the best window. Before
    a first full window it is the first snapshot handed over (where teaching started).

    Args:
        window: rounds whose validation errors are averaged (default: ``5``).
        rise: roll back when the windowed mean exceeds the best windowed mean so far by ``rise`` times
            that best, or times :data:`FLOOR_SHARE` of the first window's mean if that is larger
            (default: ``0.5``).
        slowdown: factor applied to the teacher's ``dln_lr`` at every rollback, in ``(0, 1]`` (default: ``0.5``).

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range.
    """

    def __init__(self, window: int = 5, rise: float = 0.5, slowdown: float = 0.5) -> None:
        self.window = check_positive_int(window, "window")
        self.rise = check_positive_float(rise, "rise")
        self.slowdown = check_positive_float(slowdown, "slowdown")
        if self.slowdown > 1.0:
            raise ValueError(f"slowdown must be in (0, 1], got {slowdown}")
        self.recent: deque[tuple[float, Snapshot]] = deque(maxlen=self.window)  # (error, snapshot before it)
        self.best = math.inf
        self.best_state: Snapshot | None = None
        self.floor = 0.0  # FLOOR_SHARE of the first full window's mean
        self.count = 0  # rollbacks so far

    def __repr__(self) -> str:
        return f"Rollback(window={self.window}, rise={self.rise}, slowdown={self.slowdown})"

    def observe(self, error: float, before: Snapshot) -> Snapshot | None:
        """Take a committed round's validation error and the snapshot taken before it; return the snapshot to
        restore on a persistent rise, else ``None``. A non-finite ``error`` is ignored.

        After a rollback the watch starts over (window and best).
        """
        if not math.isfinite(error):
            return None
        if self.best_state is None:
            self.best_state = before
        self.recent.append((error, before))
        if len(self.recent) < self.window:
            return None
        mean = sum(e for e, _ in self.recent) / len(self.recent)
        if self.floor == 0.0:
            self.floor = FLOOR_SHARE * mean
        if mean < self.best:
            self.best, self.best_state = mean, self.recent[0][1]
            return None
        if mean <= self.best + self.rise * max(self.best, self.floor):
            return None
        self.count += 1
        self.recent.clear()
        self.best = math.inf
        return self.best_state

    def reason(self, best: float, target: Snapshot, dln_lr: float) -> str:
        """What a rollback to ``target`` says, from the best windowed mean ``best`` before it and the new ``dln_lr``."""
        return (
            f"rollback: the validation error averaged over the last {self.window} rounds rose {self.rise:g}x above "
            f"its best ({best:.4g}); the DLN and the teacher went back to their state before round {target.round}, "
            f"dln_lr is now {dln_lr:.3g}"
        )

    def settings(self) -> dict[str, Any]:
        """What this watch was made with: its state records it, and a state of other settings is refused."""
        return {"window": self.window, "rise": self.rise, "slowdown": self.slowdown}

    def state_dict(self) -> dict[str, Any]:
        """The settings, the window's errors and snapshots, the best mean and its snapshot, the rollback count."""
        return {
            **self.settings(),
            "recent": [(error, snapshot.as_dict()) for error, snapshot in self.recent],
            "best": self.best,
            "best_state": None if self.best_state is None else self.best_state.as_dict(),
            "floor": self.floor,
            "count": self.count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: ``state`` is not such an output, or it is of a watch with other settings; nothing changes.
        """
        keys = {"window", "rise", "slowdown", "recent", "best", "best_state", "floor", "count"}
        if not isinstance(state, Mapping) or not keys <= state.keys():
            raise ValueError(
                f"rollback state must be Rollback.state_dict()'s output (keys {sorted(keys)}), got {state!r:.200}"
            )
        theirs = {key: state[key] for key in self.settings()}
        if theirs != self.settings():
            raise ValueError(f"rollback state is of a Rollback with {theirs}, this one has {self.settings()}")
        recent, best, floor, count = state["recent"], state["best"], state["floor"], state["count"]
        if not isinstance(recent, list) or not all(
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (int, float)) for item in recent
        ):
            raise ValueError(f"rollback state 'recent' must be a list of (error, snapshot) pairs, got {recent!r:.200}")
        numbers = (best, floor)
        if (
            not all(isinstance(n, (int, float)) for n in numbers)
            or isinstance(count, bool)
            or not isinstance(count, int)
        ):
            raise ValueError(
                "rollback state must hold numbers 'best' and 'floor' and an int 'count', "
                f"got {best!r}, {floor!r}, {count!r}"
            )
        snapshots = [(float(error), Snapshot.from_dict(snapshot)) for error, snapshot in recent]
        best_state = None if state["best_state"] is None else Snapshot.from_dict(state["best_state"])
        self.recent = deque(snapshots, maxlen=self.window)
        self.best = float(best)
        self.floor = float(floor)
        self.best_state = best_state
        self.count = count
