"""PSPNet with L2T-DLN vs cross-entropy, on synthetic shapes or on PASCAL VOC 2012 from a local directory.

    OMP_NUM_THREADS=1 python examples/pspnet_dln.py                    # synthetic shapes, tiny encoder, CPU
    python examples/pspnet_dln.py --voc /data/VOCdevkit/VOC2012 --encoder resnet50 --crop 320 \\
        --total-steps 30000 --batch 8 --device cuda                    # the paper's layout on VOC

Both arms start from the same weights and see the same batches; the table at the end compares mIoU.
Encoders are randomly initialised unless --encoder-weights is given (which downloads them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dynaloss.harness.synthetic import SyntheticShapes
from dynaloss.integrations.smp import VOC_CLASSES, PSPNetAux, PSPNetTrainer, VOCSegmentation
from dynaloss.integrations.smp.trainer import LOSSES
from dynaloss.integrations.teaching import TeachingConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", type=Path, help="VOC2012 directory; default: synthetic shapes")
    parser.add_argument("--encoder", default=None, help="smp encoder (default: tu-test_resnet synthetic, resnet50 VOC)")
    parser.add_argument("--encoder-weights", default=None, help="e.g. imagenet (downloads); default: random init")
    parser.add_argument("--crop", type=int, default=32, help="image side, a multiple of 8 (default: %(default)s)")
    parser.add_argument("--total-steps", type=int, default=300, help="SGD steps per arm (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--every", type=int, default=5, help="student steps between teacher rounds")
    parser.add_argument("--unroll", type=int, default=2, help="N, unrolled steps per teacher stage")
    parser.add_argument("--arms", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("dynaloss-out/pspnet"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def datasets(args: argparse.Namespace) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, int]:
    if args.voc is None:
        train = SyntheticShapes(256, size=args.crop, num_classes=4, ignore_border=2, seed=args.seed)
        return train, SyntheticShapes(64, size=args.crop, num_classes=4, seed=args.seed + 1), 4
    return (
        VOCSegmentation(args.voc, "train", crop=args.crop),
        VOCSegmentation(args.voc, "val", crop=args.crop),
        VOC_CLASSES,
    )


def main() -> None:
    args = parse_args()
    train_set, val_set, num_classes = datasets(args)
    encoder = args.encoder or ("tu-test_resnet" if args.voc is None else "resnet50")
    small = dict(psp_out_channels=32, aux_channels=32) if args.voc is None else {}
    results = []
    for arm in args.arms:
        torch.manual_seed(args.seed)  # the same initial weights for both arms
        model = PSPNetAux(num_classes, encoder_name=encoder, encoder_weights=args.encoder_weights, **small)
        trainer = PSPNetTrainer(
            model.to(args.device),
            train_set,
            total_steps=args.total_steps,
            loss=arm,
            batch_size=args.batch,
            lr=args.lr,
            teaching=TeachingConfig(every=args.every, steps=args.unroll),
            seed=args.seed,
        )
        print(f"training {arm}: {args.total_steps} steps of {args.batch} images")
        records = trainer.fit(progress=True)
        trainer.save(args.out / f"{arm}.pt")
        metrics = trainer.evaluate(val_set)
        seconds = [r["seconds"] for r in records]
        results.append(
            {
                "arm": arm,
                "miou": metrics["miou"],
                "pixel_accuracy": metrics["pixel_accuracy"],
                "teacher_rounds": len(records),
                "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
            }
        )

    print(f"\n{'arm':<6} {'mIoU':>7} {'pixel acc':>10} {'rounds':>7}")
    for r in results:
        print(f"{r['arm']:<6} {r['miou']:>7.4f} {r['pixel_accuracy']:>10.4f} {r['teacher_rounds']:>7}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
