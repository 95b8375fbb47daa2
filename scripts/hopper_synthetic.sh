#!/usr/bin/env bash
# PEBBLE on Hopper-v5 with a perfect simulated teacher.
# measured: evaluation return 294 (random policy: 28), learned-reward Pearson 0.91 with the true reward, at
# 20k env steps and 250 labels (5 sessions of 50), seed 1, 2-core CPU, default torch threads, 6 min (the `make run` settings).
# Extra flags are passed on: scripts/hopper_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id Hopper-v5 --total-timesteps 20000 --unsupervised-steps 4000 --feedback-frequency 3000 \
  --labels-per-session 50 --total-labels 250 --eval-frequency 5000 --eval-episodes 5 \
  "$@"
