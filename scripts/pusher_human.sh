#!/usr/bin/env bash
# PEBBLE on Pusher-v5 with a person labeling clips in the browser (the feedback server starts with the run):
# pusher_synthetic.sh's flags and budget with the human teacher. Its header says what that budget reached with a
# perfect simulated teacher; a person answers slower and less consistently, so expect lower returns.
# Extra flags are passed on: scripts/pusher_human.sh --seed 2 --feedback-timeout 600
set -euo pipefail
exec "$(dirname "$0")/pusher_synthetic.sh" --teacher-feedback-mode human --feedback-server-autostart "$@"
