"""Embedded data sets and the paper's train/val split, re-drawn every epoch.

Nothing here reaches the network: MNIST-1D is generated locally, sklearn's digits ship with sklearn, and
CIFAR is read from a directory the user gives. Every loader returns a :class:`Dataset` of tensors.

L2T-DLN needs two streams from one training set: training batches for the student's steps and validation
batches for the teacher's validation error. :class:`EpochSplit` splits the training set by ``val_ratio``
and re-draws the split at every epoch, as the paper does; its randomness comes only from its ``seed``.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from dynaloss._checks import check_positive_int

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "Dataset",
    "EpochSplit",
    "augment_cifar",
    "load_cifar",
    "load_digits",
    "load_mnist1d",
]

# Per-channel statistics of the CIFAR-10 training images (in [0, 1]), the usual normalisation.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

Transform = Callable[[Tensor, torch.Generator], Tensor]


class Dataset(NamedTuple):
    """A classification data set as tensors; unpacks as ``x_train, y_train, x_test, y_test``.

    Attributes:
        x_train: ``(N, ...)`` float32 inputs.
        y_train: ``(N,)`` int64 class indices.
        x_test: ``(M, ...)`` float32 inputs.
        y_test: ``(M,)`` int64 class indices.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_classes(self) -> int:
        """One more than the largest label in either part."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def to(self, device: torch.device | str) -> Dataset:
        """The same tensors on ``device``."""
        return Dataset(*(t.to(device) for t in self))


# ------------------------------------------------------------------------------------------------ loaders
def load_mnist1d(seed: int = 42) -> Dataset:
    """MNIST-1D generated locally (Greydanus 2020): 4000 train / 1000 test sequences of length 40, 10 classes.

    ``seed=42`` is the standard data set. mnist1d seeds numpy's and Python's global random generators;
    their states are restored afterwards, so loading leaves the caller's randomness as it was. Takes ~1 s.

    Args:
        seed: the generator's seed (default: ``42``).

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, 1, 40)`` (float32, zero mean and unit std over the whole
        set) and ``y`` of shape ``(N,)``.
    """
    check_positive_int(seed, "seed", minimum=0)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x_train, x_test = (torch.from_numpy(np.asarray(data[k], dtype=np.float32)).unsqueeze(1) for k in ("x", "x_test"))
    y_train, y_test = (torch.from_numpy(np.asarray(data[k], dtype=np.int64)) for k in ("y", "y_test"))
    return Dataset(x_train, y_train, x_test, y_test)


def load_digits(test_size: int = 297, seed: int = 0) -> Dataset:
    """sklearn's 8x8 handwritten digits (1797 images, 10 classes) with a fixed train/test split.

    The default split is 1500 train / 297 test, drawn by a permutation seeded with ``seed``, so every call
    returns the same split. Pixels are scaled from ``[0, 16]`` to ``[0, 1]``.

    Args:
        test_size: number of test images (default: ``297``).
        seed: seed of the split (default: ``0``).

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, 1, 8, 8)`` (float32) and ``y`` of shape ``(N,)``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    total = len(bunch.target)
    if not 0 < check_positive_int(test_size, "test_size", minimum=0) < total:
        raise ValueError(f"test_size must lie in [1, {total - 1}], got {test_size}")
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    return Dataset(x[train], y[train], x[test], y[test])


def _cifar_files(root: Path, num_classes: int) -> tuple[list[Path], Path, bytes]:
    """The training files, the test file and the label key of CIFAR-``num_classes`` under ``root``."""
    if num_classes == 10:
        folder, train, test, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            b"labels",
        )
    elif num_classes == 100:
        folder, train, test, key = "cifar-100-python", ["train"], "test", b"fine_labels"
    else:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR data directory {str(root)!r} does not exist")
    base = root if root.name == folder else root / folder
    needed = [base / name for name in train] + [base / test]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found under {str(root)!r}: expected the python-pickle layout "
            f"{folder}/{{{', '.join([*train, test])}}} (the archive from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, unpacked); missing {missing}"
        )
    return needed[:-1], needed[-1], key


