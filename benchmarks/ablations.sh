#!/usr/bin/env bash
# The paper's ablations on the MNIST-1D harness of benchmarks/accuracy.py (library default DLN and teacher):
# Table 4 (validation share) and Table 5 (unroll length N; median seconds per round are in the JSON).
# Table 6 (teacher kind) is in the main table, the long run in docs/results.md. Also: the teacher without
# its anchor (the trust region around the warm start).
set -euo pipefail
python=${PYTHON:-python}  # run from the environment dynaloss is installed in, or set PYTHON
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
out=benchmarks/results
for ratio in 0.1 0.25 0.75 0.9; do  # 0.5 is the main table's configuration
    "$python" benchmarks/accuracy.py --datasets mnist1d --arms dln --seeds 2 --steps 8000 --val-ratio "$ratio" \
        --out "$out/ablation_val_ratio_$ratio"
done
for unroll in 1 5 25; do  # 10 is the main table's
    "$python" benchmarks/accuracy.py --datasets mnist1d --arms dln --seeds 2 --steps 8000 --unroll "$unroll" \
        --out "$out/ablation_unroll_$unroll"
done
"$python" benchmarks/accuracy.py --datasets mnist1d --arms dln-no-anchor --seeds 2 --steps 8000 \
    --out "$out/ablation_no_anchor"
