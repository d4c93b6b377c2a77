"""Teacher models: gradient preprocessing, the coordinate-wise LSTM, and the optimizer ablations."""

from __future__ import annotations

import math

import pytest
import torch

from dynaloss.teachers import LSTMTeacher, OptimizerTeacher, TeacherModel, make_teacher_model, preprocess_gradient

E = math.e


# ------------------------------------------------------------------------------------------ preprocessing
def test_preprocess_large_gradients_are_log_magnitude_and_sign():
    grad = torch.tensor([1.0, -(E**-5), E**3, -1.0, E**-10], dtype=torch.float64)
    expected = torch.tensor([[0.0, 1.0], [-0.5, -1.0], [0.3, 1.0], [0.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradient(grad), expected, rtol=1e-12, atol=1e-15)


def test_preprocess_small_gradients_are_minus_one_and_scaled_value():
    grad = torch.tensor([E**-12, -(E**-12), 0.0, -0.0, E**-10.5], dtype=torch.float64)
    expected = torch.tensor(
        [[-1.0, E**-2], [-1.0, -(E**-2)], [-1.0, 0.0], [-1.0, 0.0], [-1.0, E**-0.5]], dtype=torch.float64
    )
    torch.testing.assert_close(preprocess_gradient(grad), expected, rtol=1e-12, atol=1e-15)


def test_preprocess_respects_k():
    grad = torch.tensor([E**-3, E**-1, -(E**-4)], dtype=torch.float64)
    expected = torch.tensor([[-1.0, E**-1], [-0.5, 1.0], [-1.0, -(E**-2)]], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradient(grad, k=2.0), expected, rtol=1e-12, atol=1e-15)


def test_preprocess_gradient_is_finite_at_zero():
    grad = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = preprocess_gradient(grad)
    (back,) = torch.autograd.grad(out.sum(), grad)
    assert torch.isfinite(out).all() and torch.isfinite(back).all()


# ----------------------------------------------------------------------------------------------- LSTM
def _grads(p: int = 50, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    magnitudes = 10.0 ** torch.empty(p, dtype=torch.float64).uniform_(-12, 3, generator=g)
    signs = torch.randint(0, 2, (p,), generator=g) * 2 - 1
    grad = magnitudes * signs
    grad[0] = 0.0
    return grad.to(dtype)


def test_lstm_memory_has_one_row_per_coordinate():
    teacher = LSTMTeacher()
    like = torch.zeros(7)
    memory = teacher.initial_memory(7, like=like)
    assert [tuple(m.shape) for m in memory] == [(7, 64)] * 6 + [(7, 1)] * 2
    assert all((m == 0).all() for m in memory)
    direction, new_memory = teacher(_grads(7), memory)
    assert direction.shape == (7,)
    assert [tuple(m.shape) for m in new_memory] == [(7, 64)] * 6 + [(7, 1)] * 2


def test_lstm_memory_tensors_are_distinct():
    memory = LSTMTeacher().initial_memory(3, like=torch.zeros(3))
    assert len({m.data_ptr() for m in memory}) == len(memory)


def test_lstm_output_lies_in_open_unit_interval():
    torch.manual_seed(0)
    teacher = LSTMTeacher()
    memory = teacher.initial_memory(50, like=torch.zeros(50))
    for seed in range(5):
        with torch.no_grad():
            direction, memory = teacher(_grads(50, seed) * 1e3, memory)
        assert (direction.abs() < 1).all()


def test_lstm_memory_changes_between_calls_and_shapes_the_output():
    torch.manual_seed(0)
    teacher = LSTMTeacher()
    grad = _grads(10)
    memory0 = teacher.initial_memory(10, like=grad)
    with torch.no_grad():
        out1, memory1 = teacher(grad, memory0)
        out2, memory2 = teacher(grad, memory1)
    assert all(not torch.equal(a, b) for a, b in zip(memory0, memory1))
    assert all(not torch.equal(a, b) for a, b in zip(memory1, memory2))
    assert not torch.equal(out1, out2)  # same gradient, different memory, different update


def test_lstm_is_coordinate_wise():
    torch.manual_seed(0)
    teacher = LSTMTeacher()
    grad = _grads(6)
    with torch.no_grad():
        whole, _ = teacher(grad, teacher.initial_memory(6, like=grad))
        parts = [teacher(grad[i : i + 1], teacher.initial_memory(1, like=grad))[0] for i in range(6)]
    torch.testing.assert_close(whole, torch.cat(parts), rtol=1e-6, atol=1e-7)


def test_lstm_works_in_float64():
    torch.manual_seed(0)
    teacher = LSTMTeacher().double()
    grad = _grads(5, dtype=torch.float64)
    direction, memory = teacher(grad, teacher.initial_memory(5, like=grad))
    assert direction.dtype == torch.float64
    assert all(m.dtype == torch.float64 for m in memory)


def test_lstm_supports_double_backward():
    torch.manual_seed(0)
    teacher = LSTMTeacher().double()
    grad = _grads(5, dtype=torch.float64)
    direction, _ = teacher(grad, teacher.initial_memory(5, like=grad))
    params = list(teacher.parameters())
    first = torch.autograd.grad((direction**2).sum(), params, create_graph=True)
    sum(g.pow(2).sum() for g in first).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(p.grad.abs().sum() for p in params) > 0


def test_lstm_double_backward_matches_finite_differences():
    torch.manual_seed(0)
    teacher = LSTMTeacher(hidden_size=3).double()
    grad = _grads(4, dtype=torch.float64)
    memory = tuple(torch.randn_like(m) * 0.5 for m in teacher.initial_memory(4, like=grad))
    name = f"cells.{len(teacher.cells) - 1}.weight_ih"
    weight = teacher.get_parameter(name).detach().clone().requires_grad_()

    def direction_of(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(teacher, {name: w}, (grad, memory))[0]

    assert torch.autograd.gradgradcheck(direction_of, (weight,))


def test_lstm_is_learnable_and_has_four_cells():
    teacher = LSTMTeacher()
    assert teacher.learnable
    assert [(c.input_size, c.hidden_size) for c in teacher.cells] == [(2, 64), (64, 64), (64, 64), (64, 1)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be >= 1"),
        ({"num_layers": 1}, ValueError, "num_layers must be >= 2"),
        ({"preprocess_k": 0.0}, ValueError, "preprocess_k must be a finite number > 0"),
        ({"hidden_size": 2.5}, TypeError, "hidden_size must be an int"),
    ],
)
def test_lstm_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSTMTeacher(**kwargs)


# ----------------------------------------------------------------------------------------- optimizers
def test_sgd_direction_is_negative_gradient():
    teacher = OptimizerTeacher("sgd")
    grad = torch.tensor([0.5, -2.0, 0.0, 3e-9], dtype=torch.float64)
    memory = teacher.initial_memory(4, like=grad)
    for _ in range(3):
        direction, memory = teacher(grad, memory)
        assert torch.equal(direction, -grad)
    assert memory[2].item() == 3


def _quadratic_grad(param: torch.Tensor) -> torch.Tensor:
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0, 1e-4, 50.0], dtype=torch.float64)
    centre = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -0.25], dtype=torch.float64)
    return scales * (param - centre) + torch.sin(3 * param)


