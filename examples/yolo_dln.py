"""YOLOv3 with L2T-DLN vs ultralytics' original loss, on synthetic squares or on your own dataset.

    OMP_NUM_THREADS=1 python examples/yolo_dln.py                      # synthetic squares, tiny YOLOv3, CPU
    python examples/yolo_dln.py --data coco.yaml --model yolov3u.yaml --width 1 --imgsz 640 --epochs 100 \\
        --batch 16 --device 0                                          # a local COCO-style dataset

Both arms train with the same ultralytics arguments; the table at the end compares mAP50. Nothing is
downloaded: the dataset must be on disk (a missing one raises ValueError) and models are built from yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynaloss.harness.synthetic import write_detection_dataset
from dynaloss.harness.yolo import ARMS, train_yolo, write_scaled_config
from dynaloss.integrations.teaching import TeachingConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset yaml (COCO-style); default: synthetic squares in --out")
    parser.add_argument("--model", default="yolov3-tiny.yaml", help="ultralytics model yaml (default: %(default)s)")
    parser.add_argument("--width", type=float, default=None, help="width multiple (default: 0.25 synthetic, 1 real)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--every", type=int, default=4, help="student batches between teacher rounds")
    parser.add_argument("--steps", type=int, default=2, help="N, unrolled steps per teacher stage")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--out", type=Path, default=Path("dynaloss-out/yolo"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    synthetic = args.data is None
    data = write_detection_dataset(args.out / "squares", train=32, val=16, size=args.imgsz) if synthetic else args.data
    width = args.width if args.width is not None else (0.25 if synthetic else 1.0)
    model = (
        args.model if width == 1.0 else str(write_scaled_config(args.out / f"w{width}-{args.model}", args.model, width))
    )
    overrides = dict(
        model=model,
        data=str(data),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        project=str(args.out.resolve()),
        exist_ok=True,
        seed=args.seed,
        workers=0 if args.device == "cpu" else 8,
    )
    if synthetic:  # tiny images: no mosaic, a fixed AdamW rate, no warm-up (measured to learn within 60 epochs)
        overrides.update(mosaic=0.0, optimizer="AdamW", lr0=0.005, warmup_epochs=0, plots=False)
    else:  # ultralytics' SGD recipe: for long runs optimizer='auto' picks MuSGD, whose steps a round cannot unroll
        overrides.update(optimizer="SGD")
    teaching = TeachingConfig(every=args.every, steps=args.steps)
    results = [train_yolo(arm, {**overrides, "name": arm}, teaching) for arm in args.arms]

    print(f"\n{'arm':<10} {'mAP50':>7} {'mAP50-95':>9} {'seconds':>8}  DLN gains (box, cls, dfl)")
    for r in results:
        weights = "" if r["dln_weights"] is None else ", ".join(f"{v:.4g}" for v in r["dln_weights"].values())
        print(f"{r['arm']:<10} {r['mAP50']:>7.4f} {r['mAP50-95']:>9.4f} {r['seconds']:>8.1f}  {weights}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
