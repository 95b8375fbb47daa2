"""The test suite's SLURM cluster: slurm/local_cluster.sh brought up once per session and stopped at the end.

A cluster that was already running (someone's `slurm/local_cluster.sh up`) is reused and left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "local_cluster.sh"
STATE_DIR = os.environ.get("PREFRL_SLURM_DIR", "/tmp/prefrl-slurm")


def cluster(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PREFRL_SLURM_DIR": STATE_DIR},
    )


def can_run_cluster() -> str | None:
    """Why a local cluster cannot be started here (None when it can)."""
    if shutil.which("dpkg") is None:
        return "not a Debian system"
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        return "SLURM is not installed and installing it needs root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running single-node cluster with accounting (sacct)."""
    reason = can_run_cluster()
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    already_up = cluster("status").returncode == 0
    if not already_up:
        start = time.perf_counter()
        result = cluster("up")
        assert result.returncode == 0, result.stderr[-2000:]
        print(f"local SLURM cluster up in {time.perf_counter() - start:.1f}s")
    conf = os.path.join(STATE_DIR, "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not already_up:
        result = cluster("down")
        assert result.returncode == 0, result.stderr[-2000:]
        assert cluster("status").returncode != 0  # every daemon is gone


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0].split()[0] if out.stdout.strip() else ""


def wait_for_states(
    job_ids: list[str], timeout: float, done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
) -> list[str]:
    """sacct states of the jobs, once all are terminal (fails the test after `timeout` seconds)."""
    end = time.time() + timeout
    while True:
        states = [sacct_state(j) for j in job_ids]
        if all(s in done for s in states):
            return states
        if time.time() > end:
            raise AssertionError(f"jobs {job_ids} still not finished after {timeout}s: {states}")
        time.sleep(1)
