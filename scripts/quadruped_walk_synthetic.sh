#!/usr/bin/env bash
# PEBBLE on dm_control/quadruped-walk-v0 with a perfect simulated teacher, with B-Pref's quadruped_walk: 1M steps, feedback every 30k, 1000 labels in sessions of 100, learning rates 1e-4 (rll-research/BPref's scripts).
# measured: return 151.8 at 30k steps, 100 labels (seed 1; this launcher with --total-timesteps 30000,
# 6 min on a 2-core CPU beside another run); the full budget not yet measured here.
# Extra flags are passed on: scripts/quadruped_walk_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id dm_control/quadruped-walk-v0 --total-timesteps 1000000 --policy-lr 0.0001 --q-lr 0.0001 --feedback-frequency 30000 --total-labels 1000 --unsupervised-steps 9000 --labels-per-session 100 --reward-epochs 50 --query-sampling disagreement --segment-length 50 --reward-ensemble-size 3 \
  --eval-frequency 10000 --eval-episodes 10 "$@"
