"""One recommended configuration: Teacher(), PairwiseDLN(), the "default" preset, `dynaloss train`/`demo`, the
adapters' TeachingConfig and the Lightning callback agree on every default, the round cadence included, and each
field is pinned here. Renamed names are gone, not aliased."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import dynaloss
from dynaloss import PRESETS, PairwiseDLN, Teacher, pairwise_teacher
from dynaloss.functional import pairwise_dln_loss
from dynaloss.settings import CLASS_AWARE_TEACHING, DEFAULT_DLN, DEFAULT_TEACHER, MODES, TEACH_EVERY

# The recommended configuration, written out: changing a default is a decision, made here and in the CHANGELOG.
PINNED_TEACHER = {
    "teacher": "lstm",
    "steps": 10,
    "student_lr": 0.1,
    "dln_lr": 1e-3,
    "teacher_lr": 1e-3,
    "mode": "lookahead",
    "anchor_strength": 0.05,
    "guard": None,
    "rollback": True,
    "sparsity": 0.0,
}
PINNED_DLN = {"init": "warm", "monotone": True}
# What a ClassAwareDLN (the recommended DLN) is taught with instead: its parameters are logit offsets and GCE
# exponents, moved by Adam steps; benchmarks/robust.py has the measurements.
PINNED_CLASS_AWARE = {"teacher": "adam", "dln_lr": 0.05, "anchor_strength": 0.0, "rollback": False, "sparsity": 0.05}
# ClassAwareDLN's own defaults, the recommended loss: forward pair weights, q's slope 9 and ceiling 0.7
PINNED_CLASS_AWARE_DLN = {"pair_form": "forward", "q_slope": 9.0, "max_q": 0.7}
PINNED_CADENCE = 20  # a round every 20 optimizer steps (dynaloss.settings.TEACH_EVERY)
# the settings that depend on the loss's parameterisation: Teacher's signature leaves them to the loss
PER_LOSS = ("teacher", "dln_lr", "anchor_strength", "rollback", "sparsity")


def signature_defaults(function: object, names: object) -> dict[str, object]:
    parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    return {name: parameters[name].default for name in names}  # type: ignore[attr-defined]


def test_the_settings_are_the_pinned_configuration() -> None:
    assert dict(DEFAULT_TEACHER) == PINNED_TEACHER
    assert dict(DEFAULT_DLN) == PINNED_DLN
    assert dict(CLASS_AWARE_TEACHING) == PINNED_CLASS_AWARE
    assert TEACH_EVERY == PINNED_CADENCE


def _built(teacher: Teacher) -> dict[str, object]:
    return {
        name: getattr(teacher, name)
        for name in ("steps", "student_lr", "dln_lr", "mode", "anchor_strength", "sparsity", "guard")
    }


def test_the_class_aware_dln_defaults_are_the_recommended_loss() -> None:
    assert signature_defaults(dynaloss.ClassAwareDLN, PINNED_CLASS_AWARE_DLN) == PINNED_CLASS_AWARE_DLN


def test_teacher_defaults_come_from_the_loss() -> None:
    universal = {name: value for name, value in PINNED_TEACHER.items() if name not in PER_LOSS}
    assert signature_defaults(Teacher, universal) == universal
    assert signature_defaults(Teacher, PER_LOSS) == dict.fromkeys(PER_LOSS)
    teacher = Teacher(dynaloss.ClassAwareDLN(10))
    expected = {**PINNED_TEACHER, **PINNED_CLASS_AWARE}
    assert _built(teacher) == {name: expected[name] for name in _built(teacher)}
    assert isinstance(teacher.teacher_model, dynaloss.OptimizerTeacher) and teacher.teacher_model.kind == "adam"
    assert teacher.rollback is None


def test_teacher_and_pairwise_dln_default_to_it() -> None:
    assert signature_defaults(PairwiseDLN, ["monotone"]) == {"monotone": True}
    dln = PairwiseDLN(10)
    assert (dln.init, dln.monotone) == (PINNED_DLN["init"], PINNED_DLN["monotone"])
    teacher = Teacher(dln)
    assert _built(teacher) == {name: PINNED_TEACHER[name] for name in _built(teacher)}
    assert isinstance(teacher.teacher_model, dynaloss.LSTMTeacher) and teacher.rollback is not None
    assert (
        teacher.teacher_optimizer is not None
        and teacher.teacher_optimizer.param_groups[0]["lr"] == PINNED_TEACHER["teacher_lr"]
    )


def test_the_default_preset_is_the_recommended_configuration() -> None:
    preset = PRESETS["default"]
    assert preset["family"] == "class_aware"
    assert dict(preset["teacher"]) == {**PINNED_TEACHER, **PINNED_CLASS_AWARE}
    assert dict(preset["dln"]) == {} and dict(preset["teacher_model"]) == {}
    optimizer = torch.optim.SGD(nn.Linear(2, 10).parameters(), lr=0.1, momentum=0.9)
    teacher = pairwise_teacher(10, optimizer=optimizer)
    assert isinstance(teacher.loss_fn, dynaloss.ClassAwareDLN) and teacher.student_optimizer is optimizer
    # the preset and Teacher(ClassAwareDLN(C)) are one configuration
    bare = Teacher(dynaloss.ClassAwareDLN(10), optimizer=optimizer)
    assert _built(teacher) == _built(bare) and repr(teacher.teacher_model) == repr(bare.teacher_model)


def test_the_pairwise_preset_is_pairwise_dlns_defaults() -> None:
    preset = PRESETS["pairwise"]
    assert (preset["family"], dict(preset["teacher"]), dict(preset["dln"])) == ("pairwise", PINNED_TEACHER, PINNED_DLN)
    teacher = pairwise_teacher(10, "pairwise")
    assert isinstance(teacher.loss_fn, PairwiseDLN) and (teacher.steps, teacher.mode, teacher.anchor_strength) == (
        10,
        "lookahead",
        0.05,
    )


@pytest.mark.parametrize("command", ["train", "demo"])
def test_the_command_line_defaults_are_it(command: str) -> None:
    pytest.importorskip("tqdm")  # the command is the harness: it needs the demo extra
    from dynaloss.harness.cli import parser_defaults

    # the demo runs the README's dynaloss.pairwise_teacher(C, optimizer=optimizer): the "default" preset
    preset = PRESETS["default"]
    demo = {**preset["teacher"], **preset["dln"]}
    assert parser_defaults(command) == ({**PINNED_TEACHER, **PINNED_DLN} if command == "train" else demo)


def test_the_adapters_teaching_config_defaults_to_it() -> None:
    from dynaloss.integrations.teaching import TeachingConfig

    config = TeachingConfig()
    assert (config.steps, config.student_lr, config.mode) == (
        PINNED_TEACHER["steps"],
        PINNED_TEACHER["student_lr"],
        PINNED_TEACHER["mode"],
    )
    teacher = config.make_teacher(PairwiseDLN(3), val_loss=nn.functional.cross_entropy)
    assert _built(teacher) == {name: PINNED_TEACHER[name] for name in _built(teacher)}


def test_the_round_cadence_is_one_setting() -> None:
    from dynaloss.integrations.teaching import TeachingConfig

    assert TeachingConfig().every == PINNED_CADENCE
    pytest.importorskip("lightning")
    from dynaloss.integrations.lightning import TeacherCallback

    assert signature_defaults(TeacherCallback, ["every"]) == {"every": PINNED_CADENCE}


def test_the_constructor_and_the_setter_check_a_setting_alike() -> None:
    # a zero student_lr (a schedule's warm-up) is a rate both take; a negative one both refuse
    teacher = Teacher(PairwiseDLN(3), student_lr=0)
    assert teacher.student_lr == 0.0
    teacher.student_lr = 0.1
    for make in (lambda: Teacher(PairwiseDLN(3), student_lr=-0.1), lambda: setattr(teacher, "student_lr", -0.1)):
        with pytest.raises(ValueError, match="student_lr must be a finite number >= 0, got -0.1"):
            make()


def test_modes_are_a_literal_type_and_presets_are_read_only() -> None:
    assert set(MODES) == {"lookahead", "paper", "research"}
    assert set(PRESETS) == {"default", "pairwise", "ce", "paper", "research"}
    with pytest.raises(TypeError):
        PRESETS["default"]["teacher"]["steps"] = 3  # type: ignore[index]


# ------------------------------------------------------------------------------------------- renamed names
def test_the_per_sample_weight_keyword_is_sample_weight_and_the_old_names_are_gone() -> None:
    dln = PairwiseDLN(4, fast=False).double()
    logits, target = torch.randn(6, 4, dtype=torch.float64), torch.randint(4, (6,))
    sample_weight = torch.rand(6, dtype=torch.float64)
    new = dln(logits, target, sample_weight=sample_weight)
    torch.testing.assert_close(new, dln(logits, target, sample_weight), rtol=0, atol=0)
    matrices = dln.mlp_weights()
    functional = pairwise_dln_loss(matrices=matrices, logits=logits, target=target, sample_weight=sample_weight)
    torch.testing.assert_close(functional, new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="weight"):
        dln(logits, target, weight=sample_weight)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="layers"):
        pairwise_dln_loss(layers=matrices, logits=logits, target=target)  # type: ignore[call-arg]


def test_hypergradient_takes_student_lr_and_not_lr() -> None:
    torch.manual_seed(0)
    student, dln = nn.Linear(3, 4).double(), PairwiseDLN(4, fast=False).double()
    batches = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(4, (5,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dynaloss.hypergradient(student, dln, batches, batches[0], student_lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        dynaloss.hypergradient(student, dln, batches, batches[0], lr=0.1)  # type: ignore[call-arg]
