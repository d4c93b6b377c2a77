"""One detection training run, with the DLN or with ultralytics' original loss: what examples and benchmarks compare."""

from __future__ import annotations

import time
from typing import Any

from ultralytics.models.yolo.detect import DetectionTrainer

from dynaloss.integrations.teaching import TeachingConfig
from dynaloss.integrations.ultralytics.trainer import DLNDetectionTrainer

__all__ = ["ARMS", "train_yolo"]

ARMS = ("dln", "original")


def train_yolo(arm: str, overrides: dict[str, Any], teaching: TeachingConfig | None = None) -> dict[str, Any]:
    """Train one arm with the same ultralytics ``overrides`` and return its final metrics.

    Args:
        arm: ``'dln'`` (:class:`DLNDetectionTrainer`) or ``'original'`` (ultralytics' ``DetectionTrainer``;
            ``amp`` defaults to ``False`` for it too, so both arms run alike and offline).
        overrides: ultralytics' training arguments.
        teaching: the teacher's schedule for the ``'dln'`` arm.

    Returns:
        ``{'arm', 'mAP50', 'mAP50-95', 'seconds', 'save_dir', 'dln_weights', 'teacher_rounds', 'history'}``.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    overrides = {"amp": False, **overrides}
    started = time.perf_counter()
    if arm == "dln":
        trainer: DetectionTrainer = DLNDetectionTrainer(overrides=overrides, teaching=teaching)
    else:
        trainer = DetectionTrainer(overrides=overrides)
    trainer.train()
    metrics = trainer.metrics or {}
    result: dict[str, Any] = {
        "arm": arm,
        "mAP50": float(metrics.get("metrics/mAP50(B)", float("nan"))),
        "mAP50-95": float(metrics.get("metrics/mAP50-95(B)", float("nan"))),
        "seconds": time.perf_counter() - started,
        "save_dir": str(trainer.save_dir),
        "dln_weights": None,
        "teacher_rounds": 0,
        "history": [],
    }
    if isinstance(trainer, DLNDetectionTrainer) and trainer.criterion is not None and trainer.teacher is not None:
        result["dln_weights"] = trainer.criterion.objective.part_weights()
        result["teacher_rounds"] = trainer.teacher.rounds
        result["history"] = trainer.dln_history
    return result
