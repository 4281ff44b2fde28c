#!/usr/bin/env bash
# MNIST on one GPU: the DMD2 preset (1 and 4 steps) and mnist_ttur, each with the same wall-clock budget, run side by
# side on one GPU and evaluated on 5,000 seeds beside the teacher's Heun-35 sampler; then the 1-step DMD2 student
# against the teacher at 1 to 35 NFE with the throughput bench (experiments/mnist/run.sh, DISTILL=0).
# Usage: [MINUTES=5] [PY=python3] [EXPERIMENTS="mnist_dmd2 mnist_dmd2_4step mnist_ttur"] [EXTRA="train.batch_size=128"]
#        bash experiments/gpu/run.sh [OUT=runs/gpu]
# EXTRA: hydra overrides given to every run. The runs share the eval cache: when several compute the same reference
# statistics at once, the first complete folder is kept (teachers/io.py:write_folder_atomic).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu}
MINUTES=${MINUTES:-5}
EXPERIMENTS=${EXPERIMENTS:-mnist_dmd2 mnist_dmd2_4step mnist_ttur}
EXTRA=${EXTRA:-}
eval "extra=($EXTRA)"  # shell words, so a quoted override may hold spaces: EXTRA="'eval.teacher_samplers=[{name: heun, num_steps: 18}]'"
mkdir -p "$OUT"
for exp in $EXPERIMENTS; do
  $PY -m distill experiment=$exp train.max_steps=1000000 train.max_minutes=$MINUTES train.checkpoint_every=1000 \
    train.plot_every=1000 eval.num_samples=5000 hydra.run.dir=$OUT/$exp/distill "${extra[@]}" \
    > $OUT/$exp.log 2>&1 &
done
wait
for exp in $EXPERIMENTS; do tail -n 2 $OUT/$exp.log; done
if [[ " $EXPERIMENTS " == *" mnist_dmd2 "* ]]; then
  RESULTS=experiments/gpu/mnist_dmd2 DISTILL=0 bash experiments/mnist/run.sh $OUT/mnist_dmd2
fi
