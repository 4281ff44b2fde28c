#!/usr/bin/env bash
# Issue 27's measurements (2026-12-03, 2 CPU cores, runs side by side at OMP_NUM_THREADS=1, so equal update counts
# rather than equal minutes). Writes runs/r27/{mnist,mnist_eval,eps_teacher,eps}/ and the tables of this folder.
# Usage: bash experiments/review/run.sh [mnist|eps|tables]...   (all three when none is given)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/r27}
# The options of each row; the baseline pins the pre-review behaviour (EDM weighting, fake score on t in [0.02, 0.98]).
OLD="loss.fake.denoising.weighting=edm loss.fake_sigma.t_min=0.02 loss.fake_sigma.t_max=0.98"
MNIST_ROWS=(
  "A_baseline seed=0 $OLD"
  "B_vmse seed=0 loss.fake.denoising.weighting=auto loss.fake_sigma.t_min=0.02 loss.fake_sigma.t_max=0.98"
  "C_noclip seed=0 $OLD train.grad_clip=null"
  "D_fullrange seed=0 loss.fake.denoising.weighting=edm loss.fake_sigma.t_min=0.0 loss.fake_sigma.t_max=1.0 loss.gan_sigma.t_min=0.0 loss.gan_sigma.t_max=1.0"
  "A_baseline_seed1 seed=1 $OLD"
  "B_vmse_seed1 seed=1 loss.fake.denoising.weighting=auto loss.fake_sigma.t_min=0.02 loss.fake_sigma.t_max=0.98"
)
EPS_ROWS=(
  "E1_edm_157 loss.fake.denoising.weighting=edm" "E2_eps_157 loss.fake.denoising.weighting=auto"
  "E3_edm_80 loss.fake.denoising.weighting=edm student.sigmas=[80.0]" "E4_eps_80 loss.fake.denoising.weighting=auto student.sigmas=[80.0]"
)

distill() {  # NAME FOLDER OVERRIDES...: one distillation run in the background
  local name=$1 folder=$2; shift 2
  OMP_NUM_THREADS=1 $PY -m distill "$@" hydra.run.dir="$OUT/$folder/$name" > "$OUT/$folder/$name.log" 2>&1 &
}

mnist() {  # the 30-minute conditional recipe of the review, for 1,200 student updates each, two at a time
  mkdir -p "$OUT/mnist"
  local n=0
  for row in "${MNIST_ROWS[@]}"; do
    set -- $row; local name=$1; shift
    distill "$name" mnist experiment=mnist_dmd2_fast teacher.path=zoo:mnist_cond train.reuse_student_samples=true \
      train.ema_decay=0.999 eval.num_samples=2000 train.max_steps=1200 train.max_minutes=null train.checkpoint_every=400 "$@"
    n=$((n + 1)); if (( n % 2 == 0 )); then wait; fi
  done
  wait
  for row in "${MNIST_ROWS[@]}"; do  # every student through one evaluation (the teacher's samples come from the cache)
    set -- $row
    OMP_NUM_THREADS=1 $PY -m eval experiment=mnist_dmd2_fast teacher.path=zoo:mnist_cond eval.num_samples=2000 \
      student_path="$OUT/mnist/$1/student" hydra.run.dir="$OUT/mnist_eval/$1" > "$OUT/mnist_eval_$1.log" 2>&1
  done
}

eps() {  # a tiny eps-predicting UNet on sklearn digits, then DMD (no GAN) at two weightings x two conditioning sigmas
  mkdir -p "$OUT/eps"
  OMP_NUM_THREADS=1 $PY -m teachers.train data=digits teacher=unet teacher.scheduler.prediction_type=epsilon \
    teacher.net.block_out_channels=[16,32] teacher.fit.max_steps=4000 hydra.run.dir="$OUT/eps_teacher" > "$OUT/eps_teacher.log" 2>&1
  for row in "${EPS_ROWS[@]}"; do
    set -- $row; local name=$1; shift
    distill "$name" eps experiment=mnist_ttur_fast data=digits teacher.path="$OUT/eps_teacher/teacher" train.max_steps=1000 \
      train.max_minutes=null train.checkpoint_every=1000 eval.num_samples=1000 seed=0 loss.fake_sigma.t_min=0.02 loss.fake_sigma.t_max=0.98 "$@"
    wait
    OMP_NUM_THREADS=1 $PY -m eval experiment=mnist_ttur_fast data=digits teacher.path="$OUT/eps_teacher/teacher" eval.num_samples=1000 \
      student_path="$OUT/eps/$name/student" hydra.run.dir="$OUT/eps_eval/$name" > "$OUT/eps_eval_$name.log" 2>&1
  done
}

tables() {
  $PY experiments/review/collect.py "$OUT/mnist_eval" experiments/review/mnist_deviations.md \
    loss.fake.denoising.weighting loss.fake_sigma.t_min loss.gan_sigma.t_min train.grad_clip
  $PY experiments/review/collect.py "$OUT/eps_eval" experiments/review/eps_unet.md loss.fake.denoising.weighting student.sigmas
}

for part in "${@:-mnist eps tables}"; do for p in $part; do "$p"; done; done
