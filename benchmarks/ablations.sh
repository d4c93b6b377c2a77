#!/usr/bin/env bash
# The paper's ablations on the MNIST-1D harness of benchmarks/accuracy.py (library default DLN and teacher):
# Table 4 (validation share), Table 5 (unroll length N; seconds per round are in the JSON), and a long run
# (20,000 student steps, test accuracy every 1,000) for stability. Table 6 (teacher kind) is in the main table.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
out=benchmarks/results
for ratio in 0.1 0.25 0.75 0.9; do  # 0.5 is the main table's configuration
    python benchmarks/accuracy.py --datasets mnist1d --arms dln --seeds 2 --steps 8000 --val-ratio "$ratio" \
        --out "$out/ablation_val_ratio_$ratio"
done
for unroll in 1 5 25; do  # 10 is the main table's
    python benchmarks/accuracy.py --datasets mnist1d --arms dln --seeds 2 --steps 8000 --unroll "$unroll" \
        --out "$out/ablation_unroll_$unroll"
done
python benchmarks/accuracy.py --datasets mnist1d --arms ce dln-fixed dln --seeds 3 --steps 20000 --eval-every 1000 \
    --out "$out/long_run"
