"""The YOLO adapter's experiments: one training run with the DLN or with ultralytics' own loss, and shrunken
copies of ultralytics' model configs, for the examples, benchmarks and tests (``pip install dynaloss[ultralytics]``).
"""

from __future__ import annotations

# the adapter first: importing it keeps ultralytics' own import off the network (mypy checks dynaloss/ alone,
# where the adapters, installed as dynaloss.integrations, are not)
from dynaloss.integrations.ultralytics import DLNDetectionTrainer  # type: ignore[import-not-found]

# isort: split
import time
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import yaml_model_load

from dynaloss.integrations.teaching import TeachingConfig  # type: ignore[import-not-found]

__all__ = ["ARMS", "scaled_config", "train_yolo", "write_scaled_config"]

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
    metrics: dict[str, Any] = trainer.metrics or {}
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


def scaled_config(name: str, width_multiple: float = 1.0, depth_multiple: float = 1.0) -> dict[str, Any]:
    """ultralytics' model config ``name`` (e.g. ``'yolov3-tiny.yaml'``) with its width and depth scaled.

    ``width_multiple=0.125`` turns YOLOv3-tiny's 8.7M parameters into 0.3M, which trains on a CPU in seconds.
    """
    if not 0 < width_multiple <= 4 or not 0 < depth_multiple <= 4:
        raise ValueError(f"width_multiple and depth_multiple must be in (0, 4], got {width_multiple}, {depth_multiple}")
    config = yaml_model_load(name)
    config.pop("yaml_file", None)  # the copy is its own file, not the packaged one
    config["width_multiple"] = config.get("width_multiple", 1.0) * width_multiple
    config["depth_multiple"] = config.get("depth_multiple", 1.0) * depth_multiple
    return config


def write_scaled_config(path: str | Path, name: str, width_multiple: float = 1.0, depth_multiple: float = 1.0) -> Path:
    """Write :func:`scaled_config` to ``path`` (a ``.yaml`` a trainer's ``model=`` accepts); returns the path."""
    path = Path(path)
    if path.suffix not in {".yaml", ".yml"}:
        raise ValueError(f"path must end in .yaml, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scaled_config(name, width_multiple, depth_multiple), sort_keys=False))
    return path
