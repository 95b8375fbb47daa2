# Two entry points: `make run` (set up, then train with defaults) and `make test` (set up, then the test suite).
# Everything is installed into .venv; system packages are installed only when running as root on Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch, installed before the project (pip takes a local wheel first, else PyPI's build for this platform); for the
# CPU build anywhere: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
APT_PACKAGES ?= libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3
# what only the tests need: the browser of the end-to-end labeling test
APT_TEST_PACKAGES ?= chromium

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: setup system-deps test-deps run test bench clean

setup: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,dmc,metaworld,atari]"
	touch $@

system-deps test-deps: PACKAGES = $(if $(filter test-deps,$@),$(APT_TEST_PACKAGES),$(APT_PACKAGES))
system-deps test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi

# PEBBLE on Hopper-v5 with a perfect simulated teacher: 5k exploration steps, then 5 sessions of 50 labels.
run: setup
	$(PY) framework/sac_rlhf.py --env-id Hopper-v5 --total-timesteps 20000 --unsupervised-steps 4000 \
	  --feedback-frequency 3000 --labels-per-session 50 --total-labels 250 --eval-frequency 5000 --eval-episodes 5

test: setup test-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest tests

bench: setup
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/learning.py

clean:
	rm -rf $(VENV) runs wandb videos
