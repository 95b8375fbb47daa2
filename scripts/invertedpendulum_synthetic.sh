#!/usr/bin/env bash
# PEBBLE on InvertedPendulum-v5 with a perfect simulated teacher.
# measured: evaluation return 49 at 5k env steps and 200 labels (79 at 4k; random policy: 5), seed 1, 2-core CPU,
# one torch thread, 3 min (the maximum is 1000: at this budget it balances for a while, not yet for good).
# Extra flags are passed on: scripts/invertedpendulum_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id InvertedPendulum-v5 --total-timesteps 5000 --learning-starts 500 --unsupervised-steps 1000 --feedback-frequency 700 \
  --labels-per-session 40 --total-labels 200 --segment-length 25 --reward-hidden-size 256 --eval-frequency 1000 --eval-episodes 5 \
  "$@"
