"""Error triage of a teacher round: which failures skip the round, which are the batches' fault, and which
propagate as they are."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dynaloss._batches import Batch
from dynaloss._checks import NonFiniteError
from dynaloss._round import RoundOutcome
from dynaloss._unroll import ValLoss

__all__ = ["batch_problem", "compute_or_skip", "not_about_batches"]


def compute_or_skip(
    compute: Callable[[], RoundOutcome],
    student: nn.Module,
    loss_fn: nn.Module,
    val_loss: ValLoss,
    batches: tuple[Sequence[Batch], Sequence[Batch], Batch],
) -> RoundOutcome | str:
    """Run ``compute()`` (with gradients enabled) and return its outcome, or the reason to skip the round.

    ``student``, ``loss_fn``, ``val_loss`` and ``batches`` (stage I's, stage III's and the validation batch) are
    what ``compute`` runs on: an error is tried on them alone to tell whether it is the batches' fault.

    Returns:
        The :class:`~dynaloss._round.RoundOutcome`, or a reason (ending "the round was not committed") when a
        loss's input check raised :class:`~dynaloss._checks.NonFiniteError` or the device ran out of memory
        (the CUDA cache is then emptied).

    Raises:
        ValueError: a ``RuntimeError``/``IndexError`` that the round's batches reproduce on their own
            (:func:`batch_problem`), chained to the original error.
        Exception: any other error as it is (a device or collective failure, a bug).
    """
    try:
        with torch.enable_grad():  # a round differentiates, even when called under no_grad()
            return compute()
    except NonFiniteError as error:
        return f"{error}; the round was not committed"
    except torch.OutOfMemoryError as error:
        # leave the handler before freeing: the traceback holds the round's frames and, with them, its tensors
        reason = f"out of memory ({str(error).splitlines()[0]}); the round was not committed"
    except (RuntimeError, IndexError) as error:
        # torch reports batches that do not fit the student or the loss as RuntimeError (shapes, dtypes) or
        # IndexError (class indices out of range): say so when the batches alone reproduce it
        problem = None if not_about_batches(error) else batch_problem(student, loss_fn, val_loss, *batches)
        if problem is None:
            raise
        raise ValueError(f"the round failed on these batches: {error} ({problem}); nothing was changed") from error
    if next(student.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()
    return reason


def not_about_batches(error: BaseException) -> bool:
    """Whether ``error`` says the device or the process group failed, whatever the batches were."""
    kinds = tuple(
        kind
        for kind in (getattr(torch, "AcceleratorError", None), getattr(torch.distributed, "DistError", None))
        if isinstance(kind, type)
    )
    return isinstance(error, kinds) or str(error).startswith(("CUDA error", "NCCL error"))


def batch_problem(
    student: nn.Module,
    loss_fn: nn.Module,
    val_loss: ValLoss,
    first: Sequence[Batch],
    second: Sequence[Batch],
    val: Batch,
) -> str | None:
    """What the round's batches fail on without the round around them (the student's forward, the DLN or
    ``val_loss``, named), or ``None`` when they pass: then the round's error was about something else.

    Runs without gradients, on copies of the student's buffers, so that BatchNorm statistics stay as they were.
    """
    state = {
        **dict(student.named_parameters()),
        **{name: buffer.clone() for name, buffer in student.named_buffers()},
    }
    labelled: list[tuple[Batch, str, Callable[..., object]]] = [
        (b, "a train batch", loss_fn) for b in (*first, *second)
    ]
    with torch.no_grad():
        for batch, label, loss in [*labelled, (val, "the val batch", val_loss)]:
            try:
                outputs = torch.func.functional_call(student, state, (batch.inputs,))
            except (RuntimeError, IndexError, TypeError, ValueError) as error:
                return f"the student's forward raised on {label}: {error}"
            extra = () if batch.sample_weight is None else (batch.sample_weight,)
            try:
                loss(outputs, batch.targets, *extra)
            except (RuntimeError, IndexError, TypeError, ValueError) as error:
                what = "val_loss" if loss is val_loss else "the DLN"
                return f"{what} raised on {label}: {error}"
    return None
