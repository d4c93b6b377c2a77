"""Tiny synthetic datasets for the adapters' tests, examples and benchmarks: coloured squares on noise.

The class of a square is its colour, so a small network can learn both tasks in a few hundred steps.
Everything is generated from a seed; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dynaloss._checks import check_positive_int

__all__ = ["PALETTE", "SyntheticShapes", "draw_squares", "write_detection_dataset"]

# distinct, saturated colours: class k is PALETTE[k]
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240], [245, 130, 48]],
    dtype=np.uint8,
)


def draw_squares(
    rng: np.random.Generator, size: int, num_classes: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One canvas: ``(size, size, 3)`` uint8 image, ``(size, size)`` int mask (0 = background) and the boxes.

    Squares are drawn in order, so a later square covers an earlier one in the mask; boxes are the drawn
    squares ``(class, x0, y0, x1, y1)`` in pixels (exclusive end).
    """
    if num_classes > len(PALETTE):
        raise ValueError(f"num_classes must be at most {len(PALETTE)} (one colour each), got {num_classes}")
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)  # dark noise background
    mask = np.zeros((size, size), dtype=np.int64)
    boxes = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(num_classes))
        side = int(rng.integers(max(4, size // 6), max(5, size // 2)))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        image[y0 : y0 + side, x0 : x0 + side] = PALETTE[cls]
        mask[y0 : y0 + side, x0 : x0 + side] = cls + 1
        boxes.append((cls, x0, y0, x0 + side, y0 + side))
    return image, mask, boxes


def write_detection_dataset(
    root: str | Path,
    *,
    train: int = 16,
    val: int = 8,
    size: int = 64,
    num_classes: int = 3,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write a YOLO-format detection dataset of coloured squares and return its ``data.yaml``.

    Layout: ``root/images/{train,val}/*.png``, ``root/labels/{train,val}/*.txt`` (``class cx cy w h``,
    normalised) and ``root/data.yaml`` with absolute paths.
    """
    from PIL import Image

    check_positive_int(train, "train")
    check_positive_int(val, "val")
    check_positive_int(size, "size", minimum=16)
    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, _, boxes = draw_squares(rng, size, num_classes, max_objects)
            Image.fromarray(image).save(root / "images" / split / f"{index:05d}.png")
            lines = [
                f"{cls} " + " ".join(f"{v / size:.6f}" for v in ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
                for cls, x0, y0, x1, y1 in boxes
            ]
            (root / "labels" / split / f"{index:05d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {k}: square{k}\n" for k in range(num_classes))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data_yaml


class SyntheticShapes(Dataset[tuple[Tensor, Tensor]]):
    """Segmentation samples: ``(3, size, size)`` float image in [0, 1] and ``(size, size)`` int64 mask.

    Class 0 is background, classes ``1..num_classes-1`` are the square colours. With ``ignore_border > 0``
    a frame of that many pixels is labelled ``ignore_index`` (as VOC's object outlines are).
    Sample ``i`` is a function of ``(seed, i)`` only.
    """

    def __init__(
        self,
        length: int,
        *,
        size: int = 64,
        num_classes: int = 4,
        max_objects: int = 3,
        ignore_border: int = 0,
        ignore_index: int = 255,
        seed: int = 0,
    ) -> None:
        self.length = check_positive_int(length, "length")
        self.size = check_positive_int(size, "size", minimum=16)
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.max_objects = check_positive_int(max_objects, "max_objects")
        self.ignore_border = check_positive_int(ignore_border, "ignore_border", minimum=0)
        self.ignore_index = ignore_index
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, index])
        image, mask, _ = draw_squares(rng, self.size, self.num_classes - 1, self.max_objects)
        if self.ignore_border:
            b = self.ignore_border
            frame = np.ones_like(mask, dtype=bool)
            frame[b:-b, b:-b] = False
            mask[frame] = self.ignore_index
        return torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(mask)
