#!/usr/bin/env bash
# Issue 34's targets on the miniature SD3: its one-step DMD2 student after 30 CPU minutes (experiment=mnist_sd3_dmd2),
# one run at a time on both cores, then the speed bench and the table.
# Usage: SEED=0 bash experiments/mnist_sd3/run.sh   -> runs/sd3/dmd2_seed$SEED/, experiments/mnist_sd3/{bench.json,results.md}
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
OUT=${OUT:-runs/sd3}
mkdir -p "$OUT"
$PY -m distill experiment=mnist_sd3_dmd2 seed="$SEED" hydra.run.dir="$OUT/dmd2_seed$SEED" > "$OUT/dmd2_seed$SEED.log" 2>&1
$PY -m eval.bench zoo:mnist_sd3 "$OUT/dmd2_seed$SEED/student" --samplers euler:28 --batch-size 250 --center-crop 28 \
    --out experiments/mnist_sd3/bench.json
$PY experiments/mnist_sd3/collect.py "$OUT"
