#!/usr/bin/env bash
# PEBBLE on Ant-v5 with a person labeling clips in the browser (the feedback server starts with the run).
# The budget is the simulated-teacher script's (ant_synthetic.sh); a person is slower and noisier than
# the simulated teacher, so returns are expected lower. Simulated-teacher result:
# not measured yet: the HalfCheetah-v5 settings (50k env steps, 500 labels in 10 sessions, disagreement),
# a starting point; tune with sweep_config/sac_rlhf_ant.yaml.
# The same flags as ant_synthetic.sh, with the human teacher. Extra flags are passed on: scripts/ant_human.sh --seed 2 --track
set -euo pipefail
exec "$(dirname "$0")/ant_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
