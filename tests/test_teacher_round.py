"""Teacher.step: stage III's teacher gradient, what each mode does to the student, and exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_hypergradient import (
    LR,
    make_batches,
    make_dln,
    make_student,
    reference_dln,
    reference_student,
    reference_unroll,
)
from torch import nn

import dynaloss
from dynaloss._batches import as_batch
from dynaloss._round import compute_round
from dynaloss._unroll import default_val_loss

DLN_LR = 0.5  # large, so the teacher's influence on stage III is far above round-off


def make_lstm(seed: int = 20) -> dynaloss.LSTMTeacher:
    torch.manual_seed(seed)
    return dynaloss.LSTMTeacher(hidden_size=5, num_layers=2).double()


def run_compute_round(student, dln, model, first, second, val, continue_stage_one=True, **options):
    """``compute_round`` on raw ``(x, y)`` batches with this file's rates; ``options`` go to it as they are."""
    cpu = torch.device("cpu")
    return compute_round(
        student,
        dln,
        model,
        None,
        [as_batch(b, "first", cpu) for b in first],
        [as_batch(b, "second", cpu) for b in second],
        as_batch(val, "val", cpu),
        student_lr=LR,
        dln_lr=DLN_LR,
        val_loss=default_val_loss(dln),
        continue_stage_one=continue_stage_one,
        **options,
    )


@pytest.mark.parametrize("continue_stage_one", [True, False])
def test_teacher_gradient_matches_finite_differences(continue_stage_one: bool) -> None:
    student, dln, model = make_student(), make_dln(), make_lstm()
    first, second, (val,) = make_batches(2, 8, seed=21), make_batches(2, 8, seed=22), make_batches(1, 16, seed=23)
    outcome = run_compute_round(student, dln, model, first, second, val, continue_stage_one)
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(24)
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        analytic = sum((g * d).sum() for g, d in zip(outcome.teacher_grads, direction))
        errors = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(sign * eps * d)
            errors.append(
                float(run_compute_round(student, dln, model, first, second, val, continue_stage_one).error_after)
            )
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(sign * eps * d)
        numeric = (errors[0] - errors[1]) / (2 * eps)
        assert abs(float(analytic)) > 1e-6
        assert abs(float(analytic) - numeric) <= 1e-6 * abs(numeric)


def test_teacher_gradient_matches_reference_round() -> None:
    student, dln, model = make_student(seed=30), make_dln(seed=31), make_lstm(seed=32)
    first, second, (val,) = make_batches(3, 6, seed=33), make_batches(3, 6, seed=34), make_batches(1, 12, seed=35)
    outcome = run_compute_round(student, dln, model, first, second, val)

    # The paper's round written out: stage I, DLN update through the LSTM, stage III from stage I's end.
    params = [p.detach().clone().requires_grad_() for p in student.parameters()]
    weights = [w.detach().clone().requires_grad_() for w in dln.parameters()]
    stage_one = reference_unroll(params, weights, first, LR, dln.target_range)
    error_before = F.cross_entropy(reference_student(stage_one, val[0]), val[1])
    hypergrad = torch.cat([g.flatten() for g in torch.autograd.grad(error_before, weights)])
    memory = model.initial_memory(hypergrad.numel(), like=hypergrad)
    update, _ = model(hypergrad, memory)
    sizes = [w.numel() for w in weights]
    new_weights = [w.detach() + DLN_LR * u.view_as(w) for w, u in zip(weights, update.split(sizes))]
    restart = [p.detach().requires_grad_() for p in stage_one]
    stage_three = reference_unroll(restart, new_weights, second, LR, dln.target_range)
    error_after = F.cross_entropy(reference_student(stage_three, val[0]), val[1])
    reference_grads = torch.autograd.grad(error_after, list(model.parameters()))

    torch.testing.assert_close(outcome.flat_grad, hypergrad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(outcome.error_after, error_after.detach(), rtol=1e-12, atol=0)
    for ours, theirs in zip(outcome.teacher_grads, reference_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-13)
    assert reference_dln is not None  # the reference DLN is the one the reference unroll uses


# ------------------------------------------------------------------------------------------------- modes
def make_teacher(mode: str, teacher: str = "lstm", steps: int = 2) -> tuple[nn.Module, dynaloss.Teacher]:
    student, dln = make_student(batchnorm=True), make_dln()
    torch.manual_seed(40)
    return student, dynaloss.Teacher(dln, teacher=teacher, steps=steps, student_lr=LR, dln_lr=DLN_LR, mode=mode)


def test_lookahead_leaves_student_bitwise_unchanged() -> None:
    student, teacher = make_teacher("lookahead")
    before = copy.deepcopy(student.state_dict())
    dln_before = {name: p.detach().clone() for name, p in teacher.loss_fn.named_parameters()}
    record = teacher.step(student, iter(make_batches(2, 8, seed=41)), iter(make_batches(1, 16, seed=42)))
    assert not record.skipped and record.student_steps == 0
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(p, dln_before[n]) for n, p in teacher.loss_fn.named_parameters())


