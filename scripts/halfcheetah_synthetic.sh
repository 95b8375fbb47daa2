#!/usr/bin/env bash
# PEBBLE on HalfCheetah-v5 with a perfect simulated teacher.
# measured (benchmarks/learning.py, seeds 1-3): evaluation return 3,604 on average (3,804 / 3,870 / 3,139) at 50k
# env steps (1k random + 4k pre-exploration), 500 labels in 10 sessions, disagreement sampling, 256x2 networks,
# 2-core CPU, ~18 min per seed; oracle SAC on the true reward: 3,893 (ratio 0.93).
# Extra flags are passed on: scripts/halfcheetah_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id HalfCheetah-v5 --total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500 \
  --labels-per-session 50 --total-labels 500 --query-sampling disagreement --depth 2 --eval-frequency 5000 --eval-episodes 5 \
  "$@"
