#!/usr/bin/env bash
# The DMD paper's ablation on three mixtures: teacher sampler vs DMD only, regression only, both.
# Usage: [MIXTURES="toy_gmm ..."] bash experiments/toy_gmm/run.sh [OUT=runs/toy_gmm]  (about 25 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/toy_gmm}
for mixture in ${MIXTURES:-toy_gmm toy_grid25 toy_16d}; do
  # One teacher per mixture, shared by the three students.
  [ -f "$OUT/$mixture/teacher/teacher/config.json" ] || \
    $PY -m teachers.train experiment=$mixture hydra.run.dir=$OUT/$mixture/teacher
  for loss in dmd regression dmd_regression; do
    $PY -m distill experiment=$mixture loss=$loss teacher.path=$OUT/$mixture/teacher/teacher \
      hydra.run.dir=$OUT/$mixture/$loss
  done
done
$PY experiments/toy_gmm/collect.py "$OUT"
