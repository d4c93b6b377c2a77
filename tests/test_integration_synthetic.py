"""The shared synthetic data: deterministic, labelled the way each framework reads it."""

from __future__ import annotations

import pytest
import torch

from dynaloss import MultiPartDLN
from dynaloss.harness.synthetic import PALETTE, SyntheticShapes, write_detection_dataset
from dynaloss.integrations.teaching import TeachingConfig, resplit


def test_detection_dataset_has_matching_images_labels_and_yaml(tmp_path):
    data = write_detection_dataset(tmp_path, train=3, val=2, size=32, num_classes=2, seed=1)
    text = data.read_text()
    assert f"path: {tmp_path.resolve()}" in text and "train: images/train" in text and "1: square1" in text
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    assert [p.stem for p in labels] == [p.stem for p in sorted((tmp_path / "images" / "train").glob("*.png"))]
    for label in labels:
        for line in label.read_text().splitlines():
            cls, *box = line.split()
            assert int(cls) in (0, 1) and all(0.0 < float(v) <= 1.0 for v in box)
    again = tmp_path / "again"
    write_detection_dataset(again, train=3, val=2, size=32, num_classes=2, seed=1)
    assert (again / "labels/train/00002.txt").read_text() == (tmp_path / "labels/train/00002.txt").read_text()


def test_shapes_are_deterministic_and_labelled_by_colour():
    data = SyntheticShapes(4, size=32, num_classes=3, ignore_border=1, seed=3)
    image, mask = data[2]
    again_image, again_mask = SyntheticShapes(4, size=32, num_classes=3, ignore_border=1, seed=3)[2]
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    assert image.shape == (3, 32, 32) and mask.dtype == torch.int64
    assert (mask[0] == 255).all() and set(mask[1:-1, 1:-1].unique().tolist()) <= {0, 1, 2}
    for cls in mask[1:-1, 1:-1].unique().tolist():
        if cls:
            pixel = (mask == cls).nonzero()[0]
            assert torch.equal((image[:, pixel[0], pixel[1]] * 255).round().byte(), torch.from_numpy(PALETTE[cls - 1]))
    with pytest.raises(IndexError):
        data[4]


def test_resplit_is_a_disjoint_cover_that_changes_with_the_seed():
    train, val = resplit(10, 0.5, seed=0)
    assert sorted(train + val) == list(range(10)) and len(val) == 5
    assert resplit(10, 0.5, seed=0) == (train, val) and resplit(10, 0.5, seed=1) != (train, val)
    with pytest.raises(ValueError, match="cannot split 1 training images"):
        resplit(1, 0.5, seed=0)


def test_make_teacher_unrolls_the_given_optimizer_or_sgd_at_student_lr():
    student = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    config = TeachingConfig(steps=2, student_lr=0.05, teacher={"teacher": "adam"})
    teacher = config.make_teacher(MultiPartDLN(2, [1.0, 2.0]), torch.nn.functional.mse_loss, optimizer=optimizer)
    assert teacher.student_optimizer is optimizer and teacher.mode == "lookahead" and teacher.steps == 2
    plain = config.make_teacher(MultiPartDLN(2, [1.0, 2.0]), torch.nn.functional.mse_loss)
    assert plain.student_optimizer is None and plain.student_lr == 0.05
    with pytest.raises(TypeError, match="RMSprop"):
        config.make_teacher(MultiPartDLN(2, [1.0, 2.0]), None, optimizer=torch.optim.RMSprop(student.parameters()))
    with pytest.raises(ValueError, match=r"teacher= must not set \['optimizer'\]"):
        TeachingConfig(teacher={"optimizer": optimizer})
