"""PASCAL VOC 2012 segmentation read from a local directory (never downloaded), as fixed-size crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dynaloss._checks import check_positive_int

__all__ = ["VOC_CLASSES", "VOCSegmentation"]

VOC_CLASSES = 21  # background + 20 object classes
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet statistics, what PSPNet encoders expect
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class VOCSegmentation(Dataset[tuple[Tensor, Tensor]]):
    """VOC 2012 images and ``SegmentationClass`` masks, cropped (and padded with 255) to ``crop x crop``.

    Args:
        root: the ``VOC2012`` directory (with ``JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation``)
            or a directory holding ``VOCdevkit/VOC2012``.
        split: ``'train'`` or ``'val'`` (a file under ``ImageSets/Segmentation``).
        crop: side of the square crop, a multiple of the model's output stride (default: ``320``).
        train: random crops and horizontal flips (``True``) or a centre crop (default: ``split == 'train'``).
        seed: seed of the random crops.
    """

    def __init__(
        self, root: str | Path, split: str = "train", *, crop: int = 320, train: bool | None = None, seed: int = 0
    ) -> None:
        base = Path(root)
        if (base / "VOCdevkit" / "VOC2012").is_dir():
            base = base / "VOCdevkit" / "VOC2012"
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise ValueError(
                f"root={str(root)!r} is not a VOC 2012 directory: {listing} does not exist "
                f"(expected JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{split}.txt)"
            )
        self.base = base
        self.names = listing.read_text().split()
        self.crop = check_positive_int(crop, "crop")
        self.train = split == "train" if train is None else train
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        name = self.names[index]
        image = (
            np.asarray(Image.open(self.base / "JPEGImages" / f"{name}.jpg").convert("RGB"), np.float32) / 255 - _MEAN
        ) / _STD
        mask = np.asarray(
            Image.open(self.base / "SegmentationClass" / f"{name}.png"), dtype=np.int64
        )  # palette indices
        image, mask = self._crop(image, mask)
        if self.train and self.rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(mask.copy())

    def _crop(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = mask.shape
        pad_h, pad_w = max(self.crop - height, 0), max(self.crop - width, 0)
        if pad_h or pad_w:  # pad: zeros in the (normalised) image, ignore in the mask
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=255)
            height, width = mask.shape
        if self.train:
            top, left = int(self.rng.integers(height - self.crop + 1)), int(self.rng.integers(width - self.crop + 1))
        else:
            top, left = (height - self.crop) // 2, (width - self.crop) // 2
        return image[top : top + self.crop, left : left + self.crop], mask[
            top : top + self.crop, left : left + self.crop
        ]
