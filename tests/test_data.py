"""Embedded data sets and the epoch-wise train/val re-split."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dynaloss.harness.data import EpochSplit, augment_cifar, load_cifar, load_digits, load_mnist1d


def indexed_split(n: int = 100, **kwargs: object) -> EpochSplit:
    """A split whose inputs are their own indices, so every batch says which samples it holds."""
    x = torch.arange(n, dtype=torch.float32)[:, None]
    sizes = {"train_batch_size": 10, "val_batch_size": 10}
    return EpochSplit(x, torch.arange(n) % 10, **{**sizes, **kwargs})  # type: ignore[arg-type]


def epoch_train_indices(split: EpochSplit) -> list[int]:
    return [int(v) for _ in range(split.train_batches_per_epoch) for v in split.next_train()[0].flatten()]


# ---------------------------------------------------------------------------------------------------- loaders
def test_load_mnist1d_shapes_dtypes_and_leaves_global_rngs_alone() -> None:
    np_state, py_state = np.random.get_state(legacy=False), random.getstate()
    data = load_mnist1d()
    after = np.random.get_state(legacy=False)
    assert (
        np.array_equal(after["state"]["key"], np_state["state"]["key"])
        and after["state"]["pos"] == np_state["state"]["pos"]
    )
    assert random.getstate() == py_state
    assert data.x_train.shape == (4000, 1, 40) and data.x_train.dtype == torch.float32
    assert data.y_train.shape == (4000,) and data.y_train.dtype == torch.int64
    assert data.x_test.shape == (1000, 1, 40) and data.y_test.shape == (1000,)
    assert data.num_classes == 10
    x_train, *_ = data  # unpacks as a 4-tuple
    assert x_train is data.x_train


def test_load_digits_is_a_fixed_split_of_all_images() -> None:
    first, second = load_digits(), load_digits()
    assert first.x_train.shape == (1500, 1, 8, 8) and first.x_test.shape == (297, 1, 8, 8)
    assert torch.equal(first.x_test, second.x_test) and torch.equal(first.y_train, second.y_train)
    assert 0.0 <= float(first.x_train.min()) and float(first.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=0)


def write_fake_cifar(root: Path, num_classes: int, per_file: int = 3) -> None:
    folder, train, test, key = {
        10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
        100: ("cifar-100-python", ["train"], "test", b"fine_labels"),
    }[num_classes]
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*train, test]:
        entry = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), key: [num_classes - 1] * per_file}
        (root / folder / name).write_bytes(pickle.dumps(entry))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_load_cifar_reads_the_python_pickle_layout(tmp_path: Path, num_classes: int) -> None:
    write_fake_cifar(tmp_path, num_classes)
    data = load_cifar(tmp_path, num_classes=num_classes)
    train_files = 5 if num_classes == 10 else 1
    assert data.x_train.shape == (3 * train_files, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.num_classes == num_classes and data.x_train.dtype == torch.float32


def test_load_cifar_names_the_missing_path_and_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar(tmp_path, num_classes=100)
    with pytest.raises(ValueError, match="10 or 100"):
        load_cifar(tmp_path, num_classes=7)


def test_augment_cifar_keeps_shape_and_is_reproducible() -> None:
    x = torch.randn(6, 3, 32, 32)
    first = augment_cifar(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape
    assert torch.equal(first, augment_cifar(x, torch.Generator().manual_seed(1)))


# ------------------------------------------------------------------------------------------------------ split
def test_split_is_a_partition_with_the_requested_val_ratio() -> None:
    split = indexed_split(100, val_ratio=0.3, train_batch_size=10, val_batch_size=5)
    train, val = split.split_indices()
    assert len(val) == 30 and len(train) == 70
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))


def test_every_epoch_serves_its_train_part_once_and_draws_a_new_split() -> None:
    split = indexed_split(100, val_ratio=0.5, train_batch_size=10, val_batch_size=10)
    seen = []
    for epoch in range(3):
        first = split.next_train()[0].flatten().long().tolist()  # an epoch starts with its first batch
        assert split.epoch == epoch
        train, _ = split.split_indices()
        served = first + [int(v) for _ in range(split.train_batches_per_epoch - 1) for v in split.next_train()[0]]
        assert sorted(served) == sorted(train.tolist())
        seen.append(frozenset(served))
    assert len(set(seen)) == 3  # the split changed between epochs


def test_val_batches_come_from_the_current_epochs_val_part() -> None:
    split = indexed_split(100, val_ratio=0.4, train_batch_size=10, val_batch_size=8)
    for _ in range(2):
        _, val = split.split_indices()
        for _ in range(12):  # more than one pass over the 40 val samples
            assert set(split.next_val()[0].flatten().long().tolist()) <= set(val.tolist())
        epoch_train_indices(split)
        split.next_train()  # the first batch after the train part starts the next epoch


def test_train_stream_does_not_depend_on_val_draws() -> None:
    with_val, without_val = indexed_split(seed=3), indexed_split(seed=3)
    for _ in range(2):
        epoch_train_indices(without_val)
        for _ in range(7):
            with_val.next_val()
        epoch_train_indices(with_val)
    assert torch.equal(with_val.next_train()[0], without_val.next_train()[0])


def test_state_dict_resume_gives_the_same_next_batches() -> None:
    split = indexed_split(100, val_ratio=0.5, train_batch_size=10, val_batch_size=10, seed=5)
    train, val = split.train_batches(), split.val_batches()
    for _ in range(13):
        next(train)
    for _ in range(7):
        next(val)
    state = split.state_dict()
    expected = [next(train) for _ in range(9)], [next(val) for _ in range(6)]
    resumed = indexed_split(100, val_ratio=0.5, train_batch_size=10, val_batch_size=10, seed=5)
    resumed.load_state_dict(state)
    got = [resumed.next_train() for _ in range(9)], [resumed.next_val() for _ in range(6)]
    for want_batches, got_batches in zip(expected, got, strict=True):
        for (wx, wy), (gx, gy) in zip(want_batches, got_batches, strict=True):
            assert torch.equal(wx, gx) and torch.equal(wy, gy)


def test_seeds_give_different_splits_and_transform_applies_to_train_only() -> None:
    assert not torch.equal(indexed_split(seed=0).split_indices()[0], indexed_split(seed=1).split_indices()[0])
    split = indexed_split(transform=lambda x, g: x + 1000)
    assert float(split.next_train()[0].min()) >= 1000 and float(split.next_val()[0].max()) < 1000


def test_load_state_dict_rejects_foreign_state() -> None:
    state = indexed_split(seed=0).state_dict()
    with pytest.raises(ValueError, match="seed=0"):
        indexed_split(seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        indexed_split().load_state_dict({"seed": 0})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_ratio": 0.0}, ValueError, "val_ratio must lie in"),
        ({"val_ratio": 1.0}, ValueError, "val_ratio must lie in"),
        ({"val_ratio": "half"}, TypeError, "val_ratio"),
        ({"train_batch_size": 0}, ValueError, "train_batch_size must be >= 1, got 0"),
        ({"val_batch_size": 2.5}, TypeError, "val_batch_size"),
        ({"val_ratio": 0.01, "val_batch_size": 5}, ValueError, "val part"),
        ({"val_ratio": 0.99, "train_batch_size": 5}, ValueError, "train part"),
        ({"seed": -1}, ValueError, "seed"),
        ({"transform": 3}, TypeError, "transform"),
    ],
)
def test_bad_split_arguments_raise_naming_the_value(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        indexed_split(100, **kwargs)


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shapes"):
        EpochSplit(torch.zeros(10, 2), torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensors"):
        EpochSplit([1, 2], torch.zeros(2))  # type: ignore[arg-type]


def test_make_split_can_leave_a_single_val_sample_for_a_ce_on_everything_baseline() -> None:
    from dynaloss.harness.training import load_dataset, make_split

    data = load_dataset("digits")
    split = make_split("digits", data, val_ratio=1 / len(data.y_train), seed=0, val_batch_size=1)
    assert split.num_val == 1 and split.num_train == len(data.y_train) - 1
    with pytest.raises(ValueError, match="val part"):
        make_split("digits", data, val_ratio=1e-9, seed=0)