def _read_cifar_file(path: Path, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    if b"data" not in entry or key not in entry:
        raise ValueError(f"{str(path)!r} is not a CIFAR python-pickle batch (it lacks b'data' or {key!r})")
    return np.asarray(entry[b"data"], dtype=np.uint8), np.asarray(entry[key], dtype=np.int64)


def load_cifar(root: str | Path, num_classes: int = 10) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the python-pickle archive unpacked under ``root`` (nothing is downloaded).

    ``root`` may be the folder that holds ``cifar-10-batches-py`` / ``cifar-100-python`` or that folder
    itself. Images are scaled to ``[0, 1]`` and normalised with :data:`CIFAR_MEAN` / :data:`CIFAR_STD`.

    Args:
        root: the data directory.
        num_classes: ``10`` or ``100`` (default: ``10``); CIFAR-100 uses its fine labels.

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, 3, 32, 32)`` (float32; 50000 train, 10000 test).

    Raises:
        FileNotFoundError: ``root`` or a file of the archive is missing (the message names what was expected).
        ValueError: ``num_classes`` is not 10 or 100, or a file is not a CIFAR batch.
    """
    train_files, test_file, key = _cifar_files(Path(root), num_classes)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def read(paths: list[Path]) -> tuple[Tensor, Tensor]:
        parts = [_read_cifar_file(p, key) for p in paths]
        pixels = torch.from_numpy(np.concatenate([p[0] for p in parts])).view(-1, 3, 32, 32)
        return (pixels.float() / 255.0 - mean) / std, torch.from_numpy(np.concatenate([p[1] for p in parts]))

    return Dataset(*read(train_files), *read([test_file]))


def augment_cifar(x: Tensor, generator: torch.Generator) -> Tensor:
    """The standard CIFAR augmentation: random 32x32 crop of the 4-pixel zero-padded image, random h-flip.

    Args:
        x: ``(B, C, H, W)`` images.
        generator: the random source (a CPU generator).

    Returns:
        ``(B, C, H, W)`` augmented images.
    """
    batch, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (batch,), generator=generator).to(x.device)
    dx = torch.randint(0, 9, (batch,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[index, channels, rows, cols]
    flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


# ------------------------------------------------------------------------------------------------- split
def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from the integer tuple ``key``; different keys give independent streams."""
    (state,) = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state))


