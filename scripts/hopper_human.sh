#!/usr/bin/env bash
# PEBBLE on Hopper-v5 with a person labeling clips in the browser (the feedback server starts with the run).
# The budget is the simulated-teacher script's (hopper_synthetic.sh); a person is slower and noisier than
# the simulated teacher, so returns are expected lower. Simulated-teacher result:
# measured: evaluation return 217, learned-reward Pearson 0.92 with the true reward, at 20k env steps and
# 250 labels (5 sessions of 50), seed 1, 2-core CPU, ~6 min (the `make run` settings).
# Extra flags are passed on: scripts/hopper_human.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id Hopper-v5 --total-timesteps 20000 --unsupervised-steps 4000 --feedback-frequency 3000 \
  --labels-per-session 50 --total-labels 250 --eval-frequency 5000 --eval-episodes 5 \
  --teacher-feedback-mode human --feedback-server-autostart \
  "$@"
