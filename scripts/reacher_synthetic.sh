#!/usr/bin/env bash
# PEBBLE on Reacher-v5 with a perfect simulated teacher.
# measured: evaluation return -15.0 (random policy: -42.3) after the first 9k of these 30k env steps (90 labels so
# far), seed 1, 2-core CPU, one torch thread, 3 min; the full budget is not measured yet.
# Extra flags are passed on: scripts/reacher_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id Reacher-v5 --total-timesteps 30000 --learning-starts 1000 --unsupervised-steps 2000 --feedback-frequency 2700 \
  --labels-per-session 30 --total-labels 300 --segment-length 25 --query-sampling disagreement --reward-hidden-size 256 --eval-frequency 3000 --eval-episodes 10 \
  "$@"
