#!/usr/bin/env bash
# PPO on ALE/Breakout-v5 with the game's score (the oracle for scripts/pref_ppo_breakout_synthetic.sh), CleanRL's
# ppo_atari.py settings.
# measured (benchmarks/results/atari_breakout.md, seeds 1-3, 2-core CPU, ~8 min per seed): training episodes'
# mean score 1.3-1.8 in the first fifth of the run -> 2.3-2.5 in the last; greedy evaluation 4.3 / 2.3 / 0.0 at 200k
# steps (a greedy agent that does not press FIRE after losing a life scores 0); 444 steps/s, peak 0.7 GiB.
# Extra flags are passed on: scripts/ppo_breakout.sh --seed 2 --total-timesteps 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PREFRL_PYTHON:-.venv/bin/python}"
exec "$PY" framework/ppo.py --env-id ALE/Breakout-v5 --total-timesteps 200000 --num-envs 8 --num-steps 128 \
  --num-minibatches 4 --update-epochs 4 --learning-rate 2.5e-4 --clip-coef 0.1 --ent-coef 0.01 \
  --eval-frequency 50000 --eval-episodes 3 "$@"
