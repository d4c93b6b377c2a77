"""The public API, name by name: every public module and what it exports. Anything else is internal and says so
with an underscore (a ``_module`` or a ``_name``). A change to this list is a change to the API: deliberate, and
in CHANGELOG.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import dynaloss
import dynaloss.integrations

PUBLIC_API: dict[str, list[str]] = {
    "dynaloss": [
        "ClassAwareDLN",
        "LSTMTeacher",
        "MODES",
        "MultiPartDLN",
        "OptimizerTeacher",
        "PRESETS",
        "PairwiseDLN",
        "RoundRecord",
        "Teacher",
        "TeacherModel",
        "forever",
        "hypergradient",
        "pairwise_teacher",
        "teaching_defaults",
    ],
    "dynaloss.distributed": ["RankMean", "agree_on_draw", "shard_batches", "unwrap_data_parallel"],
    "dynaloss.functional": [
        "FEATURES",
        "LOG_PROB_SPAN",
        "REDUCTIONS",
        "check_reduction",
        "leaky_mlp",
        "loss_range",
        "monotone_weights",
        "pairwise_dln_loss",
        "pairwise_mean_loss",
        "pairwise_row_loss",
        "pin_loss_range",
        "reduce_loss",
    ],
    "dynaloss.harness": [],
    "dynaloss.harness.bench": ["STUDENTS", "bench_round", "markdown_table", "run_benchmark"],
    "dynaloss.harness.checkpoint": [
        "RunCheckpoint",
        "Stateful",
        "load_saved",
        "restore_rng_state",
        "rng_state",
        "save_atomic",
    ],
    "dynaloss.harness.cli": [
        "DEMO_DEFAULTS",
        "DEMO_QUICK",
        "TrainingStopped",
        "build_parser",
        "main",
        "parser_defaults",
    ],
    "dynaloss.harness.data": [
        "CIFAR_MEAN",
        "CIFAR_STD",
        "Dataset",
        "EpochSplit",
        "augment_cifar",
        "load_cifar",
        "load_digits",
        "load_mnist1d",
    ],
    "dynaloss.harness.models": ["BasicBlock", "DigitsMLP", "MNIST1DCNN", "ResMLP", "ResNet8"],
    "dynaloss.harness.noisy": ["NoisyTask", "batches", "gce_loss", "make_noisy_task", "user_loop"],
    "dynaloss.harness.plot": [
        "SURFACE_KINDS",
        "dln_weights",
        "loss_profile",
        "loss_surface",
        "plot_curves",
        "plot_loss_profile",
        "plot_loss_surface",
        "plot_sample_weight",
    ],
    "dynaloss.harness.progress": ["LINES", "LineProgress", "Progress", "progress"],
    "dynaloss.harness.synthetic": ["PALETTE", "SyntheticShapes", "draw_squares", "write_detection_dataset"],
    "dynaloss.harness.training": [
        "ArmResult",
        "DATASETS",
        "Evaluate",
        "LRSchedule",
        "LR_FLOOR",
        "LR_SCHEDULES",
        "MAX_FAILURES",
        "align_steps",
        "evaluate_accuracy",
        "load_dataset",
        "machine_info",
        "make_split",
        "make_student",
        "round_size",
        "seeded",
        "train_ce",
        "train_dln",
    ],
    "dynaloss.harness.yolo": ["ARMS", "scaled_config", "train_yolo", "write_scaled_config"],
    "dynaloss.integrations.lightning": ["TeacherCallback"],
    "dynaloss.integrations.smp": [
        "AUX_WEIGHT",
        "PSPNetAux",
        "PSPNetCELoss",
        "PSPNetDLNLoss",
        "PSPNetOutput",
        "PSPNetTrainer",
        "VOCSegmentation",
        "VOC_CLASSES",
        "VOC_IGNORE_INDEX",
    ],
    "dynaloss.integrations.smp.metrics": ["confusion_matrix", "mean_iou"],
    "dynaloss.integrations.smp.model": ["PSPNetAux", "PSPNetOutput"],
    "dynaloss.integrations.smp.objective": [
        "AUX_WEIGHT",
        "PSPNetCELoss",
        "PSPNetDLNLoss",
        "VOC_IGNORE_INDEX",
        "check_segmentation_batch",
    ],
    "dynaloss.integrations.smp.stream": ["IndexBatches", "load_batch"],
    "dynaloss.integrations.smp.trainer": ["LOSSES", "PSPNetTrainer"],
    "dynaloss.integrations.smp.voc": ["VOCSegmentation", "VOC_CLASSES"],
    "dynaloss.integrations.teaching": ["TeachingConfig", "forever", "resplit"],
    "dynaloss.integrations.ultralytics": [
        "DLNDetectionLoss",
        "DLNDetectionTrainer",
        "DetectionObjective",
        "PART_NAMES",
    ],
    "dynaloss.integrations.ultralytics.loss": ["DLNDetectionLoss", "DetectionObjective", "PART_NAMES", "loss_gains"],
    "dynaloss.integrations.ultralytics.offline": ["FONT_NAMES", "prefer_offline", "provide_fonts"],
    "dynaloss.integrations.ultralytics.rounds": ["RoundBatches"],
    "dynaloss.integrations.ultralytics.targets": ["PAD_CLASS", "pad_targets", "unpad_targets"],
    "dynaloss.integrations.ultralytics.trainer": ["CHECKPOINT_KEY", "DLNDetectionTrainer"],
    "dynaloss.losses": ["ClassAwareDLN", "MultiPartDLN", "PairwiseDLN"],
    "dynaloss.losses.class_aware": [
        "ClassAwareDLN",
        "class_aware_loss",
        "forward_log_weights",
        "generalized_ce",
        "pair_offset_matrix",
        "prior_shift",
        "q_to_robustness",
        "robustness_to_q",
    ],
    "dynaloss.losses.multipart": ["MultiPartDLN"],
    "dynaloss.losses.pairwise": ["INITS", "PairwiseDLN"],
    "dynaloss.losses.warmstart": ["cross_entropy_weights", "one_vs_all_pair_ce", "one_vs_all_weights"],
    "dynaloss.presets": ["FAMILIES", "PRESETS", "pairwise_teacher"],
    "dynaloss.settings": [
        "CLASS_AWARE_TEACHING",
        "DEFAULT_DLN",
        "DEFAULT_TEACHER",
        "FEATURES",
        "Features",
        "INITS",
        "Init",
        "MODES",
        "Mode",
        "PAIR_MEANS",
        "PairMean",
        "REDUCTIONS",
        "Reduction",
        "TEACHER_KINDS",
        "TEACH_EVERY",
        "TeacherKind",
    ],
    "dynaloss.teacher": ["MODES", "RoundRecord", "Teacher", "teaching_defaults"],
    "dynaloss.teachers": [
        "LSTMTeacher",
        "OPTIMIZER_TEACHERS",
        "OptimizerTeacher",
        "TeacherModel",
        "make_teacher_model",
        "preprocess_gradient",
    ],
    "dynaloss.teachers.base": ["TeacherModel"],
    "dynaloss.teachers.lstm": ["LSTMTeacher", "preprocess_gradient"],
    "dynaloss.teachers.lstm_cell": ["lstm_cell"],
    "dynaloss.teachers.optim": ["OPTIMIZER_TEACHERS", "OptimizerTeacher"],
}


def _modules() -> list[str]:
    found = ["dynaloss"]
    for package, prefix in ((dynaloss, "dynaloss."), (dynaloss.integrations, "dynaloss.integrations.")):
        found += [info.name for info in pkgutil.walk_packages(package.__path__, prefix)]
    return sorted(set(found))


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def test_every_module_is_listed_or_private() -> None:
    public = [name for name in _modules() if not _is_private(name)]
    assert public == sorted(PUBLIC_API), "a new public module: list it here, or prefix it with an underscore"


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_a_public_module_exports_exactly_its_listed_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == PUBLIC_API[module_name]
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names {name}, which it does not have"
    # a class or function defined here without an underscore is public: it must be listed
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module_name
    }
    assert defined <= set(module.__all__), (
        f"unlisted public names in {module_name}: {sorted(defined - set(module.__all__))}"
    )
