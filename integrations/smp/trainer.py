"""PSPNetTrainer: train a :class:`PSPNetAux` with the DLN objective (and teacher rounds) or with cross-entropy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dynaloss import RoundRecord, Teacher
from dynaloss._checks import check_positive_float, check_positive_int
from dynaloss.integrations.smp.metrics import confusion_matrix, mean_iou
from dynaloss.integrations.smp.model import PSPNetAux
from dynaloss.integrations.smp.objective import VOC_IGNORE_INDEX, PSPNetCELoss, PSPNetDLNLoss
from dynaloss.integrations.smp.stream import IndexBatches, load_batch
from dynaloss.integrations.teaching import TeachingConfig, resplit

logger = logging.getLogger(__name__)

__all__ = ["LOSSES", "PSPNetTrainer"]

LOSSES = ("dln", "ce")
SegmentationSet = Dataset[tuple[Tensor, Tensor]]
POLY_POWER = 0.9  # PSPNet's poly learning-rate schedule: lr * (1 - step / total_steps) ** 0.9


class PSPNetTrainer:
    """SGD with a poly schedule on a PSPNet, with L2T-DLN teaching its loss (``loss='dln'``) or plain CE.

    With ``loss='dln'`` the student minimises ``DLN(p, y) + 0.4 DLN(aux_p, y)`` (:class:`PSPNetDLNLoss`)
    and every ``teaching.every`` steps a :class:`dynaloss.Teacher` round updates the DLN down the
    hypergradient of ``CE(p, y) + 0.4 CE(aux_p, y)`` on held-out training images (the training set is split
    into teacher-train/teacher-val by ``teaching.val_ratio`` and re-split every epoch, as in the paper). The
    round unrolls this trainer's own SGD (momentum, weight decay, the poly-scheduled lr of the moment), so
    ``teaching.student_lr`` is not used; in ``teaching.mode='paper'`` it also writes the momentum buffers.
    With ``loss='ce'`` the same loop trains on the cross-entropy objective: the baseline.

    Every stream of batches is a function of ``seed`` and its position, so :meth:`save` / :meth:`load`
    resume a run exactly (model, optimizer, schedule, DLN, teacher and its memory, RNG, data positions).

    Args:
        model: the student.
        train_set: ``(image (3, H, W) float, mask (H, W) int64)`` samples.
        total_steps: total SGD steps; the poly schedule ends there (required).
        loss: ``'dln'`` or ``'ce'`` (default: ``'dln'``).
        teaching: teacher schedule and batch sizes (default: :class:`TeachingConfig`'s).
        batch_size: the student's batch (default: ``8``).
        lr: SGD learning rate at step 0 (default: ``0.01``). ``momentum`` (default: ``0.9``) and
            ``weight_decay`` (default: ``1e-4``) are PSPNet's.
        ignore_index: mask value that does not count (default: ``255``).
        max_pixels: pixels per image the DLN evaluates (default: ``4096``; see :class:`PSPNetDLNLoss`).
        seed: seed of every data stream (default: ``0``).
    """

    def __init__(
        self,
        model: PSPNetAux,
        train_set: SegmentationSet,
        *,
        total_steps: int | None = None,
        loss: str = "dln",
        teaching: TeachingConfig | None = None,
        batch_size: int = 8,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        ignore_index: int = VOC_IGNORE_INDEX,
        max_pixels: int | None = 4096,
        seed: int = 0,
    ) -> None:
        if total_steps is None:
            raise TypeError("PSPNetTrainer() missing the keyword argument total_steps= (the total SGD steps)")
        if not isinstance(model, PSPNetAux):
            raise TypeError(f"model must be a PSPNetAux, got {type(model).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if len(train_set) < 2:  # type: ignore[arg-type]
            raise ValueError(f"train_set holds {len(train_set)} samples; training needs at least 2")  # type: ignore[arg-type]
        self.model, self.train_set, self.loss_name = model, train_set, loss
        self.total_steps = check_positive_int(total_steps, "total_steps")
        self.teaching = teaching or TeachingConfig()
        self.seed = seed
        self.device = next(model.parameters()).device
        num_classes = model.num_classes
        self.val_loss = PSPNetCELoss(num_classes, ignore_index=ignore_index)
        self.objective: nn.Module = (
            PSPNetDLNLoss(num_classes, ignore_index=ignore_index, max_pixels=max_pixels).to(self.device)
            if loss == "dln"
            else self.val_loss
        )
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=check_positive_float(lr, "lr"),
            momentum=momentum,
            weight_decay=weight_decay,
        )
        # the poly schedule, stepped after every SGD step; 0 from total_steps on
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(
            self.optimizer, total_iters=self.total_steps, power=POLY_POWER
        )
        # the unroll follows this SGD: its momentum buffers, weight decay and the scheduled lr of the moment
        self.teacher: Teacher | None = (
            self.teaching.make_teacher(self.objective, self.val_loss, optimizer=self.optimizer)
            if loss == "dln"
            else None
        )
        if self.teacher is not None and self.total_steps < self.teaching.every:
            logger.warning(
                "no teacher round will run: the training takes %d steps and a round runs every %d; lower "
                "TeachingConfig(every=...) so that the DLN is taught",
                self.total_steps,
                self.teaching.every,
            )
        self.batches = IndexBatches(
            range(len(train_set)), check_positive_int(batch_size, "batch_size"), seed, drop_last=True
        )  # type: ignore[arg-type]
        self.step = 0
        self.records: list[dict[str, Any]] = []  # one per teacher round
        self._teacher_epoch = -1
        self._teacher_streams: tuple[IndexBatches, IndexBatches] | None = None

    # ------------------------------------------------------------------------------------------ training
    @property
    def steps(self) -> int:
        """Deprecated: :attr:`total_steps` (``teaching.steps`` is N, the steps of one teacher stage)."""
        warnings.warn(
            "PSPNetTrainer.steps is deprecated, use total_steps (the total SGD steps; steps means N per stage in "
            "Teacher)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.total_steps

    @property
    def epoch(self) -> int:
        """Passes over the training set started so far (0-based)."""
        return self.batches.position // self.batches.per_pass

    def fit(self, until: int | None = None, *, progress: bool = False) -> list[dict[str, Any]]:
        """Train up to step ``until`` (default: ``total_steps``); returns the records of this call's teacher rounds.

        Args:
            until: the step to stop at, at most ``total_steps``; call again (or after :meth:`load`) to continue.
            progress: show a progress bar with the loss and the teacher's rounds.
        """
        until = self.total_steps if until is None else until
        if not self.step <= until <= self.total_steps:
            raise ValueError(
                f"until must be in [{self.step}, {self.total_steps}] (current step, total steps), got {until}"
            )
        start = len(self.records)
        self.model.train()
        bar = _progress(until - self.step, progress)
        while self.step < until:
            images, masks = load_batch(self.train_set, next(self.batches), self.device)
            loss = self.objective(self.model(images), masks)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            if self.teacher is not None and self.step % self.teaching.every == 0:
                self._teach()
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.4f}", rounds=len(self.records))
                bar.update()
        if bar is not None:
            bar.close()
        return self.records[start:]

    def _teach(self) -> RoundRecord:
        assert self.teacher is not None
        train_iter, val_iter = self._teacher_iters()
        record = self.teacher.step(self.model, train_iter, val_iter)
        self.records.append({"step": self.step, "epoch": self.epoch, **record.as_dict()})
        return record

    def _teacher_iters(self) -> tuple[Iterator[tuple[Tensor, Tensor]], Iterator[tuple[Tensor, Tensor]]]:
        """This epoch's teacher-train and teacher-val batches (the split is re-drawn each epoch)."""
        if self._teacher_streams is None or self._teacher_epoch != self.epoch:
            self._teacher_epoch = self.epoch
            self._teacher_streams = self._streams_for(self.epoch)
        train, val = self._teacher_streams
        return (load_batch(self.train_set, b, self.device) for b in train), (
            load_batch(self.train_set, b, self.device) for b in val
        )

    def _streams_for(self, epoch: int) -> tuple[IndexBatches, IndexBatches]:
        seed = self.seed + 7919 * (epoch + 1)  # a seed per epoch, apart from the student's stream
        train_idx, val_idx = resplit(len(self.train_set), self.teaching.val_ratio, seed)  # type: ignore[arg-type]
        if len(val_idx) < self.teaching.val_batch:
            logger.warning(
                "the teacher's validation split holds %d image(s), fewer than TeachingConfig(val_batch=%d): rounds "
                "validate on %d; hold out more (val_ratio) or use more training images",
                len(val_idx),
                self.teaching.val_batch,
                len(val_idx),
            )
        return (
            IndexBatches(train_idx, self.teaching.train_batch, seed + 1),
            IndexBatches(val_idx, self.teaching.val_batch, seed + 2),
        )

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset: SegmentationSet, *, batch_size: int = 8) -> dict[str, Any]:
        """mIoU, per-class IoU and pixel accuracy of the main head on ``dataset`` (the model's mode is restored)."""
        was_training = self.model.training
        self.model.eval()
        num_classes = self.model.num_classes
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=self.device)
        ignore = self.val_loss.ignore_index
        for start in range(0, len(dataset), batch_size):  # type: ignore[arg-type]
            indices = list(range(start, min(start + batch_size, len(dataset))))  # type: ignore[arg-type]
            images, masks = load_batch(dataset, indices, self.device)
            prediction = self.model(images).main.argmax(1)
            confusion += confusion_matrix(prediction, masks, num_classes, ignore)
        self.model.train(was_training)
        miou, per_class = mean_iou(confusion.cpu())
        total = int(confusion.sum())
        return {
            "miou": miou,
            "per_class_iou": per_class.tolist(),
            "pixel_accuracy": float(confusion.diag().sum()) / total if total else float("nan"),
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, the DLN and the teacher (its memory included) among it."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "step": self.step,
            "batches": self.batches.position,
            "teacher_epoch": self._teacher_epoch,
            "teacher_positions": None if self._teacher_streams is None else [s.position for s in self._teacher_streams],
            "records": list(self.records),
            "rng": torch.get_rng_state(),
            "config": {
                "loss": self.loss_name,
                "total_steps": self.total_steps,
                "seed": self.seed,
                "teaching": self.teaching.as_dict(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        config = state["config"]
        total_steps = config["total_steps"] if "total_steps" in config else config["steps"]  # older files: "steps"
        if (config["loss"], total_steps, config["seed"]) != (self.loss_name, self.total_steps, self.seed):
            raise ValueError(
                f"checkpoint was trained with loss={config['loss']!r}, total_steps={total_steps}, "
                f"seed={config['seed']}; this trainer has loss={self.loss_name!r}, total_steps={self.total_steps}, "
                f"seed={self.seed}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.step = int(state["step"])
        self.batches.position = int(state["batches"])
        self._teacher_epoch = int(state["teacher_epoch"])
        self._teacher_streams = None
        if state["teacher_positions"] is not None:
            self._teacher_streams = self._streams_for(self._teacher_epoch)
            for stream, position in zip(self._teacher_streams, state["teacher_positions"]):
                stream.position = int(position)
        self.records = list(state["records"])
        torch.set_rng_state(state["rng"])

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def load(self, path: str | Path) -> None:
        """Resume from a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"checkpoint {str(path)!r} does not exist")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", mininterval=1.0, leave=False)
