"""Shrunken copies of ultralytics' model configs, for tests, examples and CPU benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ultralytics.nn.tasks import yaml_model_load

__all__ = ["scaled_config", "write_scaled_config"]


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
