#!/usr/bin/env bash
# PEBBLE on dm_control/walker-walk-v0 with a perfect simulated teacher, with B-Pref's walker_walk: 500k steps, feedback every 20k, 1000 labels in sessions of 100, learning rates 5e-4 (rll-research/BPref's scripts).
# measured: with --total-labels 100 --labels-per-session 10 (the published PEBBLE budget, 453 +- 159), returns 581, 278
# and 170 at 500k steps (seeds 1-3, mean 343; about 1.5 hours per seed on a 2-core CPU); with the 1000 labels below,
# return 195.1 at 30k steps (seed 1; --total-timesteps 30000), the full budget not yet measured here.
# Extra flags are passed on: scripts/walker_walk_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id dm_control/walker-walk-v0 --total-timesteps 500000 --policy-lr 0.0005 --q-lr 0.0005 --feedback-frequency 20000 --total-labels 1000 --unsupervised-steps 9000 --labels-per-session 100 --reward-epochs 50 --query-sampling disagreement --segment-length 50 --reward-ensemble-size 3 \
  --eval-frequency 10000 --eval-episodes 10 "$@"
