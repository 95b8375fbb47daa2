#!/usr/bin/env bash
# PEBBLE on Hopper-v5 from 300 labels of a perfect simulated teacher, default reward model (standardised inputs were
# behind on 4 of 5 seeds here: benchmarks/results/learning_pebble_hopper_300_labels_norm.md).
# measured (benchmarks/learning.py --env-id Hopper-v5 --total-labels 300 --seeds 1 2 3 4 5): evaluation return 836 /
# 1,090 / 894 / 862 / 794 (interquartile mean 864) at 50k env steps (1k random + 4k pre-exploration), 30 labels in
# each of 10 sessions, disagreement sampling, 256x2 networks, 2-core CPU, ~19 min per seed; oracle SAC on the true
# reward 671 (ratio 1.29, 95 % bootstrap interval 0.71-1.89; at 50k steps the oracle has barely started).
# Extra flags are passed on: scripts/hopper_300_labels_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id Hopper-v5 --total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500 \
  --labels-per-session 30 --total-labels 300 --query-sampling disagreement --depth 2 --eval-frequency 5000 --eval-episodes 5 \
  "$@"