def _trajectories(teacher: TeacherModel, optimizer_cls, lr: float, steps: int, **optimizer_kwargs):
    start = torch.tensor([0.3, -1.0, 2.0, 0.4, -0.7, 0.1], dtype=torch.float64)
    phi = start.clone()
    memory = teacher.initial_memory(phi.numel(), like=phi)
    param = start.clone().requires_grad_()
    optimizer = optimizer_cls([param], lr=lr, **optimizer_kwargs)
    ours, theirs = [], []
    for _ in range(steps):
        direction, memory = teacher(_quadratic_grad(phi), memory)
        phi = phi + lr * direction
        param.grad = _quadratic_grad(param.detach())
        optimizer.step()
        ours.append(phi - start)
        theirs.append(param.detach() - start)
    return torch.stack(ours), torch.stack(theirs)


@pytest.mark.parametrize(
    ("kwargs", "torch_kwargs"),
    [({}, {}), ({"betas": (0.8, 0.95), "eps": 1e-6}, {"betas": (0.8, 0.95), "eps": 1e-6})],
)
def test_adam_teacher_matches_torch_adam_trajectory(kwargs, torch_kwargs):
    ours, theirs = _trajectories(OptimizerTeacher("adam", **kwargs), torch.optim.Adam, 1e-2, 20, **torch_kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)
    assert theirs[-1].abs().min() > 0  # every coordinate moved


def test_rmsprop_teacher_matches_torch_rmsprop_trajectory():
    # torch.optim.RMSprop divides by sqrt(v) + eps, not sqrt(v + eps)
    ours, theirs = _trajectories(OptimizerTeacher("rmsprop"), torch.optim.RMSprop, 1e-2, 20, alpha=0.99, eps=1e-8)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)
    assert theirs[-1].abs().min() > 0


def test_rmsprop_eps_is_added_outside_the_square_root():
    teacher = OptimizerTeacher("rmsprop", eps=1e-2)
    grad = torch.tensor([1e-3], dtype=torch.float64)
    direction, _ = teacher(grad, teacher.initial_memory(1, like=grad))
    # v = 0.01 * 1e-6 = 1e-8, sqrt(v) = 1e-4: -1e-3 / (1e-4 + 1e-2); sqrt(v + eps) would give ~ -1e-2
    torch.testing.assert_close(direction, torch.tensor([-1e-3 / (1e-4 + 1e-2)], dtype=torch.float64))


def test_adam_first_step_is_minus_sign_of_gradient():
    teacher = OptimizerTeacher("adam", eps=1e-12)
    grad = torch.tensor([3.0, -0.25, 0.0], dtype=torch.float64)
    direction, _ = teacher(grad, teacher.initial_memory(3, like=grad))
    torch.testing.assert_close(direction, torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["adam", "sgd", "rmsprop"])
def test_optimizer_teachers_have_nothing_to_learn(kind):
    teacher = OptimizerTeacher(kind)
    assert not teacher.learnable and list(teacher.parameters()) == []
    assert isinstance(make_teacher_model(kind), OptimizerTeacher)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("adamw",), {}, ValueError, "kind must be one of"),
        (("SGD",), {}, ValueError, "kind must be one of"),
        (("adam",), {"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must lie in \[0, 1\)"),
        (("adam",), {"betas": (0.9, -0.1)}, ValueError, r"betas\[1\] must lie in \[0, 1\)"),
        (("rmsprop",), {"alpha": 1.0}, ValueError, r"alpha must lie in \[0, 1\)"),
        (("adam",), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
    ],
)
def test_optimizer_teacher_bad_arguments_raise(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        OptimizerTeacher(*args, **kwargs)


@pytest.mark.parametrize("name", ["lstmm", "Adam", 3, None])
def test_make_teacher_model_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="teacher must be one of"):
        make_teacher_model(name)


def test_make_teacher_model_passes_instances_through():
    teacher = LSTMTeacher(hidden_size=4)
    assert make_teacher_model(teacher) is teacher
    assert isinstance(make_teacher_model("lstm"), LSTMTeacher)