class EpochSplit:
    """Splits a training set into train/val by ``val_ratio`` and re-draws the split every epoch.

    An epoch is one pass of the training stream over its part: :meth:`train_batches` yields the shuffled
    train part in batches, and when it runs out a new epoch starts with a new random split. The val stream
    (:meth:`val_batches`) draws from the current epoch's val part, reshuffling it when it runs out within an
    epoch. Incomplete batches at the end of a pass are dropped. The split and the train order depend only
    on ``seed`` and the epoch, never on how many val batches were taken, so two splits with the same seed
    give the same training batches whether or not one of them is also asked for validation batches.

    Args:
        x: ``(N, ...)`` inputs; batches are on its device.
        y: ``(N,)`` targets.
        val_ratio: share of the set in the val part, in ``(0, 1)`` (default: ``0.5``, the paper's).
        train_batch_size: samples per train batch (default: ``25``).
        val_batch_size: samples per val batch (default: ``100``).
        seed: seed of every random draw (default: ``0``).
        transform: optional ``f(x, generator) -> x`` applied to train batches (augmentation); its generator
            is seeded per batch, so resuming from :meth:`state_dict` reproduces it.

    Example::

        >>> split = EpochSplit(x, y, val_ratio=0.5, seed=0)
        >>> teacher.step(student, split.train_batches(), split.val_batches())
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        val_ratio: float = 0.5,
        train_batch_size: int = 25,
        val_batch_size: int = 100,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"x and y must be torch.Tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.dim() == 0 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (N, ...) and y (N,), got shapes {tuple(x.shape)} and {tuple(y.shape)}")
        if isinstance(val_ratio, bool) or not isinstance(val_ratio, (int, float)):
            raise TypeError(f"val_ratio must be a float, got {type(val_ratio).__name__}")
        if not 0.0 < val_ratio < 1.0:
            raise ValueError(f"val_ratio must lie in (0, 1), got {val_ratio}")
        self.train_batch_size = check_positive_int(train_batch_size, "train_batch_size", minimum=1)
        self.val_batch_size = check_positive_int(val_batch_size, "val_batch_size", minimum=1)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.num_val = round(len(y) * val_ratio)
        self.num_train = len(y) - self.num_val
        for part, size, batch in (("train", self.num_train, train_batch_size), ("val", self.num_val, val_batch_size)):
            if size < batch:
                raise ValueError(
                    f"val_ratio={val_ratio} leaves {size} of {len(y)} samples in the {part} part, fewer than "
                    f"one batch of {batch}; change val_ratio or the {part} batch size"
                )
        self.x, self.y, self.val_ratio, self.transform = x, y, float(val_ratio), transform
        self.epoch = 0
        self._train_pos = 0  # batches taken from this epoch's train part
        self._val_pass = 0  # passes over this epoch's val part
        self._val_pos = 0  # batches taken in this pass
        self._split = self._draw_split()

    @property
    def train_batches_per_epoch(self) -> int:
        """Full train batches in one epoch."""
        return self.num_train // self.train_batch_size

    def _draw_split(self) -> tuple[Tensor, Tensor]:
        order = torch.randperm(len(self.y), generator=_generator(self.seed, self.epoch, 0))
        return order[: self.num_train], order[self.num_train :]

    def split_indices(self) -> tuple[Tensor, Tensor]:
        """``(train, val)`` indices into ``x`` of the current epoch; train in the order it is served."""
        return self._split[0].clone(), self._split[1].clone()

    def _take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self.x.device)
        return self.x[index], self.y[index]

    def next_train(self) -> tuple[Tensor, Tensor]:
        """The next ``(x, y)`` train batch; the first batch after the train part runs out starts a new epoch."""
        if self._train_pos == self.train_batches_per_epoch:
            self.epoch += 1
            self._train_pos = self._val_pass = self._val_pos = 0
            self._split = self._draw_split()
        start = self._train_pos * self.train_batch_size
        x, y = self._take(self._split[0][start : start + self.train_batch_size])
        if self.transform is not None:
            x = self.transform(x, _generator(self.seed, self.epoch, 2, self._train_pos))
        self._train_pos += 1
        return x, y

    def next_val(self) -> tuple[Tensor, Tensor]:
        """The next ``(x, y)`` batch from the current epoch's val part."""
        if self._val_pos == self.num_val // self.val_batch_size:
            self._val_pass, self._val_pos = self._val_pass + 1, 0
        val = self._split[1]
        if self._val_pass > 0:  # later passes within an epoch reshuffle the same part
            val = val[torch.randperm(len(val), generator=_generator(self.seed, self.epoch, 1, self._val_pass))]
        start = self._val_pos * self.val_batch_size
        self._val_pos += 1
        return self._take(val[start : start + self.val_batch_size])

    def train_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless iterator of train batches (all iterators share this split's position)."""
        while True:
            yield self.next_train()

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless iterator of val batches (all iterators share this split's position)."""
        while True:
            yield self.next_val()

    def state_dict(self) -> dict[str, Any]:
        """The position in the streams; with the same data and arguments, resuming continues exactly."""
        return {
            "seed": self.seed,
            "val_ratio": self.val_ratio,
            "epoch": self.epoch,
            "train_pos": self._train_pos,
            "val_pass": self._val_pass,
            "val_pos": self._val_pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; existing iterators continue from the restored position."""
        missing = {"seed", "val_ratio", "epoch", "train_pos", "val_pass", "val_pos"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass the output of EpochSplit.state_dict()")
        if state["seed"] != self.seed or state["val_ratio"] != self.val_ratio:
            raise ValueError(
                f"state comes from a split with seed={state['seed']}, val_ratio={state['val_ratio']}; "
                f"this one has seed={self.seed}, val_ratio={self.val_ratio}"
            )
        self.epoch = check_positive_int(state["epoch"], "epoch", minimum=0)
        self._train_pos = check_positive_int(state["train_pos"], "train_pos", minimum=0)
        self._val_pass = check_positive_int(state["val_pass"], "val_pass", minimum=0)
        self._val_pos = check_positive_int(state["val_pos"], "val_pos", minimum=0)
        self._split = self._draw_split()
