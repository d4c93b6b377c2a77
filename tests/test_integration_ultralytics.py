"""The ultralytics adapter: exact at init, teaches through ultralytics' own loss, trains, saves and resumes offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("ultralytics") is None:  # checked without importing it: the import probes the network
    pytest.skip("ultralytics is not installed (pip install dynaloss[ultralytics])", allow_module_level=True)

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402

from dynaloss import Teacher, hypergradient  # noqa: E402
from dynaloss.harness.synthetic import write_detection_dataset  # noqa: E402
from dynaloss.harness.yolo import scaled_config, write_scaled_config  # noqa: E402
from dynaloss.integrations.teaching import TeachingConfig  # noqa: E402
from dynaloss.integrations.ultralytics import DLNDetectionLoss, DLNDetectionTrainer  # noqa: E402
from dynaloss.integrations.ultralytics.targets import pad_targets, unpad_targets  # noqa: E402
from dynaloss.integrations.ultralytics.trainer import CHECKPOINT_KEY  # noqa: E402

NUM_CLASSES = 3
IMGSZ = 64
GAINS = [7.5, 0.5, 1.5]  # ultralytics' box, cls, dfl


def tiny_config(name: str = "yolov3-tiny.yaml") -> dict:
    return scaled_config(name, width_multiple=0.125)


def tiny_model(name: str = "yolov3-tiny.yaml", seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    model = DetectionModel(tiny_config(name), nc=NUM_CLASSES, verbose=False)
    model.args = get_cfg(DEFAULT_CFG)  # what ultralytics' trainer attaches; the loss reads its gains there
    return model.train()


def synthetic_batch(batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    boxes_per_image = [2, 1, 3, 1][:batch_size]
    batch_idx = torch.cat([torch.full((n,), float(i)) for i, n in enumerate(boxes_per_image)])
    n = len(batch_idx)
    centres = 0.25 + 0.5 * torch.rand(n, 2, generator=generator)
    sizes = 0.1 + 0.3 * torch.rand(n, 2, generator=generator)
    return {
        "img": torch.rand(batch_size, 3, IMGSZ, IMGSZ, generator=generator),
        "batch_idx": batch_idx,
        "cls": torch.randint(NUM_CLASSES, (n, 1), generator=generator).float(),
        "bboxes": torch.cat([centres, sizes], 1),
    }


def round_batch(seed: int, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    b = synthetic_batch(batch_size, seed)
    return b["img"], pad_targets(b["batch_idx"], b["cls"], b["bboxes"], batch_size)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("squares")
    data = write_detection_dataset(root / "data", train=12, val=4, size=IMGSZ, num_classes=NUM_CLASSES)
    model_yaml = write_scaled_config(root / "yolov3-tiny-w0125.yaml", "yolov3-tiny.yaml", width_multiple=0.125)
    return {"root": root, "data": data, "model": model_yaml}


# ---------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("name", ["yolov3-tiny.yaml", "yolov3-tinyu.yaml", "yolov3.yaml", "yolov3u.yaml"])
def test_loss_and_gradients_equal_ultralytics_at_init(name):
    model = tiny_model(name)
    batch = synthetic_batch()
    params = [p for p in model.parameters() if p.requires_grad]

    reference, reference_items = v8DetectionLoss(model)(model(batch["img"]), batch)
    criterion = DLNDetectionLoss(model)
    ours, items = criterion(model(batch["img"]), batch)
    grads = torch.autograd.grad(ours.sum(), params)

    torch.testing.assert_close(ours.sum(), reference.sum(), rtol=1e-6, atol=0)
    assert list(items) == list(reference_items) == ["box_loss", "cls_loss", "dfl_loss"]
    for key in items:
        assert torch.equal(items[key], reference_items[key])
    # the DLN's gains are exp(log(gain)): ultralytics' to one float32 ulp (7.5 comes back as 7.5000005), which
    # elements of the gradient where the parts' gradients cancel amplify; so the gradients are compared with
    # ultralytics' at exactly the DLN's gains
    gains = criterion.dln.weight.detach()
    torch.testing.assert_close(gains, torch.tensor(GAINS), rtol=2e-7, atol=0)
    model.args = get_cfg(DEFAULT_CFG, {"box": float(gains[0]), "cls": float(gains[1]), "dfl": float(gains[2])})
    at_dln_gains, _ = v8DetectionLoss(model)(model(batch["img"]), batch)
    for grad, reference_grad in zip(grads, torch.autograd.grad(at_dln_gains.sum(), params)):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-8)


def test_dln_weights_are_what_weights_the_parts():
    model = tiny_model()
    batch = synthetic_batch()
    criterion = DLNDetectionLoss(model)
    preds = model(batch["img"])
    parts = criterion.parts(preds, batch).detach()
    with torch.no_grad():
        criterion.dln.log_weight.copy_(torch.tensor([2.0, 0.5, 0.25]).log())
    loss, items = criterion(preds, batch)
    torch.testing.assert_close(loss, (2.0 * parts[0] + 0.5 * parts[1] + 0.25 * parts[2]) * 2)  # batch of 2
    torch.testing.assert_close(items["box_loss"], 7.5 * parts[0])  # logged parts stay ultralytics' gained ones


def test_criterion_is_shared_by_model_copies():
    import copy

    criterion = DLNDetectionLoss(tiny_model())
    assert copy.deepcopy(criterion) is criterion
    assert list(criterion.objective.parameters()) == [criterion.dln.log_weight]


def test_pad_and_unpad_targets_round_trip_with_empty_images():
    batch_idx = torch.tensor([2.0, 0.0, 2.0, 2.0])
    cls = torch.tensor([[1.0], [0.0], [2.0], [1.0]])
    bboxes = torch.rand(4, 4)
    padded = pad_targets(batch_idx, cls, bboxes, batch_size=3)
    assert padded.shape == (3, 3, 5)
    assert (padded[1, :, 0] == -1).all()  # image 1 has no boxes: only padding
    back = unpad_targets(padded)
    order = torch.argsort(batch_idx, stable=True)
    assert torch.equal(back["batch_idx"], batch_idx[order])
    assert torch.equal(back["cls"], cls[order])
    assert torch.equal(back["bboxes"], bboxes[order])
    empty = pad_targets(torch.zeros(0), torch.zeros(0, 1), torch.zeros(0, 4), batch_size=2)
    assert empty.shape == (2, 0, 5) and unpad_targets(empty)["bboxes"].shape == (0, 4)


# ---------------------------------------------------------------------------------------------- teaching
def test_teacher_round_changes_the_dln_with_finite_hypergradients():
    model = tiny_model()
    criterion = DLNDetectionLoss(model)
    before = criterion.dln.log_weight.detach().clone()
    student_before = {k: v.clone() for k, v in model.state_dict().items()}

    grads = hypergradient(
        model,
        criterion.objective,
        [round_batch(1), round_batch(2)],
        round_batch(3, 4),
        student_lr=0.01,
        val_loss=criterion.validation_error,
    )
    assert torch.isfinite(grads["dln.log_weight"]).all() and grads["dln.log_weight"].abs().sum() > 0

    teacher = Teacher(
        criterion.objective, steps=2, student_lr=0.01, mode="lookahead", val_loss=criterion.validation_error
    )
    record = teacher.step(model, iter([round_batch(s) for s in range(4)]), iter([round_batch(9, 4)]))
    assert not record.skipped, record.reason
    assert record.hypergradient_norm > 0 and torch.isfinite(torch.tensor(record.hypergradient_norm))
    assert not torch.equal(criterion.dln.log_weight.detach(), before)
    for key, value in model.state_dict().items():  # lookahead: the student is untouched
        assert torch.equal(value, student_before[key]), key


def test_validation_error_is_the_gained_sum():
    model = tiny_model()
    batch = synthetic_batch()
    criterion = DLNDetectionLoss(model)
    preds = model(batch["img"])
    targets = pad_targets(batch["batch_idx"], batch["cls"], batch["bboxes"], 2)
    reference, _ = v8DetectionLoss(model)(preds, batch)
    torch.testing.assert_close(criterion.validation_error(preds, targets), reference.sum() / 2)


# ---------------------------------------------------------------------------------------------- the trainer
def train_overrides(dataset: dict[str, Path], name: str, **extra: object) -> dict[str, object]:
    overrides: dict[str, object] = dict(
        model=str(dataset["model"]),
        data=str(dataset["data"]),
        epochs=2,
        imgsz=IMGSZ,
        batch=4,
        device="cpu",
        workers=0,
        plots=False,
        project=str(dataset["root"] / "runs"),
        name=name,
        exist_ok=True,
        verbose=False,
        seed=0,
        deterministic=True,
    )
    return {**overrides, **extra}


def test_trainer_trains_teaches_saves_and_resumes(dataset):
    teaching = TeachingConfig(every=3, steps=2, val_batch=4)  # 12 images, batch 4: one round per epoch
    trainer = DLNDetectionTrainer(overrides=train_overrides(dataset, "full"), teaching=teaching)
    first_checkpoint = dataset["root"] / "after_epoch_1.pt"

    def keep_first_checkpoint(t: DLNDetectionTrainer) -> None:  # last.pt is stripped at the end of training
        if not first_checkpoint.exists():
            shutil.copyfile(t.last, first_checkpoint)

    trainer.add_callback("on_model_save", keep_first_checkpoint)
    trainer.train()

    # one DLN, shared by the model and its EMA copy, outside the student's optimizer
    model = trainer.model
    assert model.criterion is trainer.criterion and trainer.ema.ema.criterion is trainer.criterion
    dln_ids = {id(p) for p in trainer.dln.parameters()}
    assert not dln_ids & {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not dln_ids & {id(p) for p in model.parameters()}

    # the rounds unroll ultralytics' own optimizer ('auto' picks AdamW for so short a run), on the loss as
    # ultralytics scales it: images per optimizer step
    assert trainer.teacher.student_optimizer is trainer.optimizer
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert trainer.criterion.objective.scale == trainer.batch_size * trainer.accumulate

    # it was taught, and the weights were logged per epoch
    assert trainer.teacher.rounds == 2
    assert len(trainer.dln_history) == 2
    # every gain moved by a share of itself: a round moves the log-gains by less than dln_lr (1e-3)
    log_change = (trainer.dln.weight.detach().cpu() / torch.tensor(GAINS)).log().abs()
    assert ((log_change > 0) & (log_change < 2 * 1e-3)).all(), log_change
    header = (trainer.save_dir / "results.csv").read_text().splitlines()[0]
    assert {"dln/box", "dln/cls", "dln/dfl"} <= set(header.split(","))

    # the checkpoint carries the DLN and teacher; its model is a plain DetectionModel
    saved = torch.load(trainer.last, map_location="cpu", weights_only=False)
    assert type(saved["model"]) is DetectionModel and saved["model"].criterion is None
    torch.testing.assert_close(
        saved[CHECKPOINT_KEY]["teacher"]["loss_fn"]["dln.log_weight"], trainer.dln.log_weight.detach()
    )

    # resume from the end of epoch 1: the teacher continues from where it was
    state = torch.load(first_checkpoint, map_location="cpu", weights_only=False)[CHECKPOINT_KEY]
    resumed = DLNDetectionTrainer(overrides=dict(resume=str(first_checkpoint), plots=False), teaching=teaching)
    seen_at_start = {}
    resumed.add_callback(
        "on_train_start",
        lambda t: seen_at_start.update(log_weight=t.dln.log_weight.detach().clone(), rounds=t.teacher.rounds),
    )
    resumed.train()
    assert resumed.start_epoch == 1
    torch.testing.assert_close(seen_at_start["log_weight"], state["teacher"]["loss_fn"]["dln.log_weight"])
    assert seen_at_start["rounds"] == state["teacher"]["rounds"] == 1
    assert resumed.teacher.rounds == 2
    assert resumed.dln_history[0] == trainer.dln_history[0]


def test_trainer_unrolls_ultralytics_sgd_and_moves_the_gains_relatively(dataset):
    """optimizer='SGD' (Nesterov momentum, 3 param groups) in 'paper' mode, with the 'adam' teacher.

    The 'adam' teacher's first round moves every log-gain by exactly ``dln_lr`` and later ones by about as
    much, so after 3 rounds each gain has changed by 1-3 % of itself; had the gains been the parameters, the
    7.5 could have moved by at most ``3 * dln_lr`` = 0.03 (0.4 %).
    """
    dln_lr = 1e-2
    teacher = {"teacher": "adam", "dln_lr": dln_lr, "anchor_strength": 0.0}
    teaching = TeachingConfig(every=1, steps=2, val_batch=4, mode="paper", teacher=teacher)  # 3 batches, 3 rounds
    overrides = train_overrides(dataset, "sgd", epochs=1, optimizer="SGD")
    trainer = DLNDetectionTrainer(overrides=overrides, teaching=teaching)
    state_sizes = []  # runs after the trainer's own callback, so after each round
    trainer.add_callback("on_train_batch_end", lambda t: state_sizes.append(len(t.optimizer.state)))
    trainer.train()

    assert type(trainer.optimizer) is torch.optim.SGD
    assert all(g["nesterov"] and g["momentum"] == 0.937 for g in trainer.optimizer.param_groups)
    assert len(trainer.optimizer.param_groups) == 3  # weights with decay, BatchNorm weights, biases
    assert trainer.teacher.student_optimizer is trainer.optimizer
    # ultralytics steps once in this epoch (accumulate = 3 batches), after the third; the first round wrote the
    # momentum buffers before that, as optimizer.step() calls would have
    assert trainer.accumulate == 3 and state_sizes[0] > 0
    assert trainer.teacher.rounds == 3 and not any(r.skipped for r in trainer.epoch_records)

    gains = trainer.dln.weight.detach().cpu()
    log_change = (gains / torch.tensor(GAINS)).log().abs()
    assert ((log_change > 0.5 * dln_lr) & (log_change < 3 * dln_lr * 1.01)).all(), gains
    assert abs(float(gains[0]) - 7.5) > 3 * dln_lr, gains  # beyond any additive step of dln_lr a round


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_dataset_raises_value_error_naming_it(dataset):
    missing = dataset["root"] / "nowhere" / "data.yaml"
    with pytest.raises(ValueError, match=r"nowhere/data\.yaml.*not on this machine"):
        DLNDetectionTrainer(overrides=train_overrides(dataset, "bad", data=str(missing)))
    with pytest.raises(ValueError, match=r"is a URL"):
        DLNDetectionTrainer(overrides=train_overrides(dataset, "bad", data="https://example.com/coco.yaml"))


def test_bad_trainer_arguments_raise(dataset):
    with pytest.raises(TypeError, match="teaching must be a TeachingConfig, got dict"):
        DLNDetectionTrainer(overrides=train_overrides(dataset, "bad"), teaching={"every": 2})
    with pytest.raises(ValueError, match="compile=True is not supported"):
        DLNDetectionTrainer(overrides=train_overrides(dataset, "bad", compile=True))
    with pytest.raises(ValueError, match="mode must be one of"):
        TeachingConfig(mode="sometimes")


def test_an_optimizer_the_unroll_cannot_follow_raises_type_error(dataset):
    trainer = DLNDetectionTrainer(overrides=train_overrides(dataset, "bad", optimizer="RMSprop"))
    with pytest.raises(
        TypeError, match=r"optimizer='RMSprop' built a RMSprop.*pass optimizer='SGD', 'Adam' or 'AdamW'"
    ):
        trainer.train()


def test_classes_beyond_the_head_raise_value_error():
    model = tiny_model()
    batch = synthetic_batch()
    batch["cls"][0] = NUM_CLASSES + 2
    with pytest.raises(ValueError, match=r"classes in \[\d, 5\].*nc=3"):
        DLNDetectionLoss(model)(model(batch["img"]), batch)


def test_padded_targets_of_the_wrong_shape_raise():
    with pytest.raises(ValueError, match=r"targets must be \(B, M, 5\).*got shape \(2, 5\)"):
        unpad_targets(torch.zeros(2, 5))


def test_model_without_args_raises_value_error():
    model = DetectionModel(tiny_config(), nc=NUM_CLASSES, verbose=False)
    with pytest.raises(ValueError, match=r"has no \.args"):
        DLNDetectionLoss(model)


# ---------------------------------------------------------------------------------------------- offline
@pytest.mark.subprocess
def test_importing_the_adapter_does_not_probe_the_network(tmp_path):
    """ultralytics resolves DNS names at import unless YOLO_OFFLINE is set first; the adapter sets it."""
    guard = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise SystemExit(f'network use: {a!r}')\n"
        "socket.getaddrinfo = socket.create_connection = refuse\n"
        "socket.socket.connect = refuse\n"
        "import dynaloss.integrations.ultralytics\n"
        "import ultralytics.utils\n"
        "assert ultralytics.utils.ONLINE is False\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", guard], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_epoch_without_a_teacher_round_warns_with_what_to_change(dataset, monkeypatch):
    # before: 0 rounds ran and the log said "validation error nan -> nan", nothing more
    import integrations.ultralytics.trainer as trainer_module

    warnings: list[str] = []
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda message, *a, **k: warnings.append(str(message)))
    # 3 batches an epoch; 6 held-out images for a batch of 16
    teaching = TeachingConfig(every=10, steps=2, val_batch=16)
    trainer = DLNDetectionTrainer(overrides=train_overrides(dataset, "silent", epochs=1), teaching=teaching)
    trainer.train()
    assert trainer.teacher.rounds == 0
    assert any("no teacher round ran in epoch 1" in w and "every=" in w for w in warnings), warnings
    assert any("fewer than TeachingConfig(val_batch=16)" in w for w in warnings), warnings


def test_outputs_go_under_the_working_directory_unless_project_is_given(dataset, tmp_path, monkeypatch):
    # before: without project=, ultralytics put the run folder inside the clone that holds the venv
    monkeypatch.chdir(tmp_path)
    overrides = {k: v for k, v in train_overrides(dataset, "here").items() if k != "project"}
    trainer = DLNDetectionTrainer(overrides=overrides)
    assert Path(trainer.save_dir).resolve().is_relative_to((tmp_path / "runs").resolve())
    chosen = DLNDetectionTrainer(overrides=train_overrides(dataset, "there"))
    assert Path(chosen.save_dir).resolve().is_relative_to((dataset["root"] / "runs").resolve())
