#!/usr/bin/env bash
# PrefPPO on ALE/Breakout-v5 from frames, with a simulated teacher that knows the score: it skips pairs where neither
# 25-step clip scores (no label charged) and calls equal scores equal. CleanRL's ppo_atari.py settings.
# measured (benchmarks/results/atari_breakout.md, seeds 1-3, 2-core CPU, ~20-25 min per seed): training episodes'
# mean score 1.2-1.8 -> 1.9-2.1 at 100k steps while labels come in (PPO 1.7-2.4); after the last session seed 1 kept
# learning (2.4 in the last fifth), seed 2 fell back to 1.4, seed 3 stopped launching the ball. 302-461 labels used
# (1,070-1,735 pairs skipped); greedy evaluation 0.0; 203 steps/s, peak 4.3 GiB.
# Extra flags are passed on: scripts/pref_ppo_breakout_synthetic.sh --seed 2
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/pref_ppo.py --env-id ALE/Breakout-v5 --total-timesteps 200000 --num-envs 8 --num-steps 128 \
  --num-minibatches 4 --update-epochs 4 --learning-rate 2.5e-4 --clip-coef 0.1 --ent-coef 0.01 \
  --total-labels 500 --labels-per-session 25 --feedback-frequency 5000 --unsupervised-steps 10000 \
  --segment-length 25 --reward-batch-size 16 --reward-epochs 10 --teacher-eps-skip 1e-6 --teacher-eps-equal 1e-6 \
  --eval-frequency 50000 --eval-episodes 3 "$@"
