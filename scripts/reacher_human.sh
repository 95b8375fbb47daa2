#!/usr/bin/env bash
# PEBBLE on Reacher-v5 with a person labeling clips in the browser (the feedback server starts with the run).
# The budget is the simulated-teacher script's (reacher_synthetic.sh); a person is slower and noisier than
# the simulated teacher, so returns are expected lower. Simulated-teacher result:
# not measured yet: 30k env steps, 300 labels in 10 sessions of 25-step segments (Reacher episodes are 50
# steps), a starting point; tune with sweep_config/sac_rlhf_reacher.yaml.
# The same flags as reacher_synthetic.sh, with the human teacher. Extra flags are passed on: scripts/reacher_human.sh --seed 2 --track
set -euo pipefail
exec "$(dirname "$0")/reacher_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
