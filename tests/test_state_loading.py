"""Loading state is whole or nothing, and a Teacher's round refuses what it cannot run (issue 13, items 1 and 6)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hypergradient import make_batches, make_student

import dynaloss
from dynaloss import MultiPartDLN, PairwiseDLN
from dynaloss._checks import NonFiniteError
from dynaloss.teachers.lstm import LSTMTeacher


def taught_teacher(num_classes: int = 3, rounds: int = 2) -> dynaloss.Teacher:
    """A teacher with every part of its state filled: memory, anchor, Adam moments, rounds."""
    teacher = dynaloss.pairwise_teacher(num_classes, "ce", steps=1, mode="lookahead", student_lr=0.3)
    teacher.loss_fn.double()
    teacher.teacher_model.double()
    student = make_student()
    for seed in range(rounds):
        teacher.step(student, iter(make_batches(1, 8, seed=seed)), iter(make_batches(1, 16, seed=50 + seed)))
    return teacher


def same(a: Any, b: Any) -> bool:
    """Deep equality of state dicts (tensors compared bitwise, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_refused_and_unchanged(
    target: Any, state: Any, error: type[Exception] = ValueError, match: str | None = None
) -> None:
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(error, match=match):
        target.load_state_dict(state)
    assert same(target.state_dict(), before)


# ---------------------------------------------------------------------------------------------- Teacher
def test_a_teacher_state_round_trips():
    source, target = taught_teacher(), taught_teacher(rounds=0)
    target.load_state_dict(source.state_dict())
    assert same(target.state_dict(), source.state_dict())


def test_a_bad_round_count_leaves_the_dln_as_it_was():
    # before: the DLN was copied first, then "rounds" raised, so the teacher held the other teacher's DLN
    source, target = taught_teacher(), taught_teacher(rounds=0)
    for rounds in ("x", -1, 2.5, True):
        assert_refused_and_unchanged(target, {**source.state_dict(), "rounds": rounds}, match="rounds")


def test_a_state_of_another_num_classes_is_refused():
    # before: a C = 10 state loaded into a C = 4 DLN, and its pinned range became the C = 10 one
    ten, four = dynaloss.pairwise_teacher(10), dynaloss.pairwise_teacher(4)
    assert_refused_and_unchanged(four, ten.state_dict(), match="num_classes=10")
    assert_refused_and_unchanged(four.loss_fn, ten.loss_fn.state_dict(), match="num_classes=10")


@pytest.mark.parametrize("part", ["loss_fn", "teacher_model"])
def test_non_finite_weights_are_refused(part):
    source, target = taught_teacher(), taught_teacher(rounds=0)
    state = copy.deepcopy(source.state_dict())
    key = next(k for k, v in state[part].items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state[part][key].view(-1)[0] = float("nan")
    assert_refused_and_unchanged(target, state, NonFiniteError, match=rf"state\['{part}'\]\['{key}'\]")


def test_truncated_or_non_finite_memory_and_anchor_are_refused():
    source, target = taught_teacher(), taught_teacher(rounds=0)
    good = source.state_dict()
    assert good["memory"] is not None and good["anchor_point"] is not None
    bad = {
        "memory truncated": {**good, "memory": good["memory"][:-1]},
        "memory rows cut": {**good, "memory": [m[:-1] for m in good["memory"]]},
        "memory NaN": {**good, "memory": [m * float("nan") for m in good["memory"]]},
        "memory not tensors": {**good, "memory": ["h", "c"] * (len(good["memory"]) // 2)},
        "anchor shape": {**good, "anchor_point": good["anchor_point"][:5]},
        "anchor inf": {**good, "anchor_point": good["anchor_point"] / 0.0},
    }
    for name, state in bad.items():
        assert_refused_and_unchanged(target, state, match="memory|anchor"), name


def test_a_foreign_or_broken_optimizer_state_is_refused():
    source, target = taught_teacher(), taught_teacher(rounds=0)
    good = source.state_dict()
    broken_moments = copy.deepcopy(good["teacher_optimizer"])
    first = next(iter(broken_moments["state"].values()))
    first["exp_avg"] = first["exp_avg"][..., :1]
    for state in (
        {**good, "teacher_optimizer": {"state": {}, "param_groups": []}},
        {**good, "teacher_optimizer": "adam"},
        {**good, "teacher_optimizer": broken_moments},
    ):
        assert_refused_and_unchanged(target, state, match="optimizer")
    assert_refused_and_unchanged(target, {**good, "dln_lr": float("inf")}, match="dln_lr")
    assert_refused_and_unchanged(target, {**good, "rollback": {"recent": "x"}})


@settings(max_examples=30, deadline=None)
@given(
    key=st.sampled_from(
        ["loss_fn", "teacher_model", "teacher_optimizer", "memory", "anchor_point", "rounds", "dln_lr", "rollback"]
    ),
    value=st.one_of(
        st.none(),
        st.integers(-3, 3),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3),
        st.sampled_from(["nan-tensor", "empty-dict", "tensor-list"]),
    ),
)
def test_any_corrupted_entry_is_refused_or_loaded_whole(key, value):
    source, target = FUZZ_SOURCE, copy.deepcopy(FUZZ_TARGET)
    value = (
        {
            "nan-tensor": torch.full((3,), float("nan"), dtype=torch.float64),
            "empty-dict": {},
            "tensor-list": [torch.zeros(2)],
        }.get(value, value)
        if isinstance(value, str)
        else value
    )
    state = {**source.state_dict(), key: value}
    before = copy.deepcopy(target.state_dict())
    try:
        target.load_state_dict(state)
    except (TypeError, ValueError):
        assert same(target.state_dict(), before)
    else:  # what loaded is what was given, and it is usable
        assert all(torch.isfinite(p).all() for p in target.loss_fn.parameters())


FUZZ_SOURCE, FUZZ_TARGET = taught_teacher(), taught_teacher(rounds=0)


# ------------------------------------------------------------------------------ the modules on their own
def test_a_dln_with_a_missing_key_or_nan_is_left_as_it_was():
    dln, other = PairwiseDLN(5), PairwiseDLN(5, init="paper")
    state = other.state_dict()
    assert_refused_and_unchanged(dln, {k: v for k, v in state.items() if k != "layers.2"}, match="layers.2")
    assert_refused_and_unchanged(dln, {**state, "layers.4": state["layers.4"] * float("nan")}, NonFiniteError)
    assert_refused_and_unchanged(dln, "not a state", TypeError)


def test_multipart_and_teacher_models_refuse_bad_states_whole():
    parts = MultiPartDLN(3, [7.5, 0.5, 1.5])
    assert_refused_and_unchanged(parts, {"log_weight": torch.tensor([0.0, float("nan"), 1.0])}, NonFiniteError)
    assert_refused_and_unchanged(parts, {"log_weight": torch.zeros(2)}, match="size mismatch")
    lstm, smaller = LSTMTeacher(), LSTMTeacher()
    state = smaller.state_dict()
    key = next(k for k, v in state.items() if isinstance(v, torch.Tensor))
    assert_refused_and_unchanged(lstm, {**state, key: state[key][:1]}, match="size mismatch")


# ------------------------------------------------------------------------------------ the round itself
def test_a_round_under_inference_mode_is_refused_with_the_reason():
    teacher, student = taught_teacher(rounds=0), make_student()
    before = copy.deepcopy(teacher.state_dict())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        teacher.step(student, iter(make_batches(1, 8, seed=1)), iter(make_batches(1, 16, seed=2)))
    assert same(teacher.state_dict(), before)


def test_a_second_concurrent_round_is_refused_not_interleaved():
    teacher, student = taught_teacher(rounds=0), make_student()
    teacher._busy.acquire()  # as if another thread were inside step()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            teacher.step(student, iter(make_batches(1, 8, seed=1)), iter(make_batches(1, 16, seed=2)))
    finally:
        teacher._busy.release()
    record = teacher.step(student, iter(make_batches(1, 8, seed=1)), iter(make_batches(1, 16, seed=2)))
    assert not record.skipped and teacher.rounds == 1
    clone = copy.deepcopy(teacher)  # the lock is not state: copies get their own
    assert clone._busy is not teacher._busy and not clone._busy.locked()


# ------------------------------------------------------------------------------------------ attributes
SETTINGS = (
    "steps",
    "student_lr",
    "dln_lr",
    "anchor_strength",
    "guard",
    "mode",
    "val_loss",
    "checkpoint",
    "autocast_dtype",
)
STATE = ("loss_fn", "teacher_model", "teacher_optimizer", "memory", "anchor_point", "rounds", "rollback", "sync")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SETTINGS),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 50),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["paper", "lookahead", "research", "bogus", torch.bfloat16, torch.int64, len]),
    ),
)
def test_a_setting_assigned_any_value_is_checked_as_the_constructor_checks_it(name, value):
    teacher = FUZZ_TARGET
    before = getattr(teacher, name)
    try:
        setattr(teacher, name, value)
    except (TypeError, ValueError):
        assert getattr(teacher, name) is before or getattr(teacher, name) == before
    else:  # accepted: a value the constructor accepts too
        accepted = getattr(teacher, name)
        setattr(teacher, name, before)
        kwargs = {"teacher": "lstm", **({} if name in ("val_loss",) else {name: accepted})}
        dynaloss.Teacher(PairwiseDLN(3), **kwargs)


@pytest.mark.parametrize("name", STATE)
def test_the_teachers_state_is_read_only(name):
    teacher = taught_teacher(rounds=0)
    before = getattr(teacher, name)
    with pytest.raises(AttributeError, match=f"Teacher.{name} is the teacher's state"):
        setattr(teacher, name, None)
    assert getattr(teacher, name) is before
