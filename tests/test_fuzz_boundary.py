"""Fuzzed public API: every input either works (finite, right shape) or raises a ValueError/TypeError.

Hypothesis draws shapes, dtypes, class counts, weights, ignore indices, reductions, constructor arguments
and broken batch streams. Example counts are modest so the default suite stays fast.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_bad_input import assert_identical, make_student, snapshot
from torch import nn

from dynaloss import MultiPartDLN, PairwiseDLN, Teacher

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BOUNDARY_ERRORS = (ValueError, TypeError)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]
REDUCTIONS = ["mean", "sum", "none", "avg", "", None, 1]
CLASSES = 3

# one small DLN per configuration: building one (and its warm start) costs more than a forward
_DLNS: dict[tuple, PairwiseDLN] = {}


def dln(num_classes: int, reduction: str, weighted: bool, ignore_index: int) -> PairwiseDLN:
    key = (num_classes, reduction, weighted, ignore_index)
    if key not in _DLNS:
        torch.manual_seed(0)
        weight = torch.linspace(0.5, 1.5, num_classes) if weighted else None
        _DLNS[key] = PairwiseDLN(
            num_classes, init="paper", hidden=4, depth=1, reduction=reduction, weight=weight, ignore_index=ignore_index
        )
    return _DLNS[key]


def tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int, high: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(2, shape, generator=generator).bool()
    return torch.randint(-1, high, shape, generator=generator).to(dtype)


@FUZZ
@given(
    num_classes=st.integers(2, 4),
    input_classes=st.integers(1, 5),
    batch=st.integers(0, 3),
    spatial=st.sampled_from([(), (2,), (2, 3)]),
    input_dtype=st.sampled_from(DTYPES),
    target_dtype=st.sampled_from(DTYPES),
    target_shape=st.sampled_from(["match", "extra", "short", "scalar"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    weighted=st.booleans(),
    ignore_index=st.sampled_from([-100, 0, 2]),
    sample_weight=st.sampled_from([None, "match", "wrong", "negative", "nan", "int", "bool", "double"]),
    poison=st.sampled_from([None, math.nan, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_pairwise_dln_forward_works_or_raises_a_boundary_error(
    num_classes,
    input_classes,
    batch,
    spatial,
    input_dtype,
    target_dtype,
    target_shape,
    reduction,
    weighted,
    ignore_index,
    sample_weight,
    poison,
    seed,
) -> None:
    loss_fn = dln(num_classes, reduction, weighted, ignore_index)
    logits = tensor((batch, input_classes, *spatial), input_dtype, seed)
    if poison is not None and logits.is_floating_point() and logits.numel():
        logits.view(-1)[0] = poison
    target_dims = {"match": (batch, *spatial), "extra": (batch, *spatial, 1), "short": (batch,), "scalar": ()}
    target = tensor(target_dims[target_shape], target_dtype, seed + 1, high=num_classes + 1)
    weight = None
    if sample_weight is not None:
        shape = target.shape if sample_weight != "wrong" else (batch + 1,)
        weight = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 2))
        weight = {
            "negative": -weight,
            "nan": weight.fill_(math.nan),
            "int": weight.long(),  # a loader's index, say: refused, not read as weights (issue 22)
            "bool": weight > 0.5,
            "double": weight.double(),
        }.get(sample_weight, weight)
    if logits.is_floating_point():
        logits.requires_grad_()
    try:
        value = loss_fn(logits, target, weight)
    except BOUNDARY_ERRORS:
        return
    assert sample_weight not in ("int", "bool")  # integer "weights" are refused (issue 22)
    assert isinstance(value, torch.Tensor) and value.is_floating_point()
    # a batch whose every target is ignored too (its mean is 0, where nn.CrossEntropyLoss's is NaN)
    assert bool(torch.isfinite(value).all()), (value, logits, target, weight)
    expected = () if reduction != "none" else tuple(target.shape)
    assert tuple(value.shape) == expected
    # computed in the wider of the input's and the DLN's (float32) dtype, on every path (issue 22)
    assert value.dtype == torch.promote_types(logits.dtype, torch.float32)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert bool(torch.isfinite(grad).all())


@FUZZ
@given(
    num_classes=st.one_of(st.integers(-2, 5), st.floats(allow_nan=True), st.none(), st.text(max_size=2)),
    reduction=st.sampled_from(REDUCTIONS),
    init=st.sampled_from(["paper", "random", 3]),
    weight=st.sampled_from([None, "right", "short", "negative", "nan", "list"]),
    ignore_index=st.one_of(st.integers(-200, 5), st.floats(allow_nan=False), st.none()),
    max_pixels=st.one_of(st.none(), st.integers(-1, 4), st.floats(allow_nan=False)),
)
def test_pairwise_dln_construction_works_or_raises_a_boundary_error(
    num_classes, reduction, init, weight, ignore_index, max_pixels
) -> None:
    size = num_classes if isinstance(num_classes, int) and 0 < num_classes < 10 else 3
    weights = {
        "right": torch.ones(size),
        "short": torch.ones(size + 1),
        "negative": -torch.ones(size),
        "nan": torch.full((size,), math.nan),
        "list": [1.0] * size,
    }.get(weight)  # type: ignore[arg-type]
    try:
        PairwiseDLN(
            num_classes,
            init=init,
            reduction=reduction,
            weight=weights,
            ignore_index=ignore_index,
            max_pixels=max_pixels,
            hidden=4,
            depth=1,
        )
    except BOUNDARY_ERRORS:
        return


@FUZZ
@given(
    num_parts=st.integers(-1, 4),
    init=st.sampled_from(["right", "short", "nan", "text"]),
    reduction=st.sampled_from(REDUCTIONS),
    shape=st.sampled_from([(3,), (2, 3), (0, 3), (2, 4), (2, 3, 1), ()]),
    dtype=st.sampled_from(DTYPES),
    poison=st.sampled_from([None, math.nan, -math.inf]),
)
def test_multipart_dln_works_or_raises_a_boundary_error(num_parts, init, reduction, shape, dtype, poison) -> None:
    init_weights = {"right": [1.0] * max(num_parts, 0), "short": [1.0], "nan": [math.nan] * 3, "text": "abc"}[init]
    try:
        loss_fn = MultiPartDLN(num_parts, init_weights, reduction=reduction)
    except BOUNDARY_ERRORS:
        return
    parts = tensor(shape, dtype, 0)
    if poison is not None and parts.is_floating_point() and parts.numel():
        parts.view(-1)[0] = poison
    try:
        value = loss_fn(parts)
    except BOUNDARY_ERRORS:
        return
    assert bool(torch.isfinite(value).all())


@FUZZ
@given(
    teacher=st.sampled_from(["lstm", "adam", "sgd", "rmsprop", "LSTM", None, 1]),
    steps=st.one_of(st.integers(-1, 3), st.floats(allow_nan=True), st.booleans()),
    student_lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2), st.text(max_size=1)),
    dln_lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2)),
    mode=st.sampled_from(["paper", "lookahead", "research", "fast", None]),
    anchor=st.one_of(st.floats(allow_nan=True), st.integers(-1, 2), st.booleans(), st.none()),
    guard=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-1, 2)),
    checkpoint=st.sampled_from([False, True, 0, "yes"]),
    autocast_dtype=st.sampled_from([None, torch.bfloat16, torch.float16, torch.float64, "bf16"]),
)
def test_teacher_construction_works_or_raises_a_boundary_error(
    teacher, steps, student_lr, dln_lr, mode, anchor, guard, checkpoint, autocast_dtype
) -> None:
    loss_fn = dln(CLASSES, "mean", False, -100)
    args = {"student_lr": student_lr, "dln_lr": dln_lr, "anchor_strength": anchor, "guard": guard}
    try:
        built = Teacher(
            loss_fn,
            teacher=teacher,
            steps=steps,
            mode=mode,
            checkpoint=checkpoint,
            autocast_dtype=autocast_dtype,
            **args,
        )
    except BOUNDARY_ERRORS:
        return
    # what was accepted is what the docs promise
    assert isinstance(built.steps, int) and built.steps >= 1 and not isinstance(built.steps, bool)
    assert math.isfinite(built.student_lr) and built.student_lr >= 0
    assert math.isfinite(built.dln_lr) and built.dln_lr > 0
    assert 0 <= built.anchor_strength < 1 and built.mode in ("paper", "lookahead", "research")


X, Y = torch.randn(6, 4), torch.randint(3, (6,))
ITEMS = {
    "good": (X, Y),
    "weighted": (X, Y, torch.rand(6)),
    "tensor": X,
    "short tuple": (X,),
    "long tuple": (X, Y, None, None),
    "dict": {"x": X, "y": Y},
    "list inputs": (X.tolist(), Y),
    "mismatched": (X, Y[:5]),
    "empty": (X[:0], Y[:0]),
    "0-d": (torch.tensor(1.0), Y),
    "float targets": (X, Y.float()),
    "out-of-range targets": (X, Y + 3),
    "wrong features": (torch.randn(6, 5), Y),
    "nan inputs": (torch.full((6, 4), math.nan), Y),
}


@settings(max_examples=60, deadline=None, database=None)
@given(
    mode=st.sampled_from(["paper", "lookahead", "research"]),
    train=st.lists(st.sampled_from(sorted(ITEMS)), max_size=5),
    val=st.lists(st.sampled_from(sorted(ITEMS)), max_size=2),
)
def test_teacher_step_works_or_raises_and_changes_nothing(mode, train, val) -> None:
    student = make_student()
    torch.manual_seed(0)
    teacher = Teacher(PairwiseDLN(3, init="paper", hidden=4, depth=1), steps=2, mode=mode)
    before = snapshot(student, teacher)
    try:
        record = teacher.step(student, iter([ITEMS[k] for k in train]), iter([ITEMS[k] for k in val]))
    except BOUNDARY_ERRORS:
        assert_identical(before, snapshot(student, teacher))
        assert teacher.rounds == 0
        return
    if record.skipped:
        assert_identical(before, snapshot(student, teacher))
    assert all(bool(torch.isfinite(p).all()) for p in [*teacher.loss_fn.parameters(), *student.parameters()])


def test_teacher_step_with_a_student_without_parameters_raises() -> None:
    teacher = Teacher(dln(CLASSES, "mean", False, -100), steps=1)
    try:
        teacher.step(nn.Identity(), iter([(X, Y)] * 2), iter([(X, Y)]))
    except BOUNDARY_ERRORS as error:
        assert "no parameters" in str(error)


def test_a_validation_batch_with_out_of_range_targets_is_a_value_error() -> None:
    # found by the fuzz above in CI: val_loss's cross-entropy raised IndexError past the teacher
    student = make_student()
    torch.manual_seed(0)
    teacher = Teacher(PairwiseDLN(3, init="paper", hidden=4, depth=1), steps=2, mode="paper")
    before = snapshot(student, teacher)
    train = ["good", "good", "float targets", "float targets"]
    with pytest.raises(ValueError, match="out of bounds"):
        teacher.step(student, iter([ITEMS[k] for k in train]), iter([ITEMS["out-of-range targets"]]))
    assert_identical(before, snapshot(student, teacher))


def _batch(size: int, inputs: str, targets: str, weight: str, seed: int) -> tuple[torch.Tensor, ...]:
    """A batch of ``size`` samples for the 4-feature, 3-class student, its parts of the drawn kinds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=g)
    x = {"nan": x.index_fill(0, torch.tensor([0]), math.nan), "int": x.long()}.get(inputs, x)
    if inputs in ("float64", "float16", "bfloat16"):
        x = x.to(getattr(torch, inputs))
    y = torch.randint(3, (size,), generator=g)
    y = {
        "int32": y.int(),
        "uint8": y.to(torch.uint8),
        "float": y.float(),
        "bool": y > 0,
        "ignored": torch.full((size,), -100),
        "out of range": y + 3,
        "short": y[:-1],
    }.get(targets, y)
    if weight == "none":
        return x, y
    w = torch.rand(size, generator=g)
    w = {
        "index": torch.arange(size),
        "bool": w > 0.5,
        "float64": w.double(),
        "nan": w.index_fill(0, torch.tensor([0]), math.nan),
        "wrong shape": w[:-1],
        "list": w.tolist(),
    }.get(weight, w)
    return x, y, w


