#!/usr/bin/env bash
# PEBBLE on Hopper-v5 with a person labeling clips in the browser (the feedback server starts with the run).
# The budget is the simulated-teacher script's (hopper_synthetic.sh); a person is slower and noisier than
# the simulated teacher, so returns are expected lower. Simulated-teacher result:
# measured: evaluation return 217, learned-reward Pearson 0.92 with the true reward, at 20k env steps and
# 250 labels (5 sessions of 50), seed 1, 2-core CPU, ~6 min (the `make run` settings).
# The same flags as hopper_synthetic.sh, with the human teacher. Extra flags are passed on: scripts/hopper_human.sh --seed 2 --track
set -euo pipefail
exec "$(dirname "$0")/hopper_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
