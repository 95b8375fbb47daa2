#!/usr/bin/env bash
# The README gallery (media/gallery/): five agents trained one after the other, then filmed by
# framework/evaluation.py --gif --seconds 4 (the first 4 s of the first evaluation episode, tracking camera, 160x160).
# measured: about 100 min on a 2-core CPU, one torch thread (HalfCheetah 50k steps, Hopper 100k); a finished run is
# reused when the script runs again.
# GALLERY_RUNS picks the runs folder (default runs/gallery); GALLERY_DRY_RUN=1 prints the trainings instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PY="${PREFRL_PYTHON:-.venv/bin/python}"
RUNS="${GALLERY_RUNS:-runs/gallery}"
OUT=media/gallery
PEBBLE=(--total-timesteps 50000 --learning-starts 1000 --unsupervised-steps 4000 --feedback-frequency 4500
  --labels-per-session 50 --total-labels 500 --query-sampling disagreement --depth 2 --eval-frequency 5000
  --eval-episodes 5)
ORACLE=(--total-timesteps 50000 --learning-starts 5000 --eval-frequency 5000 --eval-episodes 5 --save-model)
LONGER=(--total-timesteps 100000 --total-labels 1000)  # Hopper: 100k steps, 1,000 labels

train() {  # name script flags...: train once into $RUNS/name
  local name=$1 script=$2
  shift 2
  if [ -n "${GALLERY_DRY_RUN:-}" ]; then
    echo "framework/$script $*"
  elif [ ! -f "$RUNS/$name/summary.json" ]; then
    "$PY" "framework/$script" --runs-dir "$RUNS" --run-name "$name" --seed 1 --torch-threads 1 "$@"
  fi
}

train halfcheetah_pebble sac_rlhf.py --env-id HalfCheetah-v5 "${PEBBLE[@]}"
train halfcheetah_oracle sac.py --env-id HalfCheetah-v5 "${ORACLE[@]}"
train hopper_pebble sac_rlhf.py --env-id Hopper-v5 "${PEBBLE[@]}" "${LONGER[@]}"
train hopper_backwards sac_rlhf.py --env-id Hopper-v5 "${PEBBLE[@]}" "${LONGER[@]}" \
  --teacher-reward scripts/teacher_rewards.py:hop_backwards
train hopper_oracle sac.py --env-id Hopper-v5 "${ORACLE[@]}" --total-timesteps 100000

[ -z "${GALLERY_DRY_RUN:-}" ] || exit 0
mkdir -p "$OUT"
: > "$OUT/returns.md"
for name in halfcheetah_pebble halfcheetah_oracle hopper_pebble hopper_oracle hopper_backwards; do
  { echo "### $name"; echo; echo '```'; } >> "$OUT/returns.md"
  "$PY" framework/evaluation.py "$RUNS/$name" --episodes 5 --gif --seconds 4 --out "$RUNS/$name/evaluation" | tee -a "$OUT/returns.md"
  echo '```' >> "$OUT/returns.md"
  cp "$RUNS/$name/evaluation/episode-0.gif" "$OUT/$name.gif"
done
ls -l "$OUT"
