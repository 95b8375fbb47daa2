#!/usr/bin/env bash
# PEBBLE on HalfCheetah-v5 with a person labeling clips in the browser (the feedback server starts with the run).
# The budget is the simulated-teacher script's (halfcheetah_synthetic.sh); a person is slower and noisier than
# the simulated teacher, so returns are expected lower. Simulated-teacher result:
# measured: evaluation return 1,955 at 50k env steps (5k random + pre-exploration), 500 labels in 10
# sessions, disagreement sampling, 256x2 networks, seed 1, 2-core CPU (oracle SAC on the true reward: 4,499).
# The same flags as halfcheetah_synthetic.sh, with the human teacher. Extra flags are passed on: scripts/halfcheetah_human.sh --seed 2 --track
set -euo pipefail
exec "$(dirname "$0")/halfcheetah_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
