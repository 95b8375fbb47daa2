#!/usr/bin/env bash
# Every training script end to end on CUDA, a checkpoint resumed across GPU and CPU, and the GPU speed of the fast
# path (sac.py and PEBBLE's main phase: plain, --compile, --cudagraphs) beside LeanRL's published SAC figures.
# Not measured yet: prepared for a machine with an NVIDIA GPU and PyTorch with CUDA (about 10 minutes on an H100).
#
#   benchmarks/gpu_check.sh wheels     # here, with internet: the project's other dependencies as wheels for the GPU
#                                      # machine's Python (PY_VERSION, default 3.12) into gpu_wheels/
#   benchmarks/gpu_check.sh            # there (gpu_wheels/ carried along): installs them, runs the checks, writes
#                                      # to $OUT
#
# Results: $OUT/gpu_check.log, $OUT/speed_cuda.md and .png (benchmarks/results/ gets them too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PREFRL_PYTHON:-python3}"

if [ "${1:-}" = "wheels" ]; then
  pins=$(.venv/bin/python -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ('gymnasium', 'mujoco', 'tyro')))")
  .venv/bin/python -m pip download --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d gpu_wheels $pins
  exit 0
fi

OUT="${OUT:-/tmp/prefrl-gpu}"
mkdir -p "$OUT"
R="$OUT/runs"
exec > >(tee "$OUT/gpu_check.log") 2>&1
if [ -d gpu_wheels ]; then "$PY" -m pip install -q --no-index --find-links gpu_wheels gymnasium mujoco tyro; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import framework/ from the checkout
export MUJOCO_GL="${MUJOCO_GL:-egl}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))"

step() { echo "== $*"; }
common=(--env-id Hopper-v5 --eval-episodes 2 --cuda --runs-dir "$R")
step "sac.py on CUDA, plain and compiled"
"$PY" framework/sac.py "${common[@]}" --total-timesteps 3000 --learning-starts 1000 --eval-frequency 1500 \
  --checkpoint-frequency 1000 --run-name sac
"$PY" framework/sac.py "${common[@]}" --total-timesteps 3000 --learning-starts 1000 --compile --run-name sac_compiled
step "sac_rlhf.py on CUDA (SURF, RUNE, RIME on), and with CUDA graphs"
rlhf=(--total-timesteps 4000 --learning-starts 500 --unsupervised-steps 1000 --total-labels 60 --labels-per-session 20
  --feedback-frequency 1000 --eval-frequency 2000)
"$PY" framework/sac_rlhf.py "${common[@]}" "${rlhf[@]}" --surf --rune --rime --run-name pebble
"$PY" framework/sac_rlhf.py "${common[@]}" "${rlhf[@]}" --cudagraphs --run-name pebble_graphs
step "ppo.py and pref_ppo.py on CUDA"
"$PY" framework/ppo.py "${common[@]}" --total-timesteps 8192 --eval-frequency 8192 --run-name ppo
"$PY" framework/pref_ppo.py "${common[@]}" --total-timesteps 8192 --unsupervised-steps 2048 --total-labels 40 \
  --labels-per-session 20 --feedback-frequency 2048 --eval-frequency 8192 --run-name pref_ppo
step "a GPU checkpoint resumed on the CPU, and evaluated"
"$PY" framework/sac.py "${common[@]}" --total-timesteps 6000 --learning-starts 1000 --checkpoint-frequency 1000 --save-model \
  --run-name moved &
pid=$!
while ! "$PY" -c "import torch,sys; sys.exit(torch.load('$R/moved/checkpoint.pt', weights_only=False)['state']['global_step'] < 2000)" 2>/dev/null; do sleep 2; done
kill -9 "$pid" || true
CUDA_VISIBLE_DEVICES= "$PY" framework/sac.py --resume "$R/moved"
"$PY" framework/evaluation.py "$R/moved" --episodes 2
step "speed of the fast path"
"$PY" benchmarks/speed.py --cuda --env-id HalfCheetah-v5 --sac-steps 20000 --modes plain compile cudagraphs --skip-ppo
cp benchmarks/results/speed_cuda.* "$OUT"/
step "all checks ran"
