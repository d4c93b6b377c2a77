"""DLNDetectionTrainer: ultralytics' DetectionTrainer, training with a Dynamic Loss Network that a teacher adapts."""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

import torch
from ultralytics.data import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, USER_CONFIG_DIR
from ultralytics.utils.torch_utils import unwrap_model

from dynaloss import MultiPartDLN, RoundRecord, Teacher
from dynaloss.integrations.teaching import TeachingConfig
from dynaloss.integrations.ultralytics.loss import PART_NAMES, DLNDetectionLoss, loss_gains
from dynaloss.integrations.ultralytics.offline import provide_fonts
from dynaloss.integrations.ultralytics.rounds import RoundBatches

__all__ = ["CHECKPOINT_KEY", "DLNDetectionTrainer"]

CHECKPOINT_KEY = "dynaloss"  # where the DLN and teacher live inside ultralytics' checkpoint dict


class DLNDetectionTrainer(DetectionTrainer):
    """Train a YOLO detector as ultralytics does, with L2T-DLN teaching its loss.

    The criterion is :class:`DLNDetectionLoss`: ultralytics' box/cls/dfl parts weighted by a
    :class:`dynaloss.MultiPartDLN` that starts at ultralytics' gains. Every ``teaching.every`` batches a
    :class:`dynaloss.Teacher` round unrolls ``teaching.steps`` steps of ultralytics' own optimizer (SGD with
    Nesterov momentum, Adam or AdamW: its state, and each param group's current learning rate, momentum and
    weight decay, so warmup and the schedule are followed; ``teaching.student_lr`` is not used) on a
    functional copy of the student and updates the DLN down the hypergradient of the original objective on
    held-out training images (re-split every epoch). In the default ``'lookahead'`` mode ultralytics'
    optimizer alone moves the student; ``mode='paper'`` also writes the unrolled steps, and the optimizer's
    state after them, into it. ``optimizer`` must be ``'SGD'``, ``'Adam'``, ``'AdamW'`` or ``'auto'`` for a
    run short enough that ``'auto'`` picks AdamW (ultralytics picks MuSGD beyond 10000 iterations).

    One DLN and one teacher serve the model, its EMA and the validator; the DLN is not in the model's module
    tree, so the student's optimizer never sees it. Both are saved inside ultralytics' checkpoints (key
    ``'dynaloss'``) and restored on ``resume=True``; the learned part weights are logged each epoch and
    written to ``results.csv`` as ``dln/box``, ``dln/cls``, ``dln/dfl``. The saved model itself stays a plain
    ``DetectionModel``, so ``YOLO('best.pt')`` loads it without dynaloss.

    Nothing is downloaded: ``data`` must be a local dataset (a URL or missing images raise ``ValueError``),
    and ``amp`` defaults to ``False`` because ultralytics' AMP check downloads weights (``amp='bf16'`` skips
    that check on GPUs). Runs on one device.

    Args:
        cfg: ultralytics' configuration (default: its defaults).
        overrides: ultralytics' training arguments (``model``, ``data``, ``epochs``, ``imgsz``, ...).
        _callbacks: ultralytics' callbacks.
        teaching: when and how the teacher runs (default: :class:`TeachingConfig`'s defaults).

    Example::

        trainer = DLNDetectionTrainer(overrides=dict(model="yolov3-tiny.yaml", data="data.yaml", epochs=10))
        trainer.train()
        trainer.criterion.dln.weight  # the learned (box, cls, dfl) gains, exp(dln.log_weight)
    """

    def __init__(
        self,
        cfg: Any = DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict[str, list[Any]] | None = None,
        *,
        teaching: TeachingConfig | None = None,
    ) -> None:
        if teaching is not None and not isinstance(teaching, TeachingConfig):
            raise TypeError(f"teaching must be a TeachingConfig, got {type(teaching).__name__}")
        # Outputs go under ./runs of the directory the user runs from, unless project= says otherwise:
        # ultralytics' own default (its settings' runs_dir) lands inside a source checkout holding the venv.
        overrides = {"amp": False, "project": str(Path.cwd() / "runs"), **(overrides or {})}
        if overrides.get("compile"):
            raise ValueError(f"compile={overrides['compile']!r} is not supported: torch.compile has no double backward")
        self.teaching = teaching or TeachingConfig()
        super().__init__(cfg, overrides, _callbacks)
        if self.world_size > 1:
            raise ValueError(f"DLNDetectionTrainer runs on one device, got device={self.args.device!r}")
        LOGGER.info(f"DLNDetectionTrainer writes this run to {self.save_dir} (set project= and name= to choose)")
        self.dln = MultiPartDLN(len(PART_NAMES), loss_gains(self))
        self.criterion: DLNDetectionLoss | None = None
        self.teacher: Teacher | None = None
        self.rounds: RoundBatches | None = None
        self.dln_history: list[dict[str, Any]] = []  # one entry per epoch
        self.epoch_records: list[RoundRecord] = []
        self.batches_seen = 0
        self._saved_state: dict[str, Any] | None = None
        self.add_callback("on_train_epoch_start", DLNDetectionTrainer._start_epoch)
        self.add_callback("on_train_batch_end", DLNDetectionTrainer._after_batch)
        self.add_callback("on_train_epoch_end", DLNDetectionTrainer._end_epoch)

    # ------------------------------------------------------------------------------------------ data
    def get_dataset(self) -> dict[str, Any]:
        """Check that the dataset is local (never download it), then let ultralytics read it."""
        data = str(self.args.data)
        if "://" in data:
            raise ValueError(f"data={data!r} is a URL; DLNDetectionTrainer reads local datasets only")
        provide_fonts(USER_CONFIG_DIR)  # the dataset check asks for a font, online unless one is here
        try:
            check_det_dataset(data, autodownload=False)
        except FileNotFoundError as error:
            raise ValueError(f"data={data!r}: the dataset is not on this machine ({error})") from None
        return super().get_dataset()

    # ------------------------------------------------------------------------------------------ setup
    def _setup_train(self) -> None:
        super()._setup_train()
        model = unwrap_model(self.model)
        self.dln.to(self.device)
        # one criterion for the model and its copies: the EMA (which the validator scores) shares it
        self.criterion = DLNDetectionLoss(model, self.dln)
        model.criterion = self.criterion
        self.ema.ema.criterion = self.criterion
        try:  # the unroll follows ultralytics' optimizer, built by super()._setup_train()
            self.teacher = self.teaching.make_teacher(
                self.criterion.objective, self.criterion.validation_error, optimizer=self.optimizer
            )
        except TypeError as error:
            raise TypeError(
                f"optimizer={self.args.optimizer!r} built a {type(self.optimizer).__name__}, whose steps a teacher "
                f"round cannot unroll ({error}); pass optimizer='SGD', 'Adam' or 'AdamW'"
            ) from None
        plain = build_yolo_dataset(
            self.args,
            self.data["train"],
            self.teaching.val_batch,
            self.data,
            mode="val",
            rect=False,
            stride=self.stride,
        )
        self.rounds = RoundBatches(
            self.train_loader.dataset, plain, self.teaching, self.preprocess_batch, seed=int(self.args.seed)
        )
        if self._saved_state is not None:
            self._restore(self._saved_state)

    def resume_training(self, ckpt: dict[str, Any] | None) -> None:
        super().resume_training(ckpt)
        if ckpt is not None and self.resume:
            if CHECKPOINT_KEY not in ckpt:
                raise ValueError(
                    f"{self.args.model} has no {CHECKPOINT_KEY!r} state: it was not saved by DLNDetectionTrainer"
                )
            self._saved_state = ckpt[CHECKPOINT_KEY]  # restored once the teacher exists, end of _setup_train

    # ------------------------------------------------------------------------------------------ teaching
    def _start_epoch(self) -> None:
        assert self.rounds is not None
        # the train loader may have been rebuilt (mosaic closed, OOM retry): follow its dataset
        self.rounds.augmented = self.train_loader.dataset
        self.rounds.start_epoch(self.epoch)
        self.epoch_records = []
        held_out, wanted = self.rounds.val_images, self.teaching.val_batch
        if held_out < wanted:
            LOGGER.warning(
                f"the teacher's validation split holds {held_out} image(s), fewer than TeachingConfig(val_batch="
                f"{wanted}): rounds validate on {held_out}; hold out more (val_ratio) or use more training images"
            )

    def _after_batch(self) -> None:
        self.batches_seen += 1
        if self.batches_seen % self.teaching.every:
            return
        assert self.teacher is not None and self.rounds is not None and self.criterion is not None
        assert self.rounds.train is not None and self.rounds.val is not None
        # Each unrolled step is one optimizer step on teaching.train_batch images, while ultralytics steps on
        # the gradient of B·DLN(parts) summed over `accumulate` batches (accumulate ramps up during warmup).
        # Scaling the unrolled loss by the images per real step gives its steps the real ones' length in
        # expectation; the unroll stays an approximation of them: a few images stand for B·accumulate, and
        # ultralytics clips the summed gradient to norm 10 (AMP's scaler unscales before the step: neutral).
        self.criterion.objective.scale = float(self.batch_size * self.accumulate)
        record = self.teacher.step(unwrap_model(self.model), self.rounds.train, self.rounds.val)
        self.epoch_records.append(record)
        if record.skipped:
            LOGGER.warning(f"teacher round {record.round} skipped: {record.reason}")

    def _end_epoch(self) -> None:
        assert self.criterion is not None
        done = [r for r in self.epoch_records if not r.skipped]
        entry = {
            "epoch": self.epoch + 1,
            **self.criterion.objective.part_weights(),
            "rounds": len(self.epoch_records),
            "skipped": len(self.epoch_records) - len(done),
            "val_error_before": statistics.fmean(r.val_error_before for r in done) if done else float("nan"),
            "val_error_after": statistics.fmean(r.val_error_after for r in done) if done else float("nan"),
            "seconds_per_round": statistics.fmean(r.seconds for r in done) if done else float("nan"),
        }
        self.dln_history.append(entry)
        if not self.epoch_records:
            LOGGER.warning(
                f"no teacher round ran in epoch {entry['epoch']}: it had {len(self.train_loader)} batches and a round "
                f"runs every {self.teaching.every}; lower TeachingConfig(every=...) so that the DLN is taught"
            )
        elif not done:
            reasons = sorted({str(r.reason) for r in self.epoch_records})
            LOGGER.warning(
                f"every teacher round of epoch {entry['epoch']} was skipped ({len(self.epoch_records)}), so the DLN "
                f"did not change: {'; '.join(reasons)[:300]}"
            )
        weights = ", ".join(f"{name}={entry[name]:.4g}" for name in PART_NAMES)
        LOGGER.info(
            f"DLN part weights after epoch {entry['epoch']}: {weights} ({entry['rounds']} teacher rounds, "
            f"validation error {entry['val_error_before']:.4g} -> {entry['val_error_after']:.4g})"
        )

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        """ultralytics' results.csv, with the DLN's part weights as extra columns."""
        weights = self.criterion.objective.part_weights() if self.criterion is not None else {}
        super().save_metrics({**metrics, **{f"dln/{name}": value for name, value in weights.items()}})

    # ------------------------------------------------------------------------------------------ checkpoints
    def dln_state(self) -> dict[str, Any]:
        """What a resumed run needs: the teacher (DLN included), the batch count, the history, the config."""
        assert self.teacher is not None
        return {
            "teacher": self.teacher.state_dict(),
            "batches_seen": self.batches_seen,
            "history": list(self.dln_history),
            "teaching": self.teaching.as_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.teacher is not None
        self.teacher.load_state_dict(state["teacher"])
        self.batches_seen = int(state["batches_seen"])
        self.dln_history = list(state["history"])

    def save_model(self) -> bool:
        """ultralytics' checkpoints, with :meth:`dln_state` added under ``'dynaloss'`` in each file written."""
        saved = super().save_model()
        if not saved:
            return saved
        # ultralytics serialises its dict in one go; reopen the file it wrote rather than copying its method
        ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
        ckpt[CHECKPOINT_KEY] = self.dln_state()
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        payload = buffer.getvalue()
        self.last.write_bytes(payload)
        if self.best_fitness == self.fitness:
            self.best.write_bytes(payload)
        if self.save_period > 0 and self.epoch % self.save_period == 0:
            (self.wdir / f"epoch{self.epoch}.pt").write_bytes(payload)
        return saved
