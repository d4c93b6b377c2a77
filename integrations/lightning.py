"""TeacherCallback: teacher rounds inside a PyTorch Lightning ``Trainer`` (``dynaloss.integrations.lightning``).

A ``LightningModule`` whose ``training_step`` uses a DLN as its loss gets a :meth:`dynaloss.Teacher.step` every
``every`` training batches, on batches drawn from the trainer's own training and validation loaders. Lightning's
optimizer keeps training the student; the round unrolls that optimizer and updates the DLN only.

Needs the ``lightning`` extra (``pip install dynaloss[lightning]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from dynaloss import RoundRecord, Teacher
from dynaloss._checks import check_optimizer_excludes, check_positive_int
from dynaloss._streams import forever
from dynaloss.settings import TEACH_EVERY

try:
    import lightning.pytorch as pl
except ModuleNotFoundError as error:  # say which extra brings it, not only that a module is missing
    if (error.name or "").partition(".")[0] != "lightning":
        raise
    raise ModuleNotFoundError(
        "dynaloss.integrations.lightning needs PyTorch Lightning: pip install 'dynaloss[lightning]'", name=error.name
    ) from error

__all__ = ["TeacherCallback"]

StudentFn = Callable[[pl.LightningModule], nn.Module]


def _check_lookahead(mode: str) -> None:
    if mode != "lookahead":
        raise ValueError(
            f"TeacherCallback needs a Teacher with mode='lookahead', got mode={mode!r}: Lightning's optimizer trains "
            "the student, and a 'paper'/'research' round would also write its unrolled steps into the module "
            "behind Lightning's back (its optimizer state, schedulers and checkpoints would no longer match)"
        )


def _first_loader(loaders: Any) -> Iterable[Any] | None:
    """The loader itself, or the first when a ``*_dataloader`` hook returned several (a list or a dict)."""
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    return loaders


class TeacherCallback(pl.Callback):
    """Run a :class:`dynaloss.Teacher` round every ``every`` training batches of a Lightning ``Trainer``.

    At fit start the trainer's optimizer becomes the teacher's ``student_optimizer``, so each round unrolls its
    update rule (SGD, Adam or AdamW) from its current state and learning rates. Rounds draw their batches from
    the trainer's training loader and its (first) validation loader, each cycled without end, so the module
    needs a ``val_dataloader`` and a ``validation_step``. Every :class:`dynaloss.RoundRecord` goes to the
    trainer's loggers as ``teacher/<field>`` (and ``teacher/dln_lr``) at the round's ``global_step``; the
    teacher's state and this callback's batch count are saved in Lightning checkpoints, so
    ``trainer.fit(..., ckpt_path=...)`` resumes the teaching too.

    ``configure_optimizers`` must not hand the DLN's parameters to the student's optimizer (build it from the
    student's parameters, not ``self.parameters()``, when the DLN is a submodule): the teacher alone updates
    the DLN, and an optimizer step on it would train the loss to be small. Fit start raises if it does.

    Args:
        teacher: a ``Teacher`` with ``mode='lookahead'`` on the DLN that ``training_step`` uses.
        every: run a round after every ``every`` training batches (default: :data:`dynaloss.settings.TEACH_EVERY`,
            ``20``).
        student: maps the ``LightningModule`` to the module whose forward maps a batch's inputs to logits,
            e.g. ``lambda pl_module: pl_module.model`` (default: ``None``, the ``LightningModule`` itself).

    Attributes:
        last_record: the latest round's record (``None`` before the first round).

    Raises:
        TypeError: ``teacher`` is not a ``Teacher``, ``every`` not an int, ``student`` not callable.
        ValueError: ``every < 1``, or the teacher's mode is not ``'lookahead'``.
    """

    def __init__(self, teacher: Teacher, every: int = TEACH_EVERY, student: StudentFn | None = None) -> None:
        if not isinstance(teacher, Teacher):
            raise TypeError(f"teacher must be a dynaloss.Teacher, got {type(teacher).__name__}")
        _check_lookahead(teacher.mode)
        if student is not None and not callable(student):
            raise TypeError(
                f"student must be None or a callable (pl_module -> nn.Module), got {type(student).__name__}"
            )
        self.teacher = teacher
        self.every = check_positive_int(every, "every")
        self.student = student
        self.last_record: RoundRecord | None = None
        self._batches = 0  # training batches seen, across resumes: the round schedule
        # (train loader, val loader, an endless iterator over each): rebuilt when Lightning reloads a loader
        self._cycled: tuple[Any, Any, Iterator[Any], Iterator[Any]] | None = None

    # ------------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _check_lookahead(self.teacher.mode)  # it is assignable after construction
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"TeacherCallback unrolls the student's one optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        advice = "build it in configure_optimizers from the student's parameters, not self.parameters()"
        check_optimizer_excludes(optimizer, self.teacher.loss_fn, advice)
        self.teacher.student_optimizer = optimizer  # raises TypeError unless SGD, Adam or AdamW
        if trainer.world_size > 1 and self.teacher.sync is None:
            raise ValueError(
                f"the trainer runs {trainer.world_size} processes but the Teacher has no process_group: the ranks' "
                "DLNs would drift apart; pass process_group=torch.distributed.group.WORLD to the Teacher"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loaders(trainer)  # a missing validation loader fails here, not at the first round

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        if self._batches % self.every:
            return
        student = pl_module if self.student is None else self.student(pl_module)
        if not isinstance(student, nn.Module):
            raise TypeError(f"student(pl_module) must return a torch.nn.Module, got {type(student).__name__}")
        train_iter, val_iter = self._loaders(trainer)
        self.last_record = self.teacher.step(student, train_iter, val_iter)
        self._log(trainer, self.last_record)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The teacher's state (DLN, teacher model, its optimizer and memory, round count) and the batch count."""
        return {"teacher": self.teacher.state_dict(), "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            TypeError, ValueError: the state does not fit this callback's teacher; nothing is changed.
        """
        if not isinstance(state_dict, Mapping) or not {"teacher", "batches"} <= set(state_dict):
            raise ValueError("state_dict must be TeacherCallback.state_dict()'s output (keys 'teacher', 'batches')")
        batches = check_positive_int(state_dict["batches"], "state_dict['batches']", minimum=0)
        self.teacher.load_state_dict(state_dict["teacher"])  # checks everything before writing anything
        self._batches = batches

    # ---------------------------------------------------------------------------------------- helpers
    def _log(self, trainer: pl.Trainer, record: RoundRecord) -> None:
        """Write the round to every logger of the trainer, once, at the trainer's ``global_step``.

        Straight to the loggers rather than through ``pl_module.log``: Lightning would write a step metric again,
        with its last value, at every later logging step, and drop the rounds between ``log_every_n_steps``.
        """
        # the reason is text, which metrics cannot hold; the Teacher logs skips and rollbacks with it itself
        metrics = {f"teacher/{key}": float(value) for key, value in record.as_dict().items() if key != "reason"}
        metrics["teacher/dln_lr"] = self.teacher.dln_lr  # a rollback halves it
        metrics["epoch"] = trainer.current_epoch  # as Lightning's own rows carry it
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _loaders(self, trainer: pl.Trainer) -> tuple[Iterator[Any], Iterator[Any]]:
        """Endless iterators over the trainer's current loaders, rebuilt when Lightning reloads them."""
        train = _first_loader(trainer.train_dataloader)
        val = _first_loader(trainer.val_dataloaders)
        if val is None:
            # before the first validation (no sanity check) Lightning has not built the loader yet: build it now,
            # as the validation loop would; it keeps it for its own first run
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
            val = _first_loader(trainer.val_dataloaders)
        if train is None or val is None:
            raise ValueError(
                "TeacherCallback validates each round on the trainer's validation loader: give the LightningModule "
                "(or its DataModule) a val_dataloader and a validation_step, and keep limit_val_batches > 0"
            )
        cycled = self._cycled
        if cycled is None or cycled[0] is not train or cycled[1] is not val:
            cycled = self._cycled = (train, val, forever(train), forever(val))
        return cycled[2], cycled[3]
