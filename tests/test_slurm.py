"""The sbatch templates and the submit helper on a real (single-node, local) SLURM cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import ROOT
from slurm_cluster import wait_for_states

TINY_RLHF = [
    "--env-id",
    "InvertedPendulum-v5",
    "--total-timesteps",
    "400",
    "--learning-starts",
    "100",
    "--no-unsupervised-exploration",
    "--segment-length",
    "10",
    "--feedback-frequency",
    "100",
    "--labels-per-session",
    "10",
    "--total-labels",
    "20",
    "--hidden-size",
    "32",
    "--batch-size",
    "32",
    "--reward-hidden-size",
    "32",
    "--reward-epochs",
    "5",
    "--eval-frequency",
    "200",
    "--eval-episodes",
    "2",
    "--no-cuda",
]


def sbatch(*args: str, env: dict | None = None) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def test_job_array_over_seeds_runs_sac_rlhf(slurm_cluster, tmp_path):
    import os

    env = {**os.environ, "PREFRL_ROOT": str(ROOT), "PREFRL_PYTHON": sys.executable}
    job = sbatch(
        "--array=1-2",
        f"--output={tmp_path}/%A_%a.out",
        "--mail-user=nobody@example.org",
        "--mail-type=END",
        str(ROOT / "slurm" / "array.sbatch"),
        "framework/sac_rlhf.py",
        *TINY_RLHF,
        "--runs-dir",
        str(tmp_path / "runs"),
        env=env,
    )
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "MailUser=nobody@example.org" in info  # mail settings come from flags, not the template
    states = wait_for_states([f"{job}_1", f"{job}_2"], timeout=150)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    summaries = sorted(
        (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")), key=lambda s: s["seed"]
    )
    assert [s["seed"] for s in summaries] == [1, 2]
    for s, task in zip(summaries, (1, 2)):
        assert s["algorithm"] == "sac_rlhf" and s["total_timesteps"] == 400 and s["labels_used"] == 20
        assert s["run_dir"].endswith(f"sac_rlhf__task{task}__{job}")
        assert [step for step, _ in s["eval_history"]] == [200, 400]


def test_cancelled_job_is_reported_as_cancelled(slurm_cluster, tmp_path):
    """submit.py waits on a job that is then cancelled: it reports CANCELLED and exits 1 within seconds."""
    folder = tmp_path / "submitit"  # a fresh folder: job ids restart at 1 when the cluster's state is purged
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "slurm" / "submit.py"),
            "--algorithm",
            "sac",
            "--seeds",
            "7",
            "--folder",
            str(folder),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--poll-seconds",
            "0.5",
            "--",
            "--env-id",
            "InvertedPendulum-v5",
            "--total-timesteps",
            "1000000",
            "--no-cuda",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("submitted "), line + proc.stderr.read()
    job_id = line.split()[1].rstrip(":")
    end = time.time() + 60
    while (
        "RUNNING"
        not in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    ):
        assert time.time() < end, "the job never started"
        time.sleep(0.5)
    cancelled_at = time.time()
    subprocess.run(["scancel", job_id], check=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert f"{job_id} " in out and "CANCELLED (cancelled)" in out
    assert time.time() - cancelled_at < 30
    assert wait_for_states([job_id], timeout=10) == ["CANCELLED"]


def test_single_run_template(slurm_cluster, tmp_path):
    import os

    env = {**os.environ, "PREFRL_ROOT": str(ROOT), "PREFRL_PYTHON": sys.executable}
    job = sbatch(
        f"--output={tmp_path}/run.out",
        str(ROOT / "slurm" / "run.sbatch"),
        "framework/ppo.py",
        "--env-id",
        "InvertedPendulum-v5",
        "--total-timesteps",
        "512",
        "--num-envs",
        "1",
        "--num-steps",
        "256",
        "--eval-frequency",
        "512",
        "--eval-episodes",
        "1",
        "--no-cuda",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "one",
        env=env,
    )
    assert wait_for_states([job], timeout=120) == ["COMPLETED"], (tmp_path / "run.out").read_text()[-3000:]
    summary = json.loads((tmp_path / "runs" / "one" / "summary.json").read_text())
    assert summary["total_timesteps"] >= 512 and summary["algorithm"] == "ppo"


def test_preempted_and_time_limited_jobs_continue_their_runs(slurm_cluster, tmp_path):
    """run.sbatch's jobs survive the batch system: one requeued (as preemption does: SIGTERM, then the job starts
    again) and one warned of its time limit (USR1 to the batch script, as --signal=B:USR1@180 sends: it stops the run
    and requeues itself) both continue their run from its checkpoint to the end of its budget."""
    import os

    env = {**os.environ, "PREFRL_ROOT": str(ROOT), "PREFRL_PYTHON": sys.executable}
    flags = [*TINY_RLHF, "--total-timesteps", "4000", "--total-labels", "50", "--eval-frequency", "1000"]
    flags += ["--feedback-frequency", "500", "--checkpoint-frequency", "500", "--runs-dir", str(tmp_path / "runs")]
    jobs = {
        how: sbatch(
            f"--output={tmp_path}/{how}.out",
            str(ROOT / "slurm" / "run.sbatch"),
            "framework/sac_rlhf.py",
            *flags,
            env=env,
        )  # fmt: skip
        for how in ("requeued", "time_limit")
    }
    interrupt = {
        "requeued": ["scontrol", "requeue", jobs["requeued"]],
        "time_limit": ["scancel", "--batch", "--signal=USR1", jobs["time_limit"]],
    }
    for how in jobs:
        deadline = time.time() + 120
        out = tmp_path / f"{how}.out"
        while not (out.exists() and "saved checkpoint" in out.read_text()):
            assert time.time() < deadline, out.read_text() if out.exists() else "no output"
            time.sleep(0.5)
        assert subprocess.run(interrupt[how], capture_output=True, text=True).returncode == 0
    # (a requeued job waits about 11 s, the cluster's cred_expire, before it starts again: SLURM revokes the old
    # job's credential meanwhile, and a job forced to start sooner fails with "Job credential revoked")
    states = wait_for_states(list(jobs.values()), timeout=240)
    logs = {how: (tmp_path / f"{how}.out").read_text() for how in jobs}
    assert states == ["COMPLETED", "COMPLETED"], logs
    assert "time limit near: stopping the run and requeueing the job" in logs["time_limit"]
    for how, job in jobs.items():
        assert "interrupted at step" in logs[how] and f"restart 1 of job {job}: continuing" in logs[how], logs[how]
        summary = json.loads((tmp_path / "runs" / f"sac_rlhf__job{job}" / "summary.json").read_text())
        assert summary["total_timesteps"] == 4000 and summary["labels_used"] == 50
        assert [step for step, _ in summary["eval_history"]] == [1000, 2000, 3000, 4000]