# what each part of a batch may be, the first a good one
PARTS = {
    "inputs": ["float32", "float64", "float16", "bfloat16", "nan", "int"],
    "targets": ["int64", "int32", "uint8", "float", "bool", "ignored", "out of range", "short"],
    "weight": ["none", "float32", "float64", "index", "bool", "nan", "wrong shape", "list"],
}
GOOD = {part: options[0] for part, options in PARTS.items()}


def _kinds() -> st.SearchStrategy[dict[str, str]]:
    """Good batches, and batches with one part of another kind (so that many rounds get as far as committing)."""
    changes = [(part, option) for part, options in PARTS.items() for option in options[1:]]
    return st.one_of(st.just(GOOD), st.sampled_from(changes).map(lambda change: {**GOOD, change[0]: change[1]}))


# the reasons a round may be skipped for: poisoned values, or nothing to learn from (issue 22)
SKIP_REASONS = ("NaN or Inf", "not finite", "hypergradient is zero")


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["paper", "lookahead", "research"]),
    kind=st.sampled_from(["lstm", "sgd"]),
    train=_kinds(),
    val=_kinds(),
    zero_lr=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_teacher_step_over_batch_structures_and_dtypes_raises_cleanly_or_commits_finite(
    mode, kind, train, val, zero_lr, seed
) -> None:
    """Issue 22: a clear TypeError/ValueError with nothing changed, or a round that is finite and committed
    (or skipped, with its reason, for a poisoned value or nothing to learn, with nothing changed)."""
    student = make_student()
    torch.manual_seed(0)
    teacher = Teacher(PairwiseDLN(3, init="paper", hidden=4, depth=1), teacher=kind, steps=1, mode=mode)
    if zero_lr:
        teacher.student_lr = 0
    before = snapshot(student, teacher)
    train_batches = [_batch(6, seed=seed + i, **train) for i in range(2)]
    val_batches = [_batch(6, seed=seed + 9, **val)]
    try:
        record = teacher.step(student, iter(train_batches), iter(val_batches))
    except BOUNDARY_ERRORS as error:
        event(f"raised {type(error).__name__}")
        assert_identical(before, snapshot(student, teacher))
        assert teacher.rounds == 0
        return
    assert teacher.rounds == 1
    # integer or boolean "weights" (a loader's index) are never read as weights
    assert train["weight"] not in ("index", "bool") and val["weight"] not in ("index", "bool")
    if record.skipped:
        event("skipped")
        assert any(reason in record.reason for reason in SKIP_REASONS), record.reason
        assert_identical(before, snapshot(student, teacher))
        return
    event("committed")
    assert math.isfinite(record.val_error_before)
    # an optimizer teacher in lookahead without a guard does not run stage III: nothing reads it
    assert math.isfinite(record.val_error_after) or (kind != "lstm" and mode == "lookahead")
    assert math.isfinite(record.hypergradient_norm) and record.hypergradient_norm > 0
    assert all(bool(torch.isfinite(p).all()) for p in [*teacher.loss_fn.parameters(), *student.parameters()])
    assert not zero_lr  # a round at rate 0 learns nothing: it is never committed
