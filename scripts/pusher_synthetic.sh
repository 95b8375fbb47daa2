#!/usr/bin/env bash
# PEBBLE on Pusher-v5 with a perfect simulated teacher.
# measured: evaluation return -72 (random policy: -151) after the first 10k of these 50k env steps (100 labels so
# far), seed 1, 2-core CPU, one torch thread, 4 min; the full budget is not measured yet.
# Extra flags are passed on: scripts/pusher_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id Pusher-v5 --total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500 \
  --labels-per-session 50 --total-labels 500 --query-sampling disagreement --depth 2 --reward-hidden-size 256 --eval-frequency 5000 --eval-episodes 5 \
  "$@"
