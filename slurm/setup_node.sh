#!/usr/bin/env bash
# Prepare prefrl's Python environment on a cluster node (run once per checkout, e.g. in an interactive job):
#
#   slurm/setup_node.sh                          # .venv in the checkout, CPU torch
#   PREFRL_VENV=$SCRATCH/prefrl-venv PREFRL_TORCH_INDEX=https://download.pytorch.org/whl/cu124 slurm/setup_node.sh
#
# Environment:
#   PREFRL_PYTHON_BIN    the Python >= 3.10 to build the venv from (default: python3; e.g. after `module load python`)
#   PREFRL_VENV          where the venv goes (default: <checkout>/.venv); jobs find it with PREFRL_PYTHON=$PREFRL_VENV/bin/python
#   PREFRL_TORCH         the torch requirement (default: torch==2.13.0)
#   PREFRL_TORCH_INDEX   the wheel index for torch (default: the CPU wheels)
# Nothing here needs root; headless MuJoCo rendering needs the node's EGL or OSMesa libraries (ask the admins).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYBIN="${PREFRL_PYTHON_BIN:-python3}"
VENV="${PREFRL_VENV:-$ROOT/.venv}"
TORCH="${PREFRL_TORCH:-torch==2.13.0}"
INDEX="${PREFRL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "setup_node: $PYBIN is older than 3.10" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYBIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH" --index-url "$INDEX"
"$VENV/bin/python" -m pip install -q -e "$ROOT"
MUJOCO_GL="${MUJOCO_GL:-egl}" "$VENV/bin/python" -c "import framework.envs, torch; print('prefrl ready: torch', torch.__version__)"
echo "jobs use it with: export PREFRL_PYTHON=$VENV/bin/python"
