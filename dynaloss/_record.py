"""What a teacher round reports: :class:`RoundRecord`, for committed and for skipped rounds."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from dynaloss._round import RoundOutcome

if TYPE_CHECKING:
    from dynaloss.teacher import Teacher

__all__ = ["RoundRecord", "committed_record", "skipped_record"]


@dataclass(frozen=True)
class RoundRecord:
    """What one teacher round did.

    Attributes:
        round: index of the round (0-based), counting committed and skipped rounds.
        val_error_before: validation error after stage I (N steps with the old DLN).
        val_error_after: validation error after stage III (N steps with the updated DLN); NaN where the round
            had no use for stage III and skipped it (an optimizer teacher, e.g. ``'adam'``, in ``'lookahead'`` mode
            without a guard: nothing learns from it or keeps it).
        hypergradient_norm: L2 norm of the DLN's hypergradient.
        update_norm: L2 norm of the DLN's change this round.
        student_steps: SGD steps written into the student (``2N`` paper, ``N`` research, 0 lookahead).
        seconds: wall time of the round.
        skipped: ``True`` when the round had a non-finite value, or learned nothing (a zero hypergradient, as at a
            learning rate of 0), and nothing was changed; ``reason`` says which.
        rejected: ``True`` when the guard turned the DLN update down (the teacher still learned from it).
        rolled_back: ``True`` when this round's validation error completed a persistent rise and the DLN and
            the teacher were returned to their state at the best point (:class:`dynaloss._rollback.Rollback`).
        reason: why it was skipped, rejected or rolled back.
    """

    round: int
    val_error_before: float
    val_error_after: float
    hypergradient_norm: float
    update_norm: float
    student_steps: int
    seconds: float
    skipped: bool = False
    rejected: bool = False
    rolled_back: bool = False
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def committed_record(
    teacher: Teacher, started: float, outcome: RoundOutcome, rejected: bool, rolled_back: str | None
) -> RoundRecord:
    """The record of ``teacher``'s latest round, committed (``time.perf_counter()`` was ``started`` at its start),
    its update accepted or (``rejected``) turned down by the guard; ``rolled_back`` is the rollback's reason."""
    mode, steps, guard = teacher.mode, teacher.steps, teacher.guard
    student_steps = {"paper": 2 * steps, "research": steps, "lookahead": 0}[mode]
    reason = None
    if rejected:
        student_steps = 0 if mode == "lookahead" else steps
        reason = (
            f"guard: validation error rose from {float(outcome.error_before):.4g} to "
            f"{_value(outcome.error_after):.4g} (> {guard}x); the DLN update was not applied"
        )
    return RoundRecord(
        round=teacher.rounds - 1,
        val_error_before=float(outcome.error_before),
        val_error_after=_value(outcome.error_after),
        hypergradient_norm=float(outcome.flat_grad.norm()),
        update_norm=0.0 if rejected else float(outcome.update.norm()),
        student_steps=student_steps,
        seconds=time.perf_counter() - started,
        rejected=rejected,
        rolled_back=rolled_back is not None,
        reason=reason or rolled_back,
    )


def skipped_record(index: int, started: float, reason: str, outcome: RoundOutcome | None) -> RoundRecord:
    """The record of skipped round ``index``; ``outcome`` where it was computed (its measurements are kept)."""
    return RoundRecord(
        round=index,
        val_error_before=math.nan if outcome is None else float(outcome.error_before),
        val_error_after=math.nan if outcome is None else _value(outcome.error_after),
        hypergradient_norm=math.nan if outcome is None else float(outcome.flat_grad.norm()),
        update_norm=0.0,
        student_steps=0,
        seconds=time.perf_counter() - started,
        skipped=True,
        reason=reason,
    )


def _value(error: Tensor | None) -> float:
    """A validation error as a float; NaN where the round did not measure it."""
    return math.nan if error is None else float(error)
