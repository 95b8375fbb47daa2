#!/usr/bin/env bash
# PEBBLE on metaworld/window-open-v3 with a perfect simulated teacher, with B-Pref's Meta-World settings: 1M steps, feedback every 5k, 10000 labels in sessions of 50, SAC with 3 hidden layers of 256, batch 512 (rll-research/BPref's scripts).
# measured: return 140.3, success rate 0.00 at 15k steps, 50 labels (seed 1; this launcher with --total-timesteps 15000,
# 9 min on a 2-core CPU beside another run); the full budget not yet measured here.
# Extra flags are passed on: scripts/window_open_synthetic.sh --seed 2 --track
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/sac_rlhf.py --env-id metaworld/window-open-v3 --total-timesteps 1000000 --policy-lr 0.0003 --q-lr 0.0003 --batch-size 512 --hidden-size 256 --depth 3 --unsupervised-steps 9000 --feedback-frequency 5000 --labels-per-session 50 --total-labels 10000 --reward-epochs 10 --query-sampling disagreement --segment-length 50 --reward-ensemble-size 3 \
  --eval-frequency 10000 --eval-episodes 10 "$@"
