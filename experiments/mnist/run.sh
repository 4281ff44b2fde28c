#!/usr/bin/env bash
# MNIST: distill the shipped teacher (DMD + regression), then evaluate the student at 1 NFE beside the
# teacher's Euler/Heun samplers at 1 to 35 NFE, on the same seeds and domain features.
# Usage: [STEPS=N] [MINUTES=M] [EXPERIMENT=mnist|mnist_ttur|mnist_ttur_fast|mnist_dmd2|mnist_dmd2_fast] [EXTRA="key=value ..."]
#        [DISTILL=0] [RESULTS=experiments/mnist]
#        bash experiments/mnist/run.sh [OUT=runs/mnist]
# MINUTES caps the training loop's wall clock (train.max_minutes); training stops at whichever of STEPS/MINUTES comes first.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/mnist}
STEPS=${STEPS:-3000}
EXPERIMENT=${EXPERIMENT:-mnist}
MINUTES=${MINUTES:-null}
EXTRA=${EXTRA:-}  # more overrides for python -m distill, e.g. "train.reuse_student_samples=true train.ema_decay=0.999"
RESULTS=${RESULTS:-experiments/mnist}  # where bench.json, README.md's table and the sample sheet go
mkdir -p "$RESULTS"
if [ "${DISTILL:-1}" = 1 ]; then  # DISTILL=0: evaluate and tabulate a student already in $OUT/distill
  start=$(date +%s)
  $PY -m distill experiment=$EXPERIMENT train.max_steps=$STEPS train.max_minutes=$MINUTES loss.pairs.num_pairs=2000 eval.num_samples=2000 $EXTRA hydra.run.dir=$OUT/distill
  echo $(( $(date +%s) - start )) > $OUT/distill/wall_seconds.txt  # distillation, pairs and its evaluation included
fi
$PY -m eval experiment=mnist student_path=$OUT/distill/student eval.num_samples=5000 \
  'eval.teacher_samplers=[{name: euler, num_steps: 1}, {name: euler, num_steps: 2}, {name: heun, num_steps: 2}, {name: heun, num_steps: 4}, {name: heun, num_steps: 8}, {name: heun, num_steps: 18}]' \
  hydra.run.dir=$OUT/eval
$PY -m eval.bench zoo:mnist_uncond $OUT/distill/student --samplers heun:18 euler:1 --batch-size 500 --repeats 2 --out $RESULTS/bench.json
$PY experiments/mnist/collect.py "$OUT" "$RESULTS"
