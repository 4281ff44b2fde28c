#!/usr/bin/env bash
# DMD2 ablations on MNIST (zoo:mnist_uncond / zoo:mnist_cond), then the table and plots.
#   chain:    DMD (+ regression) -> no regression -> + two time-scale updates -> + GAN (= DMD2)
#   steps:    the DMD2 preset with a 4-step student (the 1-step one is the chain's last run)
#   guidance: CFG scale on the real score of the class-conditional teacher
# Every run has the same student steps (STEPS) and evaluation (1,000 seeds, teacher Heun 35 NFE).
# Usage: [STEPS=400] [JOBS=2] bash experiments/ablations/run.sh [OUT=runs/ablations]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/ablations}
STEPS=${STEPS:-400}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per parallel run
COMMON=(train.max_steps=$STEPS eval.num_samples=1000 'eval.teacher_samplers=[{name: heun, num_steps: 18}]'
        hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS)
$PY -m distill -m experiment=mnist,mnist_no_regression,mnist_ttur,mnist_dmd2 "${COMMON[@]}" hydra.sweep.dir=$OUT/chain
$PY -m distill -m experiment=mnist_dmd2_4step "${COMMON[@]}" hydra.sweep.dir=$OUT/steps
$PY -m distill -m experiment=mnist_cond loss.guidance_scale=1,2,4 "${COMMON[@]}" hydra.sweep.dir=$OUT/guidance
$PY experiments/ablations/collect.py "$OUT"
