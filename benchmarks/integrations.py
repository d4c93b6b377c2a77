"""Integration benchmarks on CPU: seconds per teacher round, and DLN vs original loss after equal student steps.

    OMP_NUM_THREADS=1 python benchmarks/integrations.py                 # ~5 min on 2 cores

Round timing uses the paper's detection/segmentation settings (N = 2, train batch 2, val batch 8) on the
test-size models: YOLOv3-tiny at width 0.125 on 64 px images, PSPNet (dilated, aux head on layer3) on timm's
tiny test ResNet at 32 px. The accuracy runs train both arms with the same data, initial weights and number
of student steps on synthetic squares (width 0.25 for detection) and report mAP50 / mIoU on held-out images.
Writes ``benchmarks/results/integrations.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="dynaloss-bench-yolo-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynaloss import Teacher  # noqa: E402
from dynaloss.harness.synthetic import SyntheticShapes, draw_squares, write_detection_dataset  # noqa: E402
from dynaloss.harness.yolo import scaled_config, train_yolo  # noqa: E402
from dynaloss.integrations.smp import PSPNetAux, PSPNetCELoss, PSPNetDLNLoss, PSPNetTrainer  # noqa: E402
from dynaloss.integrations.teaching import TeachingConfig  # noqa: E402
from dynaloss.integrations.ultralytics import DLNDetectionLoss  # noqa: E402
from dynaloss.integrations.ultralytics.targets import pad_targets  # noqa: E402

N, TRAIN_BATCH, VAL_BATCH = 2, 2, 8


def detection_round_batches(count: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        images, idx, cls, boxes = [], [], [], []
        for i in range(batch):
            image, _, squares = draw_squares(rng, 64, 3, 3)
            images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
            for c, x0, y0, x1, y1 in squares:
                idx.append(i)
                cls.append(c)
                boxes.append([(x0 + x1) / 128, (y0 + y1) / 128, (x1 - x0) / 64, (y1 - y0) / 64])
        targets = pad_targets(torch.tensor(idx, dtype=torch.float), torch.tensor(cls), torch.tensor(boxes), batch)
        out.append((torch.stack(images), targets))
    return out


def time_rounds(teacher: Teacher, student: torch.nn.Module, make: Any, rounds: int) -> list[float]:
    teacher.step(student, iter(make(2 * N, TRAIN_BATCH, 100)), iter(make(1, VAL_BATCH, 101)))  # warm-up
    seconds = []
    for r in range(rounds):
        record = teacher.step(student, iter(make(2 * N, TRAIN_BATCH, r)), iter(make(1, VAL_BATCH, 1000 + r)))
        assert not record.skipped, record.reason
        seconds.append(record.seconds)
    return seconds


def detection_round_seconds(rounds: int) -> list[float]:
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    torch.manual_seed(0)
    model = DetectionModel(scaled_config("yolov3-tiny.yaml", 0.125), nc=3, verbose=False).train()
    model.args = get_cfg(DEFAULT_CFG)
    criterion = DLNDetectionLoss(model)
    # the adapter's rounds unroll ultralytics' optimizer: here its SGD (lr0, Nesterov momentum 0.937)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    teacher = Teacher(
        criterion.objective, steps=N, optimizer=optimizer, mode="paper", val_loss=criterion.validation_error
    )
    return time_rounds(teacher, model, detection_round_batches, rounds)


def segmentation_round_seconds(rounds: int) -> list[float]:
    data = SyntheticShapes(64, size=32, num_classes=4, ignore_border=2)

    def make(count: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        return [
            tuple(torch.stack(t) for t in zip(*(data[i] for i in order[k * batch : (k + 1) * batch])))  # type: ignore[misc]
            for k in range(count)
        ]

    torch.manual_seed(0)
    model = PSPNetAux(4, encoder_name="tu-test_resnet", psp_out_channels=16, aux_channels=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)  # PSPNetTrainer's
    teacher = Teacher(PSPNetDLNLoss(4), steps=N, optimizer=optimizer, mode="paper", val_loss=PSPNetCELoss(4))
    return time_rounds(teacher, model, make, rounds)


def detection_accuracy(seed: int, epochs: int, root: Path) -> dict[str, float]:
    data = write_detection_dataset(root / f"squares{seed}", train=32, val=16, size=64, seed=seed)
    overrides = dict(
        model=str(root / "w0.25-yolov3-tiny.yaml"),
        data=str(data),
        epochs=epochs,
        imgsz=64,
        batch=8,
        device="cpu",
        workers=0,
        plots=False,
        project=str(root / "runs"),
        exist_ok=True,
        seed=seed,
        deterministic=True,
        mosaic=0.0,
        optimizer="AdamW",
        lr0=0.005,
        warmup_epochs=0,
        verbose=False,
    )
    teaching = TeachingConfig(every=4, steps=N, train_batch=TRAIN_BATCH, val_batch=VAL_BATCH)
    out = {}
    for arm in ("original", "dln"):
        result = train_yolo(arm, {**overrides, "name": f"{arm}{seed}"}, teaching)
        out[arm] = result["mAP50"]
        if arm == "dln":
            out["dln_weights"] = result["dln_weights"]
            out["teacher_rounds"] = result["teacher_rounds"]
    return out


def segmentation_accuracy(seed: int, steps: int) -> dict[str, float]:
    train = SyntheticShapes(256, size=32, num_classes=4, ignore_border=2, seed=seed)
    val = SyntheticShapes(64, size=32, num_classes=4, seed=10_000 + seed)
    out = {}
    for arm in ("ce", "dln"):
        torch.manual_seed(seed)  # the same initial weights for both arms
        model = PSPNetAux(4, encoder_name="tu-test_resnet", psp_out_channels=32, aux_channels=32)
        teaching = TeachingConfig(every=5, steps=N, train_batch=TRAIN_BATCH, val_batch=VAL_BATCH)
        trainer = PSPNetTrainer(
            model, train, total_steps=steps, loss=arm, teaching=teaching, batch_size=8, lr=0.05, seed=seed
        )
        records = trainer.fit()
        out[arm] = trainer.evaluate(val)["miou"]
        if arm == "dln":
            out["teacher_rounds"] = len(records)
    return out


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed teacher rounds per adapter")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--det-epochs", type=int, default=60, help="detection epochs (4 student steps each)")
    parser.add_argument("--seg-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "integrations")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    import segmentation_models_pytorch
    import ultralytics

    machine = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
    }
    config = {**vars(args), "out": str(args.out), "N": N, "train_batch": TRAIN_BATCH, "val_batch": VAL_BATCH}
    print("machine:", machine)
    print("config:", config)

    started = time.perf_counter()
    timing = {
        "detection": detection_round_seconds(args.rounds),
        "segmentation": segmentation_round_seconds(args.rounds),
    }
    for name, seconds in timing.items():
        print(f"{name}: {mean_std(seconds)} s per teacher round (N={N})")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from dynaloss.harness.yolo import write_scaled_config

        write_scaled_config(root / "w0.25-yolov3-tiny.yaml", "yolov3-tiny.yaml", 0.25)
        detection = [detection_accuracy(seed, args.det_epochs, root) for seed in range(args.seeds)]
    segmentation = [segmentation_accuracy(seed, args.seg_steps) for seed in range(args.seeds)]
    total = time.perf_counter() - started

    rows = [
        ("detection", "mAP50", "original", [d["original"] for d in detection]),
        ("detection", "mAP50", "L2T-DLN", [d["dln"] for d in detection]),
        ("segmentation", "mIoU", "cross-entropy", [s["ce"] for s in segmentation]),
        ("segmentation", "mIoU", "L2T-DLN", [s["dln"] for s in segmentation]),
    ]
    lines = [
        "# Integration benchmarks (CPU)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s); python "
        f"{machine['python']}, torch {machine['torch']}, ultralytics {machine['ultralytics']}, "
        f"segmentation-models-pytorch {machine['segmentation_models_pytorch']}. Total {total:.0f} s.",
        "",
        f"## Seconds per teacher round (N = {N}, train batch {TRAIN_BATCH}, val batch {VAL_BATCH}, "
        f"{args.rounds} rounds, unrolling SGD with momentum)",
        "",
        "| adapter | model | s / round |",
        "|---|---|---|",
        f"| ultralytics | YOLOv3-tiny, width 0.125, 64 px | {mean_std(timing['detection'])} |",
        f"| smp | PSPNetAux (tu-test_resnet, depth 5, stride 8), 32 px | {mean_std(timing['segmentation'])} |",
        "",
        f"## DLN vs original loss, equal student steps ({args.seeds} seeds)",
        "",
        f"Detection: YOLOv3-tiny width 0.25, 32 train / 16 val images of 64 px, {args.det_epochs} epochs x 4 "
        f"steps, a teacher round every 4 steps. Segmentation: PSPNetAux on tu-test_resnet, 256 train / 64 val "
        f"images of 32 px, {args.seg_steps} steps of batch 8, a teacher round every 5 steps.",
        "",
        "| task | metric | arm | mean ± std | per seed |",
        "|---|---|---|---|---|",
        *(f"| {t} | {m} | {a} | {mean_std(v)} | {', '.join(f'{x:.4f}' for x in v)} |" for t, m, a, v in rows),
        "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/integrations.py`",
    ]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "config": config,
        "seconds_total": total,
        "round_seconds": timing,
        "detection": detection,
        "segmentation": segmentation,
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    args.out.with_suffix(".md").write_text(report)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
