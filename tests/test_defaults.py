"""One recommended configuration: Teacher(), PairwiseDLN(), the "default" preset, `dynaloss train`/`demo` and the
adapters' TeachingConfig agree on every default, and each field is pinned here. Renamed names still work, warning."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import dynaloss
from dynaloss import PRESETS, PairwiseDLN, Teacher, pairwise_teacher
from dynaloss.functional import pairwise_dln_loss
from dynaloss.settings import DEFAULT_DLN, DEFAULT_TEACHER, MODES

# The recommended configuration, written out: changing a default is a decision, made here and in the CHANGELOG.
PINNED_TEACHER = {
    "teacher": "lstm",
    "steps": 10,
    "student_lr": 0.1,
    "dln_lr": 1e-3,
    "teacher_lr": 1e-3,
    "mode": "lookahead",
    "anchor": 0.05,
    "guard": None,
    "rollback": True,
}
PINNED_DLN = {"init": "warm", "monotone": True}


def signature_defaults(function: object, names: object) -> dict[str, object]:
    parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    return {name: parameters[name].default for name in names}  # type: ignore[attr-defined]


def test_the_settings_are_the_pinned_configuration() -> None:
    assert dict(DEFAULT_TEACHER) == PINNED_TEACHER
    assert dict(DEFAULT_DLN) == PINNED_DLN


def test_teacher_and_pairwise_dln_default_to_it() -> None:
    assert signature_defaults(Teacher, PINNED_TEACHER) == PINNED_TEACHER
    assert signature_defaults(PairwiseDLN, ["monotone"]) == {"monotone": True}
    dln = PairwiseDLN(10)
    assert (dln.init, dln.monotone) == (PINNED_DLN["init"], PINNED_DLN["monotone"])
    teacher = Teacher(dln)
    built = {name: getattr(teacher, name) for name in ("steps", "student_lr", "dln_lr", "mode", "anchor", "guard")}
    assert built == {name: PINNED_TEACHER[name] for name in built}
    assert isinstance(teacher.model, dynaloss.LSTMTeacher) and teacher.rollback is not None
    assert teacher.optimizer is not None and teacher.optimizer.param_groups[0]["lr"] == PINNED_TEACHER["teacher_lr"]


def test_the_default_preset_is_it() -> None:
    preset = PRESETS["default"]
    assert dict(preset["teacher"]) == PINNED_TEACHER
    assert dict(preset["dln"]) == PINNED_DLN
    assert dict(preset["teacher_model"]) == {}
    teacher = pairwise_teacher(10)
    assert (teacher.steps, teacher.mode, teacher.anchor) == (10, "lookahead", 0.05)


@pytest.mark.parametrize("command", ["train", "demo"])
def test_the_command_line_defaults_are_it(command: str) -> None:
    pytest.importorskip("tqdm")  # the command is the harness: it needs the demo extra
    from dynaloss.harness.cli import parser_defaults

    assert parser_defaults(command) == {**PINNED_TEACHER, **PINNED_DLN}


def test_the_adapters_teaching_config_defaults_to_it() -> None:
    from dynaloss.integrations.teaching import TeachingConfig

    config = TeachingConfig()
    assert (config.steps, config.student_lr, config.mode) == (
        PINNED_TEACHER["steps"],
        PINNED_TEACHER["student_lr"],
        PINNED_TEACHER["mode"],
    )
    teacher = config.make_teacher(PairwiseDLN(3), val_loss=nn.functional.cross_entropy)
    built = {name: getattr(teacher, name) for name in ("steps", "student_lr", "dln_lr", "mode", "anchor", "guard")}
    assert built == {name: PINNED_TEACHER[name] for name in built}


def test_modes_are_a_literal_type_and_presets_are_read_only() -> None:
    assert set(MODES) == {"lookahead", "paper", "research"}
    assert set(PRESETS) == {"default", "ce", "paper", "research"}
    with pytest.raises(TypeError):
        PRESETS["default"]["teacher"]["steps"] = 3  # type: ignore[index]


# ------------------------------------------------------------------------------------------- renamed names
def test_the_per_sample_weight_keyword_is_sample_weight_and_weight_still_works_warning() -> None:
    dln = PairwiseDLN(4, fast=False).double()
    logits, target = torch.randn(6, 4, dtype=torch.float64), torch.randint(4, (6,))
    sample_weight = torch.rand(6, dtype=torch.float64)
    new = dln(logits, target, sample_weight=sample_weight)
    with pytest.warns(DeprecationWarning, match="weight= is deprecated.*use sample_weight="):
        old = dln(logits, target, weight=sample_weight)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    layers = dln.mlp_weights()
    with pytest.warns(DeprecationWarning, match="use sample_weight="):
        functional_old = pairwise_dln_loss(layers, logits, target, weight=sample_weight)
    torch.testing.assert_close(functional_old, new, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="weights= is deprecated.*use layers="):
        functional_layers = pairwise_dln_loss(weights=layers, logits=logits, target=target)
    torch.testing.assert_close(functional_layers, dln(logits, target), rtol=0, atol=0)
    with (
        pytest.raises(TypeError, match="got both weight= .deprecated. and sample_weight="),
        pytest.warns(DeprecationWarning),
    ):
        dln(logits, target, weight=sample_weight, sample_weight=sample_weight)


def test_hypergradient_takes_student_lr_and_lr_still_works_warning() -> None:
    torch.manual_seed(0)
    student, dln = nn.Linear(3, 4).double(), PairwiseDLN(4, fast=False).double()
    batches = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(4, (5,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = dynaloss.hypergradient(student, dln, batches, batches[0], student_lr=0.1)
    with pytest.warns(DeprecationWarning, match="lr= is deprecated.*use student_lr="):
        old = dynaloss.hypergradient(student, dln, batches, batches[0], lr=0.1)
    for name in new:
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)
