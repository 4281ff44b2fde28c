#!/usr/bin/env bash
# Issue 24's targets on the miniature Stable Diffusion: its one-step students after at most 30 minutes of distillation,
# DMD2 (experiment=mnist_sd_dmd2) and DMD (experiment=mnist_sd), side by side at OMP_NUM_THREADS=1 (one core each),
# then the table: python experiments/mnist_sd/collect.py runs/sd24/*_seed$SEED
# Usage: SEED=0 bash experiments/mnist_sd/run.sh   -> runs/sd24/{dmd2,dmd}_seed$SEED/
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
OUT=${OUT:-runs/sd24}
mkdir -p "$OUT"
OMP_NUM_THREADS=1 $PY -m distill experiment=mnist_sd_dmd2 seed="$SEED" hydra.run.dir="$OUT/dmd2_seed$SEED" > "$OUT/dmd2_seed$SEED.log" 2>&1 &
OMP_NUM_THREADS=1 $PY -m distill experiment=mnist_sd train.max_minutes=30 seed="$SEED" hydra.run.dir="$OUT/dmd_seed$SEED" > "$OUT/dmd_seed$SEED.log" 2>&1 &
wait
$PY experiments/mnist_sd/collect.py "$OUT/dmd2_seed$SEED" "$OUT/dmd_seed$SEED"
