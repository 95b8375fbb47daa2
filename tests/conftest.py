"""Shared test setup: headless rendering, offline W&B, and helpers that run a script like a user does (and kill it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster as slurm_cluster  # the session fixture, for every test module

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE_PPO = (
    ["--env-id", "CartPole-v1", "--num-envs", "4", "--num-steps", "128", "--num-minibatches", "4"]
    + ["--update-epochs", "4", "--learning-rate", "2.5e-4", "--ent-coef", "0.01"]
    + ["--eval-frequency", "5120", "--eval-episodes", "5"]
)
"""CleanRL's `ppo.py` settings for CartPole-v1, evaluated every 5k steps: the discrete-action learning tests"""


def script_command(script: str, *args: str) -> list[str]:
    """The command line of `python framework/<script> args...` with this interpreter."""
    return [sys.executable, str(ROOT / "framework" / script), *args]


def run_script(script: str, *args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python framework/<script> args...` from the repository root and return the finished process."""
    return subprocess.run(
        script_command(script, *args),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_scripts(runs: dict[str, list[str]], timeout: float = 600) -> dict[str, subprocess.CompletedProcess]:
    """Run `python framework/<script> args...` for each script -> args of `runs` at the same time (short runs that
    mostly wait on imports and disk); returns each one's finished process."""
    procs = {
        script: subprocess.Popen(
            script_command(script, *args),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, args in runs.items()
    }
    done = {}
    for script, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=timeout)
        done[script] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done


def kill_at_checkpoint(script: str, *args: str, when=lambda step: True) -> int:
    """Run `python framework/<script> args...` and SIGKILL it at the first "saved checkpoint at step N" line for which
    `when(N)` holds; returns N. Fails when the run ends first."""
    command = script_command(script, *args)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    step = None
    for line in proc.stdout:
        if "saved checkpoint at step" in line and when(int(line.split("step ")[1].split()[0])):
            step = int(line.split("step ")[1].split()[0])
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and step is not None, "the run finished before it could be killed"
    return step


def terminate_at(script: str, *args: str, when=lambda line: True) -> tuple[int, str]:
    """Run `python framework/<script> args...`, send it SIGTERM (a batch system's preemption) at the first line of
    its output for which `when(line)` holds, and return its exit status and stderr."""
    command = script_command(script, *args)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if when(line):
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path
