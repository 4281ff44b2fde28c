#!/usr/bin/env bash
# Issue 26's 30-minute targets: the one-step student of each shipped MNIST teacher after at most 30 minutes of
# distillation (train.max_minutes=30), the conditional recipe of experiments/review (row B_vmse) with today's defaults.
# Runs side by side at OMP_NUM_THREADS=1 (one core each: a stricter budget than the machine's two cores).
# Usage: SEED=0 bash experiments/speed/run30.sh   -> runs/s26/{cond,uncond}_seed$SEED/
#   TEACHERS="uncond" TAG=_reg EXTRA="+loss.student.regression={_target_:distill.terms.Regression,weight:392.0}" SEED=0 bash experiments/speed/run30.sh
#     -> runs/s26/uncond_reg_seed0/ (a recipe variant: EXTRA overrides, TAG names its run directories)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
OUT=${OUT:-runs/s26}
TEACHERS=${TEACHERS:-cond uncond}
TAG=${TAG:-}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
for teacher in $TEACHERS; do
  name="${teacher}${TAG}_seed$SEED"
  # shellcheck disable=SC2086  # EXTRA is a list of hydra overrides
  OMP_NUM_THREADS=1 $PY -m distill experiment=mnist_dmd2_fast teacher.path=zoo:mnist_$teacher train.reuse_student_samples=true \
    train.ema_decay=0.999 eval.num_samples=2000 train.max_steps=100000 train.max_minutes=30 train.checkpoint_every=400 \
    seed="$SEED" $EXTRA hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1 &
done
wait
