#!/usr/bin/env bash
# PEBBLE on InvertedPendulum-v5 with a person labeling clips in the browser (the feedback server starts with the run):
# invertedpendulum_synthetic.sh's flags and budget with the human teacher. Its header says what that budget reached with a
# perfect simulated teacher; a person answers slower and less consistently, so expect lower returns.
# Extra flags are passed on: scripts/invertedpendulum_human.sh --seed 2 --feedback-timeout 600
set -euo pipefail
exec "$(dirname "$0")/invertedpendulum_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
