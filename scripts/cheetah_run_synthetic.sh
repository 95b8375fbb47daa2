#!/usr/bin/env bash
# PEBBLE on dm_control/cheetah-run-v0 with a perfect simulated teacher, with B-Pref's cheetah_run: walker_walk's settings (learning rates 5e-4, feedback every 20k), 1000 labels (rll-research/BPref's scripts).
# measured: return 151.4 at 30k steps, 100 labels (seed 1; this launcher with --total-timesteps 30000,
# 5 min on a 2-core CPU beside another run); the full budget not yet measured here.
# Extra flags are passed on: scripts/cheetah_run_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id dm_control/cheetah-run-v0 --total-timesteps 500000 --policy-lr 0.0005 --q-lr 0.0005 --feedback-frequency 20000 --total-labels 1000 --unsupervised-steps 9000 --labels-per-session 100 --reward-epochs 50 --query-sampling disagreement --segment-length 50 --reward-ensemble-size 3 \
  --eval-frequency 10000 --eval-episodes 10 "$@"
