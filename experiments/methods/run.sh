#!/usr/bin/env bash
# Issue 35's comparison: DMD2, SiD and SiDA one-step students after 30 CPU minutes (train.max_minutes=30) from the
# shipped teachers, FID in both feature spaces with intervals, recall, class TV (or prompt accuracy).
# Usage: METHODS="dmd2 sid" TEACHERS="uncond" SEEDS="0" JOBS=2 bash experiments/methods/run.sh
#   -> runs/methods/<teacher>_<method><TAG>_seed<seed>/, then python experiments/methods/collect.py runs/methods
# EXTRA="loss.guidance_scale=1" TAG=_w1: hydra overrides for every run of the call, and a suffix naming them.
# JOBS=1 (the issue's protocol): one run at a time on both cores. JOBS=2: two runs side by side at one thread each
# (experiments/speed/run30.sh's protocol, which the DMD2 figures of experiments/speed/ used).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/methods}
METHODS=${METHODS:-dmd2 sid sida}
TEACHERS=${TEACHERS:-uncond cond sd}
SEEDS=${SEEDS:-0 1}
JOBS=${JOBS:-1}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
TAG=${TAG:-}
THREADS=${THREADS:-$(( JOBS == 1 ? 2 : 1 ))}  # threads per run
declare -A PRESET=([uncond_dmd2]=mnist_dmd2_fast [cond_dmd2]=mnist_dmd2_fast [sd_dmd2]=mnist_sd_dmd2
                   [uncond_sid]=mnist_sid [cond_sid]=mnist_sid [sd_sid]=mnist_sd_sid
                   [uncond_sida]=mnist_sida [cond_sida]=mnist_sida)
mkdir -p "$OUT"
running=0
for seed in $SEEDS; do for teacher in $TEACHERS; do for method in $METHODS; do
  preset=${PRESET[${teacher}_$method]:-}
  [ -z "$preset" ] && { echo "no preset for $teacher $method (skipped)"; continue; }
  teacher_path=()
  [ "$teacher" != sd ] && teacher_path=("teacher.path=zoo:mnist_$teacher")
  name="${teacher}_${method}${TAG}_seed$seed"
  # The DMD2 recipe as experiments/speed/run30.sh runs it (reuse, EMA 0.999, 30 minutes); the SiD presets set these.
  OMP_NUM_THREADS=$THREADS $PY -m distill experiment="$preset" "${teacher_path[@]}" train.reuse_student_samples=true \
    train.ema_decay=0.999 eval.num_samples=2000 train.max_steps=100000 train.max_minutes=30 train.checkpoint_every=400 \
    seed="$seed" "${EXTRA_ARGS[@]}" hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait; running=0; fi
done; done; done
wait
