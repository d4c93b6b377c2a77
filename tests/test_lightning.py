"""TeacherCallback: teacher rounds inside a Lightning Trainer, logged, checkpointed and resumed."""

from __future__ import annotations

import copy
import csv
import glob
import os
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import dynaloss  # noqa: E402
from dynaloss.integrations.lightning import TeacherCallback  # noqa: E402

torch.set_num_threads(1)
pytestmark = [
    # Lightning's advice for real runs (more loader workers, a larger log interval) does not apply to these tiny ones
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    # Lightning 2.6's own use of a torch pytree API that torch deprecated
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]

CLASSES, FEATURES = 3, 8


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable task: one Gaussian blob per class."""
    generator = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(CLASSES, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (384,), generator=generator)
    return centers[y] + torch.randn(384, FEATURES, generator=generator), y


class Net(pl.LightningModule):
    """An MLP trained with a PairwiseDLN; the DLN is a submodule, as in most user code."""

    def __init__(self, optimizer: str = "sgd", dln_in_optimizer: bool = False) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))
        self.loss_fn = dynaloss.PairwiseDLN(CLASSES, init="ce")
        self.optimizer, self.dln_in_optimizer = optimizer, dln_in_optimizer
        self.x, self.y = blobs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.parameters() if self.dln_in_optimizer else self.model.parameters()
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=0.01)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:256], self.y[:256]), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[256:], self.y[256:]), batch_size=64)


def make_teacher(net: Net) -> dynaloss.Teacher:
    return dynaloss.Teacher(net.loss_fn, mode="lookahead", steps=2)


def make_trainer(tmp_path: Any, callback: pl.Callback, max_steps: int, **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "max_steps": max_steps,
        "logger": CSVLogger(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        "num_sanity_val_steps": 0,  # the callback must build the validation loader itself
        "log_every_n_steps": 1,  # the rounds must reach the loggers once each all the same
        "callbacks": [callback],
    }
    return pl.Trainer(**{**settings, **options})


def spy_on_rounds(teacher: dynaloss.Teacher, trainer_of: Callable[[], pl.Trainer]) -> list[dict[str, Any]]:
    """Record, at each teacher.step call, the trainer's step, the student and the teacher's state before it.

    (A copy: a state dict shares the tensors that the round then updates in place.)
    """
    calls: list[dict[str, Any]] = []
    step = teacher.step

    def recorded(student: nn.Module, train_iter: Any, val_iter: Any) -> dynaloss.RoundRecord:
        state = copy.deepcopy(teacher.state_dict())
        calls.append({"global_step": trainer_of().global_step, "student": student, "state": state})
        return step(student, train_iter, val_iter)

    teacher.step = recorded  # type: ignore[method-assign]
    return calls


def logged_rounds(trainer: pl.Trainer) -> list[dict[str, str]]:
    """The rows of the trainer's CSV metrics file that hold a teacher round."""
    assert isinstance(trainer.logger, CSVLogger)
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as file:
        return [row for row in csv.DictReader(file) if row.get("teacher/round")]


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality of nested state dicts (tensors compared bitwise)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_rounds_run_every_k_batches_teach_the_dln_and_are_logged(tmp_path: Any) -> None:
    net = Net()
    teacher = make_teacher(net)
    callback = TeacherCallback(teacher, every=3)
    trainer = make_trainer(tmp_path, callback, max_steps=9)
    calls = spy_on_rounds(teacher, lambda: trainer)
    before = [p.detach().clone() for p in net.loss_fn.parameters()]

    trainer.fit(net)

    assert [call["global_step"] for call in calls] == [3, 6, 9]
    assert teacher.rounds == 3 and callback.last_record is not None and callback.last_record.round == 2
    assert all(call["student"] is net for call in calls)
    assert teacher.student_optimizer is trainer.optimizers[0]
    changed = sum(float((p.detach() - b).abs().sum()) for p, b in zip(net.loss_fn.parameters(), before))
    assert changed > 0, "the rounds did not update the DLN"
    assert not callback.last_record.skipped

    assert isinstance(trainer.logger, CSVLogger)
    logged = logged_rounds(trainer)
    columns = {"round", "val_error_before", "val_error_after", "hypergradient_norm", "update_norm", "skipped"}
    assert {f"teacher/{name}" for name in columns | {"dln_lr"}} <= set(logged[0])
    assert [(row["step"], row["teacher/round"]) for row in logged] == [("3", "0.0"), ("6", "1.0"), ("9", "2.0")]
    assert float(logged[-1]["teacher/val_error_after"]) == pytest.approx(callback.last_record.val_error_after)
    assert float(logged[-1]["teacher/skipped"]) == 0.0


def test_student_option_passes_the_inner_model(tmp_path: Any) -> None:
    net = Net()
    teacher = make_teacher(net)
    trainer = make_trainer(tmp_path, TeacherCallback(teacher, every=2, student=lambda module: module.model), 2)
    calls = spy_on_rounds(teacher, lambda: trainer)
    trainer.fit(net)
    assert [call["student"] for call in calls] == [net.model] and teacher.rounds == 1

    broken = TeacherCallback(make_teacher(Net()), every=1, student=lambda module: "not a module")
    with pytest.raises(TypeError, match="student\\(pl_module\\) must return a torch.nn.Module, got str"):
        make_trainer(tmp_path, broken, 1).fit(Net())


