#!/usr/bin/env bash
# PEBBLE on HalfCheetah-v5 from 300 labels of a perfect simulated teacher, reward model with standardised inputs
# trained its full 50 epochs every session (--reward-input-norm --reward-target-accuracy 1.01).
# measured (benchmarks/learning.py --total-labels 300 --seeds 1 2 3 4 5 --tag norm): evaluation return 1,095 / 3,457 /
# 821 / 965 / 3,351 (interquartile mean 1,803) at 50k env steps (1k random + 4k pre-exploration), 30 labels in each of
# 10 sessions, disagreement sampling, 256x2 networks, 2-core CPU, ~20 min per seed; oracle SAC on the true reward
# 4,339 (ratio 0.42, 95 % bootstrap interval 0.22-0.68). The same budget with the default reward model: see
# benchmarks/results/learning_pebble_halfcheetah_300_labels.md.
# Extra flags are passed on: scripts/halfcheetah_300_labels_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id HalfCheetah-v5 --total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500 \
  --labels-per-session 30 --total-labels 300 --query-sampling disagreement --depth 2 --eval-frequency 5000 --eval-episodes 5 \
  --reward-input-norm --reward-target-accuracy 1.01 \
  "$@"
