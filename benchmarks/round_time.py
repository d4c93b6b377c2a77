"""Seconds and peak memory of a teacher round vs 2N plain CE steps (README, Performance).

The same as ``dynaloss bench``; run it with one thread on small machines::

    OMP_NUM_THREADS=1 python benchmarks/round_time.py --out benchmarks/results/round_time_cpu
    python benchmarks/round_time.py --device cuda --unroll 1 5 10 25 --out benchmarks/results/round_time_cuda
    python benchmarks/round_time.py --device cuda --checkpoint --unroll 50 75 --out benchmarks/results/round_time_ckpt
"""

from __future__ import annotations

import sys

from dynaloss.harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
