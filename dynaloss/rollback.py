"""Rollback: teaching that makes the student persistently worse is undone, not left to run on.

A teacher optimises a short-horizon proxy (the validation error ``N`` steps ahead). Nothing in a single round
says when a run of such rounds is walking the DLN somewhere that wrecks the student: each round is finite,
and each looks only a few steps ahead. What does say it is the validation error the rounds themselves
measure, over many rounds. :class:`Rollback` watches it: when its mean over the last ``window`` rounds rises
``rise`` times above the best such mean so far, the teacher returns the DLN (and the teacher model, its
optimizer and memory) to where they were at that best point, and teaches more slowly from there
(``dln_lr`` times ``slowdown``).

The validation error of one round is one batch's: noisy, and it also rises a little late in ordinary
training (overconfidence). The windowed mean and a large ``rise`` make a rollback an answer to a collapse,
not to noise; a rollback that fires without one costs little, since the DLN returns to a state that was
good and teaching continues, slower.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from dynaloss._checks import check_positive_float, check_positive_int

__all__ = ["Rollback"]

# A rise is measured against the best windowed mean, but never against less than this share of the first
# window's: near the end of training the validation error can be ~1e-3 nats, where a relative rise is noise.
FLOOR_SHARE = 0.25


class Rollback:
    """Decides when a run of teacher rounds has made things persistently worse, and what to return to.

    Each committed round hands over its validation error and the teacher's state *before* the round (the DLN
    that error measured). The state to return to is the one at the start of the best window: the DLN that
    every round of that window was measured with, or its teaching since. Before a first full window that is
    the state teaching started from, so a collapse within the first rounds is caught too.

    Args:
        window: rounds whose validation errors are averaged (default: ``5``).
        rise: roll back when the windowed mean exceeds the best windowed mean so far by ``rise`` times
            that best, or times a quarter of the first window's mean if that is larger (default: ``0.5``).
        slowdown: factor applied to the teacher's ``dln_lr`` at every rollback, in ``(0, 1]`` (default: ``0.5``).
    """

    def __init__(self, window: int = 5, rise: float = 0.5, slowdown: float = 0.5) -> None:
        self.window = check_positive_int(window, "window")
        self.rise = check_positive_float(rise, "rise")
        self.slowdown = check_positive_float(slowdown, "slowdown")
        if self.slowdown > 1.0:
            raise ValueError(f"slowdown must be in (0, 1], got {slowdown}")
        self.recent: deque[tuple[float, Any]] = deque(maxlen=self.window)  # (error, state before that round)
        self.best = math.inf
        self.best_state: Any = None
        self.floor = 0.0  # FLOOR_SHARE of the first full window's mean
        self.count = 0  # rollbacks so far

    def __repr__(self) -> str:
        return f"Rollback(window={self.window}, rise={self.rise}, slowdown={self.slowdown})"

    def observe(self, error: float, state_before: Any) -> Any:
        """Take a committed round's validation error; the state to return to on a persistent rise, else ``None``.

        After a rollback the watch starts over (window and best): the student needs rounds to recover from
        what the DLN did to it, and those rounds are not the teacher's doing.
        """
        if not math.isfinite(error):
            return None
        if self.best_state is None:
            self.best_state = state_before  # where teaching started: the fallback before any full window
        self.recent.append((error, state_before))
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

    def settings(self) -> dict[str, Any]:
        """What this watch was made with: its state records it, and a state of other settings is refused."""
        return {"window": self.window, "rise": self.rise, "slowdown": self.slowdown}

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.settings(),
            "recent": list(self.recent),
            "best": self.best,
            "best_state": self.best_state,
            "floor": self.floor,
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"recent", "best", "count", "best_state"} <= state.keys():
            raise ValueError(
                "rollback state must be Rollback.state_dict()'s output (keys 'recent', 'best', 'count', "
                f"'best_state'), got {state!r:.200}"
            )
        mine = self.settings()
        theirs = {**mine, **{key: state[key] for key in mine if key in state}}  # states from before the record
        if theirs != mine:
            raise ValueError(f"rollback state is of a Rollback with {theirs}, this one has {mine}")
        recent, best, count = state["recent"], state["best"], state["count"]
        if not isinstance(recent, list) or not all(
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (int, float)) for item in recent
        ):
            raise ValueError(f"rollback state 'recent' must be a list of (error, state) pairs, got {recent!r:.200}")
        if not isinstance(best, (int, float)) or isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"rollback state must hold a number 'best' and an int 'count', got {best!r}, {count!r}")
        self.recent = deque(((float(e), s) for e, s in recent), maxlen=self.window)
        self.best = float(best)
        self.floor = float(state.get("floor", 0.0))
        self.best_state = state["best_state"]
        self.count = count