# the resumed trainer needs no ModelCheckpoint of its own
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_restores_the_teacher_and_continues_the_schedule(tmp_path: Any) -> None:
    # every=3 does not divide the checkpoint's step 4: a batch count that were not restored would move the rounds
    net = Net()
    teacher = make_teacher(net)
    callback = TeacherCallback(teacher, every=3)
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=4, save_top_k=-1)
    trainer = make_trainer(tmp_path, callback, 4, enable_checkpointing=True, callbacks=[callback, saver])
    trainer.fit(net)
    assert teacher.rounds == 1 and teacher.memory is not None
    saved = copy.deepcopy(teacher.state_dict())
    (path,) = glob.glob(str(tmp_path / "checkpoints" / "*step=4.ckpt"))

    resumed_net = Net()
    resumed_teacher = make_teacher(resumed_net)
    resumed = TeacherCallback(resumed_teacher, every=3)
    assert resumed_teacher.rounds == 0 and resumed_teacher.memory is None
    resumed_trainer = make_trainer(tmp_path, resumed, 7)
    calls = spy_on_rounds(resumed_teacher, lambda: resumed_trainer)
    resumed_trainer.fit(resumed_net, ckpt_path=path)

    assert [call["global_step"] for call in calls] == [6]
    assert_same(calls[0]["state"], saved)  # DLN, teacher model, its Adam, memory, anchor, round count, rollback
    assert resumed_teacher.rounds == 2 and resumed.state_dict()["batches"] == 7
    assert [(row["step"], row["teacher/round"]) for row in logged_rounds(resumed_trainer)] == [("6", "1.0")]
    assert resumed_teacher.student_optimizer is resumed_trainer.optimizers[0]


def test_load_state_dict_checks_before_writing() -> None:
    callback = TeacherCallback(make_teacher(Net()), every=2)
    with pytest.raises(ValueError, match="keys 'teacher', 'batches'"):
        callback.load_state_dict({"batches": 3})
    with pytest.raises(ValueError, match="state_dict\\['batches'\\] must be >= 0"):
        callback.load_state_dict({"teacher": callback.teacher.state_dict(), "batches": -1})
    other = dynaloss.Teacher(dynaloss.PairwiseDLN(CLASSES + 1, init="ce"), mode="lookahead", steps=2)
    with pytest.raises(ValueError):
        callback.load_state_dict({"teacher": other.state_dict(), "batches": 5})
    assert callback.state_dict()["batches"] == 0


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"teacher": "lstm"}, TypeError, "teacher must be a dynaloss.Teacher, got str"),
        ({"every": 0}, ValueError, "every must be >= 1, got 0"),
        ({"every": 2.5}, TypeError, "every must be an int, got float"),
        ({"every": True}, TypeError, "every must be an int, got bool"),
        ({"student": "model"}, TypeError, "student must be None or a callable"),
    ],
)
def test_bad_arguments_raise(arguments: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TeacherCallback(**{"teacher": make_teacher(Net()), **arguments})


@pytest.mark.parametrize("mode", ["paper", "research"])
def test_other_modes_are_refused(mode: Any, tmp_path: Any) -> None:
    net = Net()
    with pytest.raises(ValueError, match=f"mode='lookahead', got mode='{mode}'.*behind Lightning's back"):
        TeacherCallback(dynaloss.Teacher(net.loss_fn, mode=mode, steps=2))
    teacher = make_teacher(net)
    callback = TeacherCallback(teacher, every=2)
    teacher.mode = mode  # a setting, assignable after construction: fit start checks it again
    with pytest.raises(ValueError, match="mode='lookahead'"):
        make_trainer(tmp_path, callback, 2).fit(net)
    assert teacher.rounds == 0


def test_an_optimizer_holding_dln_parameters_is_refused(tmp_path: Any) -> None:
    net = Net(dln_in_optimizer=True)
    teacher = make_teacher(net)
    with pytest.raises(ValueError, match="holds \\d+ of the DLN's parameters"):
        make_trainer(tmp_path, TeacherCallback(teacher, every=1), 2).fit(net)
    assert teacher.rounds == 0 and teacher.student_optimizer is None


def test_an_unsupported_optimizer_is_refused(tmp_path: Any) -> None:
    net = Net(optimizer="rmsprop")
    with pytest.raises(TypeError, match="RMSprop"):
        make_trainer(tmp_path, TeacherCallback(make_teacher(net), every=1), 2).fit(net)


def test_a_missing_validation_loader_is_refused(tmp_path: Any) -> None:
    net = Net()
    callback = TeacherCallback(make_teacher(net), every=1)
    with pytest.raises(ValueError, match="val_dataloader and a validation_step"):
        make_trainer(tmp_path, callback, 2, limit_val_batches=0).fit(net)
