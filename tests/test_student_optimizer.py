"""The unroll follows the user's optimizer: torch.optim's SGD, Adam and AdamW steps, exactly (float64).

Every check compares against ``torch.optim`` itself (deep copies of the student and its optimizer stepped
with ``optimizer.step()``), never against the code under test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_hypergradient import CLASSES, make_batches, make_dln, make_student
from torch import nn

import dynaloss
from dynaloss._batches import as_batch
from dynaloss._unroll import dln_parameters, start_of_unroll, unroll
from dynaloss._update_rules import RULES, AdamRule, SGDRule

MakeOptimizer = Callable[[list], torch.optim.Optimizer]

OPTIMIZERS: dict[str, MakeOptimizer] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "sgd-dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3, weight_decay=1e-3),
    "sgd-wd-only": lambda p: torch.optim.SGD(p, lr=0.3, weight_decay=5e-2),
    "sgd-maximize": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, maximize=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-l2-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=3e-3, eps=1e-6, amsgrad=True),
}


def grouped(make: MakeOptimizer, student: nn.Module) -> torch.optim.Optimizer:
    """Two param groups with different learning rates (the second at a third of the first's)."""
    optimizer = make(list(student[0].parameters()))
    rest = [p for p in student.parameters() if all(p is not q for q in student[0].parameters())]
    optimizer.add_param_group({"params": rest, "lr": optimizer.param_groups[0]["lr"] / 3})
    return optimizer


def warm_up(student: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """A few real cross-entropy steps, so the unroll starts from non-empty optimizer state."""
    for x, y in make_batches(steps, 8, seed=99):
        optimizer.zero_grad()
        F.cross_entropy(student(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()


def torch_optim_steps(student, optimizer, dln, batches) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Copies of ``student`` and ``optimizer`` after ``optimizer.step()`` on the DLN's loss of each batch."""
    student, optimizer = copy.deepcopy((student, optimizer))  # one deepcopy: the copy's groups hold the copy's params
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        dln(student(x), y).backward()
        optimizer.step()
    return student, optimizer


def unrolled(student, optimizer, dln, batches):
    start, rule = start_of_unroll(student, optimizer, None)
    cpu = torch.device("cpu")
    return unroll(student, start, dln, dln_parameters(dln), [as_batch(b, "b", cpu) for b in batches], rule=rule)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("warm", [0, 3], ids=["fresh", "warm-state"])
def test_unroll_equals_torch_optim_steps(name: str, warm: int) -> None:
    student, dln = make_student(batchnorm=True), make_dln()
    student[0].bias.requires_grad_(False)  # frozen: in the optimizer, but never stepped
    optimizer = grouped(OPTIMIZERS[name], student)
    warm_up(student, optimizer, warm)
    batches = make_batches(4, 8, seed=5)
    reference, reference_optimizer = torch_optim_steps(student, optimizer, dln, batches)
    end = unrolled(student, optimizer, dln, batches)
    for (param_name, expected), param in zip(reference.named_parameters(), end.params.values()):
        torch.testing.assert_close(param, expected, rtol=1e-12, atol=1e-14, msg=param_name)
    for buffer_name, expected in reference.named_buffers():  # BatchNorm's running statistics
        torch.testing.assert_close(end.buffers[buffer_name], expected, rtol=1e-12, atol=1e-14, msg=buffer_name)
    # the unroll's optimizer state is the optimizer's after the same steps
    trained = dict(zip(end.trainable, [p for p in reference.parameters() if p.requires_grad]))
    for i, param_name in enumerate(end.trainable):
        state = reference_optimizer.state[trained[param_name]]
        for slot, values in end.optim.slots.items():
            if slot in state:
                torch.testing.assert_close(values[i], state[slot], rtol=1e-12, atol=1e-14)
        if "step" in state:
            assert end.optim.steps[i] == int(state["step"])


def val_error_after_optimizer_steps(student, optimizer, dln, batches, val) -> float:
    stepped, _ = torch_optim_steps(student, optimizer, dln, batches)
    with torch.no_grad():
        return float(F.cross_entropy(stepped(val[0]), val[1]))


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam-l2-amsgrad", "adamw"])
def test_hypergradient_through_the_optimizer_matches_finite_differences(name: str) -> None:
    student, dln = make_student(batchnorm=True), make_dln()
    optimizer = grouped(OPTIMIZERS[name], student)
    warm_up(student, optimizer, 2)
    batches, (val,) = make_batches(3, 8, seed=6), make_batches(1, 16, seed=7)
    grads = dynaloss.hypergradient(student, dln, batches, val, optimizer=optimizer)
    analytic = torch.cat([g.flatten() for g in grads.values()])
    numeric, eps = [], 1e-6
    for param in dln.parameters():
        flat = param.data.view(-1)
        for i in range(flat.numel()):
            original = flat[i].item()
            values = []
            for shifted in (original + eps, original - eps):
                flat[i] = shifted
                values.append(val_error_after_optimizer_steps(student, optimizer, dln, batches, val))
            flat[i] = original
            numeric.append((values[0] - values[1]) / (2 * eps))
    numeric_t = torch.tensor(numeric, dtype=torch.float64)
    assert analytic.norm() > 1e-5  # not vacuous
    assert (analytic - numeric_t).norm() / numeric_t.norm() < 1e-6


def test_the_momentum_unroll_differs_from_plain_sgd() -> None:
    """The point of following the optimizer: with momentum the hypergradient is another vector."""
    student, dln = make_student(), make_dln()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    warm_up(student, optimizer, 3)
    batches, (val,) = make_batches(3, 8, seed=8), make_batches(1, 16, seed=9)
    with_momentum = dynaloss.hypergradient(student, dln, batches, val, optimizer=optimizer)
    plain = dynaloss.hypergradient(student, dln, batches, val, student_lr=0.1)
    a = torch.cat([g.flatten() for g in with_momentum.values()])
    b = torch.cat([g.flatten() for g in plain.values()])
    assert (a - b).norm() > 0.1 * b.norm()


def test_parameters_the_optimizer_does_not_hold_stay_fixed() -> None:
    student, dln = make_student(), make_dln()
    optimizer = torch.optim.SGD(student[2].parameters(), lr=0.1, momentum=0.9)  # the head only
    end = unrolled(student, optimizer, dln, make_batches(2, 8, seed=10))
    assert end.trainable == ("2.weight", "2.bias")
    assert torch.equal(end.params["0.weight"], student[0].weight.detach())
    reference, _ = torch_optim_steps(student, optimizer, dln, make_batches(2, 8, seed=10))
    torch.testing.assert_close(end.params["2.weight"], reference[2].weight, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------- the Teacher
def taught(mode: str, name: str) -> tuple[nn.Module, torch.optim.Optimizer, dynaloss.Teacher]:
    student, dln = make_student(batchnorm=True), make_dln()
    optimizer = grouped(OPTIMIZERS[name], student)
    warm_up(student, optimizer, 2)
    torch.manual_seed(3)
    teacher = dynaloss.Teacher(dln, steps=2, optimizer=optimizer, dln_lr=0.5, mode=mode, anchor_strength=0.0)
    return student, optimizer, teacher


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for state in optimizer.state_dict()["state"].values() for t in state.values() if torch.is_tensor(t)]


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adamw-amsgrad"])
def test_paper_round_leaves_student_and_optimizer_where_optimizer_steps_would(name: str) -> None:
    student, optimizer, teacher = taught("paper", name)
    first, second, (val,) = make_batches(2, 8, seed=11), make_batches(2, 8, seed=12), make_batches(1, 16, seed=13)
    old_dln = copy.deepcopy(teacher.loss_fn)
    expected, expected_optimizer = torch_optim_steps(student, optimizer, old_dln, first)
    record = teacher.step(student, iter(first + second), iter([val]))
    assert not record.skipped and record.student_steps == 4
    # stage III: N more optimizer steps with the updated DLN, from where stage I left student and optimizer
    expected, expected_optimizer = torch_optim_steps(expected, expected_optimizer, teacher.loss_fn, second)
    for (name_, ours), theirs in zip(student.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14, msg=name_)
    ours_state, theirs_state = optimizer.state_dict()["state"], expected_optimizer.state_dict()["state"]
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        assert ours_state[key].keys() == theirs_state[key].keys()
        for slot in ours_state[key]:
            torch.testing.assert_close(ours_state[key][slot], theirs_state[key][slot], rtol=1e-12, atol=1e-14)


def test_lookahead_round_leaves_student_and_optimizer_bitwise_untouched() -> None:
    student, optimizer, teacher = taught("lookahead", "adamw-amsgrad")
    before_student = copy.deepcopy(student.state_dict())
    before_optimizer = copy.deepcopy(optimizer.state_dict())
    record = teacher.step(student, iter(make_batches(2, 8, seed=14)), iter(make_batches(1, 16, seed=15)))
    assert not record.skipped and record.update_norm > 0
    for key, value in student.state_dict().items():
        assert torch.equal(value, before_student[key]), key
    after = optimizer.state_dict()
    assert after["param_groups"] == before_optimizer["param_groups"]
    for ours, theirs in zip(
        optimizer_tensors(optimizer), [t for s in before_optimizer["state"].values() for t in s.values()]
    ):
        assert torch.equal(ours, theirs)


def test_the_round_reads_the_current_learning_rate() -> None:
    """A scheduler changes param_groups[i]['lr']: the next round's unroll uses it, with nothing synced by hand."""
    student, dln = make_student(), make_dln()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    batches, (val,) = make_batches(2, 8, seed=16), make_batches(1, 16, seed=17)
    before = dynaloss.hypergradient(student, dln, batches, val, optimizer=optimizer)
    for group in optimizer.param_groups:
        group["lr"] = 0.05
    after = dynaloss.hypergradient(student, dln, batches, val, optimizer=optimizer)
    reference = dynaloss.hypergradient(
        student, dln, batches, val, optimizer=torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    )
    for name in before:
        assert not torch.allclose(before[name], after[name])
        torch.testing.assert_close(after[name], reference[name], rtol=1e-12, atol=1e-15)


class SGDSubclass(torch.optim.SGD):
    pass


@pytest.mark.parametrize(
    "make",
    [lambda p: torch.optim.RMSprop(p), lambda p: torch.optim.NAdam(p), lambda p: SGDSubclass(p, lr=0.1)],
    ids=["rmsprop", "nadam", "sgd-subclass"],
)
def test_other_optimizers_are_refused_naming_the_supported_ones(make: MakeOptimizer) -> None:
    student, dln = make_student(), make_dln()
    with pytest.raises(TypeError, match="torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW"):
        dynaloss.Teacher(dln, optimizer=make(list(student.parameters())))


def test_a_registered_rule_makes_the_unroll_follow_its_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # one rule per optimizer type, found by exact type: registering one is all it takes to support an optimizer
    assert RULES == {torch.optim.SGD: SGDRule, torch.optim.Adam: AdamRule, torch.optim.AdamW: AdamRule}
    monkeypatch.setitem(RULES, SGDSubclass, SGDRule)
    student, dln = make_student(), make_dln()
    optimizer = SGDSubclass(student.parameters(), lr=0.2, momentum=0.9)
    batches = make_batches(3, 8, seed=6)
    reference, _ = torch_optim_steps(student, optimizer, dln, batches)
    end = unrolled(student, optimizer, dln, batches)
    for (param_name, expected), param in zip(reference.named_parameters(), end.params.values()):
        torch.testing.assert_close(param, expected, rtol=1e-12, atol=1e-14, msg=param_name)


def test_an_optimizer_of_another_model_is_refused() -> None:
    student, dln = make_student(), make_dln()
    other = nn.Linear(2, CLASSES).double()
    teacher = dynaloss.Teacher(dln, steps=1, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), mode="lookahead")
    with pytest.raises(ValueError, match="holds none of the student's trainable parameters"):
        teacher.step(student, iter(make_batches(1, 8, seed=18)), iter(make_batches(1, 8, seed=19)))


def test_an_assigned_optimizer_is_checked_too() -> None:
    student, dln = make_student(), make_dln()
    teacher = dynaloss.Teacher(dln)
    teacher.student_optimizer = torch.optim.Adam(student.parameters())
    assert isinstance(teacher.student_optimizer, torch.optim.Adam)
    with pytest.raises(TypeError, match="torch.optim.SGD"):
        teacher.student_optimizer = torch.optim.Adagrad(student.parameters())


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("student_lr", -0.1, ValueError),
        ("dln_lr", float("nan"), ValueError),
        ("steps", 0, ValueError),
        ("steps", 2.0, TypeError),
        ("mode", "bogus", ValueError),
        ("anchor_strength", 1.0, ValueError),
        ("guard", -1.0, ValueError),
    ],
)
def test_settings_assigned_after_construction_are_checked(name: str, value: object, error: type) -> None:
    teacher = dynaloss.Teacher(make_dln())
    before = getattr(teacher, name)
    with pytest.raises(error, match=name):
        setattr(teacher, name, value)
    assert getattr(teacher, name) == before  # nothing changed
