#!/usr/bin/env bash
# PrefPPO on Hopper-v5 with a perfect simulated teacher.
# measured: evaluation return 1,349 (mean over seeds 1-3: 1,842 / 869 / 1,335; oracle PPO 1,301) at 150k env steps
# (8,192 of pre-exploration), 500 labels in 10 sessions, 64x2 networks, 2-core CPU, ~7 min per seed.
# Extra flags are passed on: scripts/pref_ppo_hopper_synthetic.sh --seed 2
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/pref_ppo.py --env-id Hopper-v5 --total-timesteps 150000 --unsupervised-steps 8192 \
  --feedback-frequency 14180 --labels-per-session 50 --total-labels 500 --query-sampling disagreement --depth 2 \
  --eval-frequency 15000 --eval-episodes 5 "$@"
