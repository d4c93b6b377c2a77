"""Every bad input gets the documented error, naming the problem, and a failed round changes nothing."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from dynaloss import PairwiseDLN, Teacher, hypergradient


def dln3(**kwargs: object) -> PairwiseDLN:
    torch.manual_seed(0)
    return PairwiseDLN(3, init="paper", hidden=4, depth=1, **kwargs)


LOGITS = torch.randn(4, 3)
TARGET = torch.tensor([0, 1, 2, 1])


# ------------------------------------------------------------------------------------------ PairwiseDLN
@pytest.mark.parametrize(
    ("logits", "target", "match"),
    [
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), r"target must have shape \(4,\).*got \(5,\)"),
        (torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), r"target must have shape \(4,\).*got \(4, 1\)"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.long), r"target must have shape \(2, 4, 4\)"),
        (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), r"input has 5 classes in dim 1, expected num_classes=3"),
        (torch.randn(2, 4, 3), torch.zeros(2, 3, dtype=torch.long), r"input has 4 classes in dim 1"),
        (torch.randn(3), torch.zeros(3, dtype=torch.long), r"input must be \(B, C\).*got shape \(3,\)"),
        (torch.tensor(1.0), torch.tensor(0), r"input must be \(B, C\).*got shape \(\)"),
    ],
)
def test_wrong_shapes_raise_value_error(logits, target, match):
    with pytest.raises(ValueError, match=match):
        dln3()(logits, target)


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_labels_out_of_range_raise(bad):
    target = torch.tensor([0, 1, bad, 2])
    with pytest.raises(ValueError, match=r"target holds class indices outside \[0, 3\)"):
        dln3()(LOGITS, target)


def test_ignore_index_labels_are_allowed():
    assert torch.isfinite(dln3()(LOGITS, torch.tensor([0, -100, 2, -100])))
    assert torch.isfinite(dln3(ignore_index=255)(LOGITS, torch.tensor([0, 255, 2, 1])))
    with pytest.raises(ValueError, match="ignore_index=255"):
        dln3(ignore_index=255)(LOGITS, torch.tensor([0, -100, 2, 1]))


@pytest.mark.parametrize(
    ("num_classes", "error"), [(1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_fewer_than_two_classes_or_non_int_raise(num_classes, error):
    with pytest.raises(error, match="num_classes must"):
        PairwiseDLN(num_classes, init="paper")


@pytest.mark.parametrize(
    ("logits", "target", "match"),
    [
        ([[0.0, 1.0, 2.0]], torch.tensor([0]), "input must be a torch.Tensor, got list"),
        (LOGITS.numpy(), TARGET, "input must be a torch.Tensor, got ndarray"),
        (LOGITS, [0, 1, 2, 1], "target must be a torch.Tensor, got list"),
        (LOGITS, TARGET.float(), "target must hold integer class indices, got dtype torch.float32"),
        (LOGITS, TARGET.bool(), "target must hold integer class indices, got dtype torch.bool"),
        (LOGITS.long(), TARGET, "input must be floating-point logits, got dtype torch.int64"),
        (LOGITS.int(), TARGET, "input must be floating-point logits"),
    ],
)
def test_wrong_types_raise_type_error(logits, target, match):
    with pytest.raises(TypeError, match=match):
        dln3()(logits, target)


@pytest.mark.parametrize(
    ("logits", "target"),
    [(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)), (torch.randn(2, 3, 0, 4), torch.zeros(2, 0, 4).long())],
)
def test_empty_batches_raise(logits, target):
    with pytest.raises(ValueError, match="input is empty"):
        dln3()(logits, target)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_raise(bad):
    logits = LOGITS.clone()
    logits[2, 1] = bad
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        dln3()(logits, TARGET)


def test_non_finite_logits_at_ignored_positions_still_raise():
    logits = LOGITS.clone()
    logits[1] = math.nan
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        dln3()(logits, torch.tensor([0, -100, 2, 1]))


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        (torch.ones(5), ValueError, r"weight must have the target's shape \(4,\), got \(5,\)"),
        (torch.tensor([1.0, math.nan, 1.0, 1.0]), ValueError, "weight contains NaN or Inf"),
        ([1.0, 1.0, 1.0, 1.0], TypeError, "weight must be a torch.Tensor, got list"),
    ],
)
def test_bad_per_sample_weight_raises(weight, error, match):
    with pytest.raises(error, match=match):
        dln3()(LOGITS, TARGET, weight)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "reduction must be one of .*'avg'"),
        ({"reduction": None}, ValueError, "reduction must be one of"),
        ({"init": "kaiming"}, ValueError, "init must be one of .*'kaiming'"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int, got float"),
        ({"ignore_index": True}, TypeError, "ignore_index must be an int, got bool"),
        ({"max_pixels": 0}, ValueError, "max_pixels must be >= 1, got 0"),
        ({"max_pixels": -3}, ValueError, "max_pixels must be >= 1"),
        ({"max_pixels": 2.5}, TypeError, "max_pixels must be an int, got float"),
        ({"weight": torch.ones(4)}, ValueError, r"weight must have shape \(3,\), got \(4,\)"),
        ({"weight": [1.0, 1.0, 1.0]}, TypeError, "weight must be a torch.Tensor, got list"),
        ({"hidden": 0}, ValueError, "hidden must be >= 1"),
        ({"depth": 0}, ValueError, "depth must be >= 1"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        PairwiseDLN(3, **{"init": "paper", **kwargs})


# ---------------------------------------------------------------------------------------------- Teacher
def make_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def make_batches(count: int, seed: int = 0, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=g), torch.randint(3, (size,), generator=g)) for _ in range(count)]


def make_teacher(**kwargs: object) -> Teacher:
    return Teacher(dln3(), **{"steps": 2, "mode": "paper", **kwargs})


def trained(teacher_kind: str = "lstm") -> tuple[nn.Module, Teacher]:
    """A student and a teacher after one committed round, so memory and optimizer state exist."""
    student, teacher = make_student(), make_teacher(teacher=teacher_kind)
    record = teacher.step(student, iter(make_batches(4)), iter(make_batches(1, seed=1)))
    assert not record.skipped, record.reason
    assert teacher.memory is not None
    return student, teacher


def snapshot(student: nn.Module, teacher: Teacher) -> dict[str, object]:
    return copy.deepcopy(
        {
            "student": student.state_dict(),  # parameters and BatchNorm buffers
            "dln": teacher.loss_fn.state_dict(),
            "model": teacher.teacher_model.state_dict(),
            "optimizer": None if teacher.teacher_optimizer is None else teacher.teacher_optimizer.state_dict(),
            "memory": teacher.memory,
        }
    )


def assert_identical(before: object, after: object, path: str = "") -> None:
    assert type(before) is type(after), path
    if isinstance(before, torch.Tensor):
        assert before.dtype == after.dtype and torch.equal(before, after), path
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), path
        for key in before:
            assert_identical(before[key], after[key], f"{path}.{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), path
        for index, (a, b) in enumerate(zip(before, after)):
            assert_identical(a, b, f"{path}[{index}]")
    else:
        assert before == after, path


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "fast"}, ValueError, "mode must be one of .*'fast'"),
        ({"teacher": "lstmm"}, ValueError, "teacher must be one of .*'lstmm'"),
        ({"teacher": 3}, ValueError, "teacher must be one of"),
        ({"steps": 0}, ValueError, "steps must be >= 1, got 0"),
        ({"steps": -2}, ValueError, "steps must be >= 1"),
        ({"steps": 2.0}, TypeError, "steps must be an int"),
        ({"student_lr": -0.1}, ValueError, "student_lr must be a finite number >= 0, got -0.1"),
        ({"student_lr": math.inf}, ValueError, "student_lr must be a finite number >= 0"),
        ({"dln_lr": 0.0}, ValueError, "dln_lr must be a finite number > 0"),
        ({"dln_lr": -1e-3}, ValueError, "dln_lr must be a finite number > 0"),
        ({"teacher_lr": 0.0}, ValueError, "teacher_lr must be a finite number > 0"),
        ({"teacher_lr": -1e-3}, ValueError, "teacher_lr must be a finite number > 0"),
        ({"val_loss": "ce"}, TypeError, "val_loss must be callable, got str"),
    ],
)
def test_bad_teacher_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_teacher(**kwargs)


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.Sequential()])
def test_loss_fn_without_parameters_raises(loss_fn):
    with pytest.raises(ValueError, match="has no learnable parameter"):
        Teacher(loss_fn)


def test_loss_fn_with_frozen_parameters_raises():
    dln = dln3().requires_grad_(False)
    with pytest.raises(ValueError, match="PairwiseDLN.*has no learnable parameter"):
        Teacher(dln)


def test_loss_fn_that_is_not_a_module_raises():
    with pytest.raises(TypeError, match="loss_fn must be a torch.nn.Module, got function"):
        Teacher(lambda z, y: z.sum())


def test_student_that_is_not_a_module_raises():
    with pytest.raises(TypeError, match="student must be a torch.nn.Module"):
        make_teacher().step(lambda x: x, iter(make_batches(4)), iter(make_batches(1)))


@pytest.mark.parametrize("which", ["train", "val"])
def test_a_list_instead_of_an_iterator_raises_type_error_suggesting_iter(which):
    student, teacher = trained()
    before = snapshot(student, teacher)
    train = make_batches(4) if which == "train" else iter(make_batches(4))
    val = make_batches(1) if which == "val" else iter(make_batches(1))
    with pytest.raises(TypeError, match=rf"{which}_iter must be an iterator.*got list.*iter\("):
        teacher.step(student, train, val)
    assert_identical(before, snapshot(student, teacher))


@pytest.mark.parametrize(
    ("train_count", "val_count", "match"),
    [
        (1, 1, "train_iter ended after 1 batches; a round needs 2"),
        (3, 1, "train_iter ended after 1 batches; a round needs 2"),  # 'paper' takes 2N = 4
        (0, 1, "train_iter ended after 0 batches"),
        (4, 0, "val_iter ended after 0 batches; a round needs 1"),
    ],
)
def test_exhausted_iterator_raises_and_changes_nothing(train_count, val_count, match):
    student, teacher = trained()
    before = snapshot(student, teacher)
    rounds = teacher.rounds
    with pytest.raises(ValueError, match=match):
        teacher.step(student, iter(make_batches(train_count)), iter(make_batches(val_count)))
    assert_identical(before, snapshot(student, teacher))
    assert teacher.rounds == rounds


X, Y = torch.randn(6, 4), torch.randint(3, (6,))


@pytest.mark.parametrize(
    ("bad_batch", "error", "match"),
    [
        (X, TypeError, "train_iter must yield \\(inputs, targets\\) or \\(inputs, targets, weight\\), got Tensor"),
        ((X,), TypeError, "got tuple of length 1"),
        ((X, Y, None, None), TypeError, "got tuple of length 4"),
        ({"x": X, "y": Y}, TypeError, "got dict"),
        ((X.tolist(), Y), TypeError, "train_iter yielded inputs of type list, expected a torch.Tensor"),
        ((X, Y.tolist()), TypeError, "train_iter yielded targets of type list"),
        ((X, Y, [1.0] * 6), TypeError, "train_iter yielded weight of type list"),
        ((X, Y[:5]), ValueError, r"train_iter yielded 6 inputs but targets of shape \(5,\)"),
        ((X, torch.tensor(1)), ValueError, r"yielded 6 inputs but targets of shape \(\)"),
        ((X, Y, torch.ones(5)), ValueError, r"train_iter yielded weight of shape \(5,\), expected the targets' \(6,\)"),
        ((X[:0], Y[:0]), ValueError, r"train_iter yielded an empty batch \(inputs of shape \(0, 4\)\)"),
        ((torch.tensor(1.0), Y), ValueError, "train_iter yielded 0-d inputs; a batch needs a leading batch dimension"),
    ],
)
def test_train_batches_of_the_wrong_structure_raise_and_change_nothing(bad_batch, error, match):
    student, teacher = trained()
    before = snapshot(student, teacher)
    train = itertools.chain(make_batches(1), [bad_batch], make_batches(2))
    with pytest.raises(error, match=match):
        teacher.step(student, train, iter(make_batches(1)))
    assert_identical(before, snapshot(student, teacher))


def test_val_batch_of_the_wrong_structure_raises():
    student, teacher = trained()
    with pytest.raises(TypeError, match="val_iter must yield"):
        teacher.step(student, iter(make_batches(4)), iter([(X,)]))


def test_hypergradient_with_no_train_batches_raises():
    with pytest.raises(ValueError, match="train_batches is empty"):
        hypergradient(make_student(), dln3(), [], make_batches(1)[0], student_lr=0.1)


def test_hypergradient_with_non_modules_raises():
    with pytest.raises(TypeError, match="student and loss_fn must be torch.nn.Module"):
        hypergradient(make_student(), lambda z, y: z.sum(), make_batches(1), make_batches(1)[0], student_lr=0.1)


def test_hypergradient_with_a_bad_val_batch_raises():
    with pytest.raises(ValueError, match=r"val_batch yielded 6 inputs but targets of shape \(2,\)"):
        hypergradient(make_student(), dln3(), make_batches(1), (X, Y[:2]), student_lr=0.1)


# ------------------------------------------------------------------------------------ non-finite rounds
def _val_with_inf() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_batches(1, seed=1)[0]
    x = x.clone()
    x[0, 0] = math.inf
    return [(x, y)]


def _train_with_nan() -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = make_batches(4)
    batches[0][0][2, 1] = math.nan
    return batches


@pytest.mark.parametrize("teacher_kind", ["lstm", "adam"])
@pytest.mark.parametrize("mode", ["paper", "research", "lookahead"])
@pytest.mark.parametrize(
    ("batches", "steps", "reason"),
    [
        # a non-finite validation error is caught right after stage I, whatever the unroll length
        (lambda: (make_batches(4), _val_with_inf()), 1, "validation error after stage I or the DLN's hypergradient"),
        (lambda: (make_batches(4), _val_with_inf()), 2, "validation error after stage I or the DLN's hypergradient"),
        # NaN inputs make the student's outputs NaN, which the DLN's input check raises on
        (lambda: (_train_with_nan(), make_batches(1, seed=1)), 2, "input contains NaN or Inf"),
    ],
    ids=["val-inf-1-step", "val-inf-2-steps", "train-nan"],
)
def test_non_finite_round_is_skipped_and_changes_nothing(teacher_kind, mode, batches, steps, reason):
    student = make_student()
    teacher = Teacher(dln3(), teacher=teacher_kind, steps=steps, mode=mode)
    first = teacher.step(student, iter(make_batches(4, seed=5)), iter(make_batches(1, seed=6)))
    assert not first.skipped, first.reason
    before = snapshot(student, teacher)
    assert before["memory"] is not None
    if teacher_kind == "lstm":
        assert before["optimizer"]["state"]  # Adam state exists and must not move

    train, val = batches()
    record = teacher.step(student, iter(train), iter(val))

    assert record.skipped is True
    assert isinstance(record.reason, str) and reason in record.reason
    assert record.update_norm == 0.0 and record.student_steps == 0
    assert record.round == 1 and teacher.rounds == 2
    assert_identical(before, snapshot(student, teacher))

    after = teacher.step(student, iter(make_batches(4, seed=7)), iter(make_batches(1, seed=8)))
    assert not after.skipped, after.reason  # a skipped round does not poison the next one


def _failing_val_loss(message: str, *, only_in_the_round: bool):
    """A val_loss that raises RuntimeError(message) (in the round only: when its input carries a graph)."""

    def val_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.requires_grad or not only_in_the_round:
            raise RuntimeError(message)
        return nn.functional.cross_entropy(outputs, targets)

    return val_loss


@pytest.mark.parametrize(
    ("message", "only_in_the_round"),
    [("a bug inside the round", True), ("CUDA error: an illegal memory access was encountered", False)],
)
def test_errors_that_are_not_about_the_batches_propagate_as_they_are(message, only_in_the_round):
    # a bug, a device or a collective failure is not "bad batches": it keeps its type and message
    student, teacher = trained()
    teacher.val_loss = _failing_val_loss(message, only_in_the_round=only_in_the_round)
    before = snapshot(student, teacher)
    with pytest.raises(RuntimeError, match=message) as raised:
        teacher.step(student, iter(make_batches(4)), iter(make_batches(1, seed=1)))
    assert raised.type is RuntimeError
    assert_identical(before, snapshot(student, teacher))


def test_a_batch_the_student_cannot_take_is_a_value_error_that_names_the_part():
    student, teacher = trained()
    before = snapshot(student, teacher)
    wide = [(torch.randn(8, 7), torch.randint(3, (8,)))] * 4  # the student takes 4 features
    with pytest.raises(ValueError, match="the student's forward raised on a train batch"):
        teacher.step(student, iter(wide), iter(make_batches(1, seed=1)))
    assert_identical(before, snapshot(student, teacher))
