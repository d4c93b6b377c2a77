"""Issue 22, the second adversarial round: nothing silently wrong, each fix with the test that pins it.

Each test names the item of the issue it covers. Every fix is either a clear ``TypeError``/``ValueError``
naming the value, raised before anything changes, or correct behaviour.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from test_bad_input import assert_identical
from torch import nn

from dynaloss import MultiPartDLN, OptimizerTeacher, PairwiseDLN, Teacher, TeacherModel, hypergradient
from dynaloss import functional as DF
from dynaloss._rollback import Rollback, Snapshot


def dln3(**kwargs: object) -> PairwiseDLN:
    torch.manual_seed(0)
    return PairwiseDLN(3, **{"init": "paper", "hidden": 4, "depth": 1, **kwargs})


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def batches(count: int, seed: int = 0, weight: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x, y = torch.randn(6, 4, generator=g), torch.randint(3, (6,), generator=g)
        out.append((x, y) if weight is None else (x, y, weight))
    return out


# ------------------------------------------------------------------------- 1. an all-ignored batch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(("init", "features"), [("ce", "softmax"), ("warm", "sigmoid"), ("paper", "sigmoid")])
def test_an_all_ignored_batch_gives_zero_loss_and_zero_gradients(reduction, fast, init, features):
    # before: NaN loss and NaN gradients for 'mean' (fast, exact and warm paths), and one optimizer step made
    # the model NaN; nn.CrossEntropyLoss returns NaN there but zero gradients
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 1)
    loss_fn = PairwiseDLN(3, init=init, features=features, reduction=reduction, fast=fast, ignore_index=255)
    x, void = torch.randn(4, 2, 40, 40), torch.full((4, 40, 40), 255)  # 6,400 pixels: the fast path's table
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.state_dict())
    loss = loss_fn(model(x), void)
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert all(bool((p.grad == 0).all()) for p in model.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_all_ignored_batch_through_the_functional_api_and_a_class_weighted_dln_is_zero():
    logits = torch.randn(5, 3, requires_grad=True)
    layers = list(dln3().mlp_weights())
    value = DF.pairwise_dln_loss(layers, logits, torch.full((5,), -100))
    value.backward()
    assert value.item() == 0.0 and bool((logits.grad == 0).all())
    # classes whose weights are all 0: nothing counts either
    weighted = dln3(weight=torch.tensor([0.0, 0.0, 1.0]))
    logits.grad = None
    weighted(logits, torch.tensor([0, 1, 0, 1, 0])).backward()
    assert bool((logits.grad == 0).all())


def test_an_all_void_crop_leaves_a_segmentation_objective_finite():
    from dynaloss.integrations.smp import PSPNetDLNLoss

    objective = PSPNetDLNLoss(3, max_pixels=16)
    main, aux = (torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(2))
    value = objective((main, aux), torch.full((2, 8, 8), 255))
    value.backward()
    assert value.item() == 0.0 and bool((main.grad == 0).all()) and bool((aux.grad == 0).all())


# ------------------------------------------------------------------ 2. an index tensor is not a weight
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_or_boolean_sample_weights_are_a_type_error(dtype):
    # before: PairwiseDLN(z, y, torch.arange(8)) was accepted, sample 0 weighted 0
    with pytest.raises(TypeError, match=rf"sample_weight \(the third argument\) must be floating-point.*{dtype}"):
        dln3()(torch.randn(8, 3), torch.randint(3, (8,)), torch.arange(8).to(dtype))


def test_a_loader_yielding_an_index_is_a_type_error_naming_the_third_element_and_changes_nothing():
    # before: (x, y, idx) was read as per-sample weights and the round committed
    model, teacher = student(), Teacher(dln3(), steps=2)
    before = copy.deepcopy((model.state_dict(), teacher.loss_fn.state_dict()))
    indexed = [(x, y, torch.arange(6)) for x, y in batches(2)]
    with pytest.raises(TypeError, match=r"train_iter yielded a third element of dtype torch.int64.*drop the index"):
        teacher.step(model, iter(indexed), iter(batches(1, seed=1)))
    assert_identical(before, (model.state_dict(), teacher.loss_fn.state_dict()))
    assert teacher.rounds == 0
    with pytest.raises(TypeError, match="train_batches yielded a third element of dtype torch.bool"):
        hypergradient(model, dln3(), [(*batches(1)[0], torch.ones(6, dtype=torch.bool))], batches(1)[0], student_lr=0.1)


# ----------------------------------------------------------------- 3. the input's dtype is computed in
@pytest.mark.parametrize("fast", [True, False])
def test_float64_logits_are_computed_in_float64_with_the_float32_dln(fast):
    # before: float32 arithmetic, and a float32 or a float64 result depending on the path (2e-7 off CE)
    torch.manual_seed(0)
    logits = torch.randn(2000, 5, dtype=torch.float64, requires_grad=True)  # enough rows for the fast table
    target = torch.randint(5, (2000,))
    loss_fn = PairwiseDLN(5, init="ce", fast=fast)  # float32 parameters
    value = loss_fn(logits, target)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, F.cross_entropy(logits, target), rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(value, logits)
    assert grad.dtype == torch.float64


def test_half_precision_logits_count_their_pixels_exactly():
    # found by the class-level review: the 'mean''s pixel count was summed in bf16 (2,178 pixels counted 2,176)
    logits, target = torch.randn(2, 3, 33, 33).bfloat16(), torch.randint(3, (2, 33, 33))
    loss_fn = dln3()
    assert loss_fn(logits, target).item() == pytest.approx(loss_fn(logits.float(), target).item(), rel=1e-6)


# ------------------------------------------------------------------------- class level: tensor arguments
def test_tensors_on_another_device_than_the_dln_are_a_value_error():
    meta = torch.empty(4, 3, device="meta")
    with pytest.raises(ValueError, match="input is on meta but the DLN is on cpu"):
        dln3()(meta, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target is on meta but the DLN is on cpu"):
        dln3()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long, device="meta"))


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        (
            torch.ones(3, dtype=torch.long),
            TypeError,
            "weight must be floating-point class weights, got dtype torch.int",
        ),
        (torch.tensor([1.0, float("nan"), 1.0]), ValueError, "weight contains NaN or Inf"),
        (torch.tensor([1.0, -1.0, 1.0]), ValueError, "weight must hold class weights >= 0"),
    ],
)
def test_class_weights_must_be_finite_non_negative_floats(weight, error, match):
    with pytest.raises(error, match=match):
        dln3(weight=weight)


def test_multipart_dln_computes_float64_parts_in_float64_and_refuses_non_float_parts():
    # found by the class-level review: float64 parts were summed in float32, boolean parts were accepted
    loss_fn = MultiPartDLN(3, [7.5, 0.5, 1.5])
    parts = torch.tensor([1.0 + 1e-12, 2.0, 3.0], dtype=torch.float64)
    value = loss_fn(parts)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(float(parts @ loss_fn.weight.detach().double()), rel=1e-15)
    with pytest.raises(TypeError, match="parts must be floating-point loss values, got dtype torch.bool"):
        loss_fn(torch.ones(3, dtype=torch.bool))


# --------------------------------------------------------------- 4. states of another optimizer teacher
def _taught(kind: str, **options: object) -> Teacher:
    model = OptimizerTeacher(kind, **options) if options else kind
    teacher = Teacher(dln3(), teacher=model, steps=2)
    record = teacher.step(student(), iter(batches(2)), iter(batches(1, seed=1)))
    assert not record.skipped, record.reason
    return teacher


@pytest.mark.parametrize(("saved", "loaded"), list(itertools.permutations(["adam", "sgd", "rmsprop"], 2)))
def test_a_state_of_another_optimizer_teacher_is_refused_whole(saved, loaded, tmp_path):
    # before: every load among adam, sgd and rmsprop succeeded (an Adam's moments became RMSprop's average)
    state = _taught(saved).state_dict()
    torch.save(state, tmp_path / "teacher.pt")
    teacher = _taught(loaded)
    before = copy.deepcopy(teacher.state_dict())
    with pytest.raises(ValueError, match=rf"OptimizerTeacher with .*'kind': '{saved}'.*this one has .*'{loaded}'"):
        teacher.load_state_dict(torch.load(tmp_path / "teacher.pt", weights_only=True))
    assert_identical(before, teacher.state_dict())


def test_an_optimizer_teacher_of_other_hyperparameters_is_refused_and_its_own_state_loads():
    state = _taught("adam", betas=(0.5, 0.9)).state_dict()
    with pytest.raises(ValueError, match="'betas': \\[0.5, 0.9\\]"):
        _taught("adam").load_state_dict(state)
    same = _taught("adam", betas=(0.5, 0.9))
    same.load_state_dict(state)
    # a state without the record of its kind is refused: no old-format loader
    with pytest.raises((ValueError, RuntimeError)):
        same.load_state_dict({**state, "teacher_model": {}})


# ------------------------------------------------------------------------------ 5. validation weights
def test_validation_weights_give_the_weighted_mean_of_the_validation_error():
    # before: (x, y, w) validation batches were accepted and w ignored (the unweighted CE)
    model, teacher = student(), Teacher(dln3(), steps=1, teacher="sgd")
    (x, y), w = batches(1, seed=1)[0], torch.tensor([3.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    record = teacher.step(model, iter(batches(1)), iter([(x, y, w)]))
    # stage I moved a copy of the student one plain SGD step: recompute it
    check = student()
    first_x, first_y = batches(1)[0]
    grads = torch.autograd.grad(dln3()(check(first_x), first_y), list(check.parameters()))
    with torch.no_grad():
        for p, g in zip(check.parameters(), grads):
            p -= 0.1 * g
        per_sample = F.cross_entropy(check(x), y, reduction="none")
    assert record.val_error_before == pytest.approx(float((per_sample * w).sum() / w.sum()), rel=1e-5)


def test_a_val_loss_without_a_weight_argument_and_weighted_validation_batches_are_a_type_error():
    model, teacher = (
        student(),
        Teacher(dln3(), steps=1, val_loss=lambda outputs, targets: F.cross_entropy(outputs, targets)),
    )
    before = copy.deepcopy((model.state_dict(), teacher.loss_fn.state_dict()))
    with pytest.raises(TypeError, match=r"val_iter yielded a weighted batch .* but val_loss takes no weight"):
        teacher.step(model, iter(batches(1)), iter(batches(1, seed=1, weight=torch.ones(6))))
    assert_identical(before, (model.state_dict(), teacher.loss_fn.state_dict()))
    assert teacher.rounds == 0


# ------------------------------------------------------------------------ 6. a reduction='none' DLN
def test_a_teacher_refuses_a_dln_with_reduction_none():
    # before: accepted, then "grad can be implicitly created only for scalar outputs" inside torch
    with pytest.raises(ValueError, match=r"loss_fn \(PairwiseDLN\) has reduction='none'.*'mean' or 'sum'"):
        Teacher(dln3(reduction="none"))


def test_a_loss_fn_that_turns_non_scalar_later_is_a_value_error_and_changes_nothing():
    # found by the class-level review: the loss_fn's return is checked in every unrolled step
    loss_fn = dln3()
    model, teacher = student(), Teacher(loss_fn, steps=1)
    loss_fn.reduction = "none"
    before = copy.deepcopy((model.state_dict(), loss_fn.state_dict()))
    with pytest.raises(ValueError, match=r"loss_fn \(PairwiseDLN\) must return a 0-d floating-point tensor.*\(6,\)"):
        teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    assert_identical(before, (model.state_dict(), loss_fn.state_dict()))


# ------------------------------------------------------------------ 7. what val_loss returns is checked
@pytest.mark.parametrize(
    ("val_loss", "error", "match"),
    [
        (lambda o, y: F.cross_entropy(o, y, reduction="none"), ValueError, r"val_loss must return a 0-d .*\(6,\)"),
        (lambda o, y: 1.0, TypeError, "val_loss must return a 0-d floating-point tensor, got float"),
        (lambda o, y: (o.argmax(1) != y).sum(), ValueError, "val_loss must return a 0-d floating-point.*int64"),
        (lambda o, y: F.cross_entropy(o, y).detach(), ValueError, "val_loss returned a tensor that does not depend"),
    ],
    ids=["per-sample", "float", "integer", "detached"],
)
def test_a_val_loss_that_returns_no_differentiable_scalar_is_refused_and_changes_nothing(val_loss, error, match):
    # before: "grad can be implicitly created only for scalar outputs", "'float' object is not iterable"
    model, teacher = student(), Teacher(dln3(), steps=1, val_loss=val_loss)
    before = copy.deepcopy((model.state_dict(), teacher.loss_fn.state_dict()))
    with pytest.raises(error, match=match):
        teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    assert_identical(before, (model.state_dict(), teacher.loss_fn.state_dict()))
    with pytest.raises(error, match=match):
        hypergradient(model, dln3(), batches(1), batches(1, seed=1)[0], student_lr=0.1, val_loss=val_loss)


# ---------------------------------------------------------------------------- 8. a teacher pickles
@pytest.mark.parametrize("kind", ["lstm", "adam"])
def test_a_teacher_pickles_and_goes_on_where_it_was(kind, tmp_path):
    # before: the default val_loss was a local lambda: pickle.dumps and torch.save failed
    model, teacher = student(), Teacher(dln3(), teacher=kind, steps=1)
    teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    torch.save(teacher, tmp_path / "teacher.pt")
    reference = copy.deepcopy(teacher)
    expected = reference.step(copy.deepcopy(model), iter(batches(1, seed=2)), iter(batches(1, seed=3)))
    for copied in (pickle.loads(pickle.dumps(teacher)), torch.load(tmp_path / "teacher.pt", weights_only=False)):
        assert copied.val_loss == teacher.val_loss and copied.rounds == 1
        record = copied.step(copy.deepcopy(model), iter(batches(1, seed=2)), iter(batches(1, seed=3)))
        assert not record.skipped and record.update_norm == expected.update_norm
        assert_identical(reference.state_dict(), copied.state_dict())


# ------------------------------------------------------------- 9. an optimizer that holds the DLN
def test_an_optimizer_that_holds_the_dln_is_refused_when_given_and_when_grown():
    # before: Teacher(dln, optimizer=opt) accepted an optimizer over the model and the DLN
    model, loss_fn = student(), dln3()
    both = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer \(SGD\) holds 2 of the DLN's parameters: the teacher alone"):
        Teacher(loss_fn, optimizer=both)
    teacher = Teacher(loss_fn, steps=1)
    with pytest.raises(ValueError, match="holds 2 of the DLN's parameters"):
        teacher.student_optimizer = both
    assert teacher.student_optimizer is None
    own = torch.optim.SGD(model.parameters(), lr=0.1)
    teacher.student_optimizer = own
    own.add_param_group({"params": list(loss_fn.parameters())})  # after it was checked
    before = copy.deepcopy((model.state_dict(), loss_fn.state_dict()))
    with pytest.raises(ValueError, match="holds 2 of the DLN's parameters"):
        teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    assert_identical(before, (model.state_dict(), loss_fn.state_dict()))


# ---------------------------------------------------------------------- 11. a compiled student
def test_a_compiled_student_or_dln_is_a_type_error_saying_to_pass_the_original_module():
    # before: the round failed after some 18 s of compiling, inside torch (no double backward)
    model = student()
    teacher = Teacher(dln3(), steps=1)
    with pytest.raises(
        TypeError, match=r"student is a torch.compile'd module.*pass the module it wraps, student\._orig_mod"
    ):
        teacher.step(torch.compile(model), iter(batches(1)), iter(batches(1, seed=1)))
    holder = nn.Sequential(torch.compile(model))
    with pytest.raises(TypeError, match=r"student\.0 is a torch.compile'd module.*student\.0\._orig_mod"):
        teacher.step(holder, iter(batches(1)), iter(batches(1, seed=1)))
    assert teacher.rounds == 0
    with pytest.raises(TypeError, match="loss_fn is a torch.compile'd module"):
        Teacher(torch.compile(dln3()))
    with pytest.raises(TypeError, match="student is a torch.compile'd module"):
        hypergradient(torch.compile(model), dln3(), batches(1), batches(1)[0], student_lr=0.1)
    assert not teacher.step(model, iter(batches(1)), iter(batches(1, seed=1))).skipped  # ._orig_mod's own


# ------------------------------------------------------------------- 10. a round that learned nothing
def _snapshot(model: nn.Module, teacher: Teacher) -> object:
    return copy.deepcopy((model.state_dict(), teacher.state_dict()))


@pytest.mark.parametrize("mode", ["lookahead", "paper", "research"])
@pytest.mark.parametrize("how", ["student_lr", "optimizer"])
def test_a_round_at_learning_rate_zero_is_skipped_and_changes_nothing(mode, how):
    # before: the hypergradient was 0.0 but the LSTM's output at zero input moved the DLN by 4e-3 to 2e-2
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01) if how == "optimizer" else None
    teacher = Teacher(dln3(), steps=2, mode=mode, optimizer=optimizer)
    first = teacher.step(model, iter(batches(4)), iter(batches(1, seed=1)))  # memory (and optimizer state)
    assert not first.skipped, first.reason
    if how == "student_lr":
        teacher.student_lr = 0
    else:  # a schedule's zero, in every param group
        optimizer.param_groups[0]["lr"] = 0.0
    before = _snapshot(model, teacher)
    optimizer_before = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
    record = teacher.step(model, iter(batches(4, seed=2)), iter(batches(1, seed=3)))
    assert record.skipped and record.hypergradient_norm == 0.0 and record.update_norm == 0.0
    assert "hypergradient is zero, so the round learned nothing" in record.reason
    after = _snapshot(model, teacher)
    after[1]["rounds"] = before[1]["rounds"]  # the skipped round is counted, as every skipped round
    assert_identical(before, after)
    if optimizer is not None:
        assert_identical(optimizer_before, optimizer.state_dict())


# ------------------------------------------------------------------------- 12. NaN sample weights
@pytest.mark.parametrize("where", ["train", "val"])
def test_non_finite_sample_weights_are_named_as_the_reason_of_the_skip(where):
    # before: the reason said the student's outputs were non-finite
    model, teacher = student(), Teacher(dln3(), steps=1)
    poisoned = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    train = batches(1, weight=poisoned if where == "train" else None)
    val = batches(1, seed=1, weight=poisoned if where == "val" else None)
    before = _snapshot(model, teacher)
    record = teacher.step(model, iter(train), iter(val))
    assert record.skipped and record.reason.startswith(
        f"the sample weights of {'a train' if where == 'train' else 'the val'} batch"
    )
    after = _snapshot(model, teacher)
    after[1]["rounds"] = before[1]["rounds"]
    assert_identical(before, after)


# ------------------------------------------------------------------------------- 13. Ctrl-C on the CLI
def test_ctrl_c_during_train_says_where_the_checkpoint_is_and_exits_130(tmp_path, capsys, monkeypatch):
    # before: Python's KeyboardInterrupt traceback and exit status -2
    from dynaloss.harness.checkpoint import RunCheckpoint
    from dynaloss.harness.cli import CHECKPOINT, main

    argv = ["train", "--data", "digits", "--unroll", "2", "--total-steps", "12", "--no-progress"]
    argv += ["--out", str(tmp_path), "--checkpoint-every", "1"]
    save = RunCheckpoint.after_round

    def interrupted(self, *args, **kwargs):
        saved = save(self, *args, **kwargs)
        if self.rounds == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second round's checkpoint
        return saved

    monkeypatch.setattr(RunCheckpoint, "after_round", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"interrupted; the last checkpoint is {tmp_path / CHECKPOINT}" in err and "--resume" in err
    monkeypatch.setattr(RunCheckpoint, "after_round", save)
    assert main([*argv, "--resume"]) == 0


# ------------------------------------------------------------------- class level: states and callables
def test_a_rollback_state_of_other_settings_is_refused():
    # found by the class-level review: a window-5 state loaded into a window-3 watch was silently truncated
    saved = Rollback(window=5)
    for error in (1.0, 0.9, 0.8):
        saved.observe(error, Snapshot(0, {}, {}, None))
    with pytest.raises(ValueError, match=r"Rollback with \{'window': 5.*this one has \{'window': 3"):
        Rollback(window=3).load_state_dict(saved.state_dict())


class _ScalarTeacher(TeacherModel):
    """A custom teacher model that returns one number for every coordinate."""

    def initial_memory(self, num_coordinates, *, like):
        return (like.new_zeros(()),)

    def forward(self, grad, memory):
        return -grad.sign().mean(), memory


def test_a_teacher_model_returning_a_direction_of_another_shape_is_refused_and_changes_nothing():
    # found by the class-level review: a scalar direction broadcast, moving every DLN coordinate alike
    model, teacher = student(), Teacher(dln3(), teacher=_ScalarTeacher(), steps=1)
    before = _snapshot(model, teacher)
    with pytest.raises(
        ValueError, match=r"teacher model \(_ScalarTeacher\) must return .* shape \(\d+,\).*got shape \(\)"
    ):
        teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    assert_identical(before, _snapshot(model, teacher))


def test_a_float64_student_is_taught_by_the_float32_dln_in_float64():
    model = student().double()
    teacher = Teacher(dln3(), steps=2)
    train = [(x.double(), y) for x, y in batches(2)]
    val = [(x.double(), y) for x, y in batches(1, seed=1)]
    record = teacher.step(model, iter(train), iter(val))
    assert not record.skipped, record.reason
    assert all(p.dtype == torch.float32 for p in teacher.loss_fn.parameters())


def test_a_val_loss_of_one_element_is_taken_as_the_scalar_it_is():
    model, teacher = student(), Teacher(dln3(), steps=1, val_loss=lambda o, y: F.cross_entropy(o, y).reshape(1, 1))
    record = teacher.step(model, iter(batches(1)), iter(batches(1, seed=1)))
    assert not record.skipped and math.isfinite(record.val_error_before)
