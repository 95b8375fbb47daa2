#!/usr/bin/env bash
# PEBBLE on HalfCheetah-v5 with a perfect simulated teacher.
# measured (benchmarks/learning.py --tag 500_labels, seeds 1-3, 2-core AMD EPYC): evaluation return 2,112 / 3,697 /
# 2,880 (interquartile mean 2,896) at 50k env steps (1k random + 4k pre-exploration), 500 labels in 10 sessions,
# disagreement sampling, 256x2 networks, 20-35 min per seed at 3 runs at a time; oracle SAC on the true reward 4,509
# (ratio 0.64, 95 % bootstrap interval 0.50-0.71). The same flags at an earlier commit on another CPU of this kind
# gave 3,804 / 3,870 / 3,139 (ratio 0.93): single seeds move this much between commits and CPUs.
# Extra flags are passed on: scripts/halfcheetah_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id HalfCheetah-v5 --total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500 \
  --labels-per-session 50 --total-labels 500 --query-sampling disagreement --depth 2 --eval-frequency 5000 --eval-episodes 5 \
  "$@"