def plain_sgd_steps(student: nn.Module, dln: nn.Module, batches: list) -> None:
    optimizer = torch.optim.SGD(student.parameters(), lr=LR)
    for x, y in batches:
        optimizer.zero_grad()
        dln(student(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("mode", ["paper", "research"])
def test_committed_student_equals_plain_sgd_with_the_dlns(mode: str) -> None:
    student, teacher = make_teacher(mode)
    reference_student_ = copy.deepcopy(student)
    old_dln = copy.deepcopy(teacher.loss_fn)
    batches = make_batches(4, 8, seed=43)
    record = teacher.step(student, iter(batches), iter(make_batches(1, 16, seed=44)))
    new_dln = teacher.loss_fn
    if mode == "paper":  # N steps with the old DLN, then N with the new one: 2N in all
        plain_sgd_steps(reference_student_, old_dln, batches[:2])
        plain_sgd_steps(reference_student_, new_dln, batches[2:])
        assert record.student_steps == 4
    else:  # the research code: the student keeps N steps with the new DLN from the same start
        plain_sgd_steps(reference_student_, new_dln, batches[:2])
        assert record.student_steps == 2
    for (key, ours), theirs in zip(student.state_dict().items(), reference_student_.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14, msg=key)
    assert int(student[1].num_batches_tracked) == record.student_steps


@pytest.mark.parametrize("teacher_kind", ["lstm", "adam", "sgd", "rmsprop"])
def test_state_dict_round_trip_resumes_identically(teacher_kind: str) -> None:
    student, teacher = make_teacher("paper", teacher_kind)
    data = make_batches(12, 8, seed=50)
    vals = make_batches(3, 16, seed=51)
    teacher.step(student, iter(data[:4]), iter(vals[:1]))
    saved, saved_student = copy.deepcopy(teacher.state_dict()), copy.deepcopy(student)

    _, resumed = make_teacher("paper", teacher_kind)  # a fresh teacher whose own init is thrown away
    torch.manual_seed(99)
    resumed.teacher_model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    resumed.load_state_dict(saved)

    for run_teacher, run_student in ((teacher, student), (resumed, saved_student)):
        records = [
            run_teacher.step(run_student, iter(data[4 + 4 * i : 8 + 4 * i]), iter(vals[1 + i : 2 + i]))
            for i in range(2)
        ]
        run_teacher.records = records  # type: ignore[attr-defined]
    for a, b in zip(teacher.records, resumed.records):  # type: ignore[attr-defined]
        assert (a.val_error_before, a.val_error_after, a.update_norm, a.round) == (
            b.val_error_before,
            b.val_error_after,
            b.update_norm,
            b.round,
        )
    for (key, value), other in zip(teacher.state_dict()["loss_fn"].items(), resumed.state_dict()["loss_fn"].values()):
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    for (key, value), other in zip(
        teacher.teacher_model.state_dict().items(), resumed.teacher_model.state_dict().values()
    ):
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    for a, b in zip(student.parameters(), saved_student.parameters()):
        assert torch.equal(a, b)


def test_step_works_under_no_grad() -> None:
    student, teacher = make_teacher("paper")
    with torch.no_grad():
        record = teacher.step(student, iter(make_batches(4, 8, seed=60)), iter(make_batches(1, 16, seed=61)))
    assert not record.skipped and record.hypergradient_norm > 0


def test_optimizer_teachers_update_the_dln_without_learning() -> None:
    student, teacher = make_teacher("lookahead", teacher="sgd")
    before = torch.cat([p.detach().flatten().clone() for p in teacher.loss_fn.parameters()])
    batches, (val,) = make_batches(2, 8, seed=62), make_batches(1, 16, seed=63)
    expected = torch.cat(
        [g.flatten() for g in dynaloss.hypergradient(student, teacher.loss_fn, batches, val, student_lr=LR).values()]
    )
    teacher.step(student, iter(batches), iter([val]))
    after = torch.cat([p.detach().flatten() for p in teacher.loss_fn.parameters()])
    torch.testing.assert_close(after, before - DLN_LR * expected, rtol=1e-12, atol=1e-14)
    assert teacher.teacher_optimizer is None


# ------------------------------------------------------------------------------------------------ anchor
class AlwaysPush(dynaloss.TeacherModel):
    """A teacher that moves every DLN coordinate by the full bound every round, whatever the gradient."""

    def initial_memory(self, num_coordinates: int, *, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (like.new_zeros(()),)

    def forward(self, grad: torch.Tensor, memory: tuple[torch.Tensor, ...]):
        return torch.ones_like(grad), memory


@pytest.mark.parametrize("anchor", [0.0, 0.2])
def test_anchor_bounds_how_far_the_dln_can_walk(anchor: float) -> None:
    student, dln = make_student(), make_dln()
    start = torch.cat([p.detach().flatten().clone() for p in dln.parameters()])
    teacher = dynaloss.Teacher(dln, teacher=AlwaysPush(), steps=1, student_lr=0.01, dln_lr=0.01, anchor_strength=anchor)
    data = make_batches(40, 8, seed=70)
    for i in range(20):
        teacher.step(student, iter(data[2 * i : 2 * i + 2]), iter(make_batches(1, 8, seed=71)))
    drift = torch.cat([p.detach().flatten() for p in dln.parameters()]) - start
    if anchor == 0.0:  # the paper: 20 rounds of +dln_lr on every coordinate
        torch.testing.assert_close(drift, torch.full_like(drift, 0.2), rtol=1e-9, atol=1e-12)
    else:  # d <- (1 - a) d + lr converges to lr / a = 0.05 from below
        assert drift.max() <= 0.01 / anchor + 1e-12
        torch.testing.assert_close(drift, torch.full_like(drift, 0.05 * (1 - 0.8**20)), rtol=1e-9, atol=1e-12)


def test_anchor_point_is_saved_and_restored() -> None:
    student, teacher = make_teacher("paper")
    teacher.step(student, iter(make_batches(4, 8, seed=72)), iter(make_batches(1, 16, seed=73)))
    state = copy.deepcopy(teacher.state_dict())
    _, other = make_teacher("paper")
    other.load_state_dict(state)
    assert other.anchor_point is not None and torch.equal(other.anchor_point, teacher.anchor_point)


# ------------------------------------------------------------------------------------------------- guard
class PushHard(AlwaysPush):
    """Moves every DLN coordinate the same way each round: with a large dln_lr the loss turns bad
    (here: the validation error goes from 1.15 after stage I to 38.9 after stage III)."""

    def forward(self, grad: torch.Tensor, memory: tuple[torch.Tensor, ...]):
        return torch.ones_like(grad), (memory[0] + 1,)


@pytest.mark.parametrize("mode", ["paper", "research"])
def test_guard_rejects_an_update_that_raises_the_validation_error(mode: str) -> None:
    # unconstrained, so that pushing every parameter up makes the loss (and the student's step) huge
    student, dln = make_student(), make_dln(monotone=False)
    teacher = dynaloss.Teacher(dln, teacher=PushHard(), steps=2, student_lr=LR, dln_lr=5.0, mode=mode, guard=1.05)
    reference, old_dln = copy.deepcopy(student), copy.deepcopy(dln)
    batches = make_batches(4, 8, seed=80)
    record = teacher.step(student, iter(batches), iter(make_batches(1, 16, seed=81)))
    assert record.rejected and not record.skipped and "guard" in (record.reason or "")
    assert record.val_error_after > 1.05 * record.val_error_before
    for a, b in zip(dln.parameters(), old_dln.parameters()):  # the DLN kept its parameters
        assert torch.equal(a, b)
    plain_sgd_steps(reference, old_dln, batches[:2])  # the student kept stage I's N steps only
    assert record.student_steps == 2
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert teacher.memory is not None and float(teacher.memory[0]) == 1.0  # the teacher's memory moved on


def test_no_guard_applies_the_same_update() -> None:
    student, dln = make_student(), make_dln()
    old = [p.detach().clone() for p in dln.parameters()]
    teacher = dynaloss.Teacher(dln, teacher=PushHard(), steps=2, student_lr=LR, dln_lr=5.0, guard=None)
    record = teacher.step(student, iter(make_batches(4, 8, seed=80)), iter(make_batches(1, 16, seed=81)))
    assert not record.rejected
    assert all(not torch.equal(a, b) for a, b in zip(dln.parameters(), old))
