"""What a student's training step costs with a PairwiseDLN loss against cross-entropy (issue 12).

Milliseconds per training step (and per loss forward + backward alone) with ``nn.CrossEntropyLoss``, the warm
and the CE-initialised DLN held fixed, each through its fast path and its exact MLP, on three students; then
the README's recommended loop against CE at equal student steps on the demo's task, teacher rounds included.
The same as ``dynaloss bench --step-cost`` (:mod:`dynaloss.harness.step_cost`); one torch thread unless ``--threads``::

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --out benchmarks/results/step_cost_cpu
    python benchmarks/step_cost.py --device cuda --out benchmarks/results/step_cost_cuda
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --rows mlp-40 --repeats 3 --e2e-steps 400   # a quick look
"""

from __future__ import annotations

import sys

from dynaloss.harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--step-cost", *sys.argv[1:]]))
