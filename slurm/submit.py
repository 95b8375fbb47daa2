r"""Submit prefrl runs to SLURM with submitit: one run, or a job array over seeds (and config lines), then wait.

Flags after `--` go to the training script unchanged:

    python slurm/submit.py --algorithm sac-rlhf --seeds 1 2 3 -- --env-id Hopper-v5 --total-labels 500
    python slurm/submit.py --algorithm pref-ppo --configs-file configs.txt --partition gpu --no-wait \
        -- --env-id Walker2d-v5

Every (config line, seed) pair becomes one task of a SLURM job array. With `--wait` (the default) it prints each
task's final state (COMPLETED, FAILED, CANCELLED, ...) and exits 0 only when all completed; a cancelled or failed
task is reported as such, never waited on forever. Partition, time, mail: flags, or PREFRL_SLURM_PARTITION,
PREFRL_SLURM_TIME_MIN, PREFRL_MAIL_USER in the environment.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Literal

from framework.runtime import UsageError, run_cli
from framework.sweep import ALGORITHMS, ROOT, run_command, slurm_executor, slurm_state


@dataclass
class Args:
    algorithm: Literal["sac-rlhf", "pref-ppo", "sac", "ppo"] = "sac-rlhf"
    """the script each task runs"""
    seeds: tuple[int, ...] = (1,)
    """one task per seed (per config line)"""
    configs_file: str | None = None
    """a file with one set of flags per line; one task per line (per seed)"""
    folder: str = "runs/slurm"
    """submitit's folder: job scripts, pickles and logs (use a fresh one per batch)"""
    runs_dir: str = "runs"
    """where the tasks' run folders go"""
    job_name: str = "prefrl"
    """the SLURM job name"""
    partition: str | None = os.environ.get("PREFRL_SLURM_PARTITION")
    """SLURM partition (default: $PREFRL_SLURM_PARTITION, else the cluster's default)"""
    time_min: int = int(os.environ.get("PREFRL_SLURM_TIME_MIN", "240"))
    """time limit per task in minutes (default: $PREFRL_SLURM_TIME_MIN or 240)"""
    cpus: int = 1
    """CPUs per task (also the script's --torch-threads)"""
    mem_gb: float = 4.0
    """memory per task in GB"""
    mail_user: str | None = os.environ.get("PREFRL_MAIL_USER")
    """address SLURM mails about the jobs (default: $PREFRL_MAIL_USER; none: no mail)"""
    mail_type: str = "END,FAIL"
    """which events SLURM mails about (sbatch --mail-type)"""
    wait: bool = True
    """wait for every task and report its final state"""
    poll_seconds: float = 2.0
    """how often the states are checked while waiting"""


def task_commands(args: Args, script_flags: list[str]) -> list[tuple[str, list[str]]]:
    """(run name, command) of every task: config lines x seeds."""
    lines = [[]]
    if args.configs_file is not None:
        if not os.path.isfile(args.configs_file):
            raise UsageError(f"--configs-file {args.configs_file!r}: no such file")
        with open(args.configs_file) as f:
            lines = [shlex.split(line) for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise UsageError(f"--configs-file {args.configs_file!r} has no flag lines")
    script = os.path.join(ROOT, "framework", f"{ALGORITHMS[args.algorithm]}.py")
    stamp = int(time.time())
    tasks = []
    for i, line in enumerate(lines):
        for seed in args.seeds:
            name = f"{args.job_name}__cfg{i}__seed{seed}__{stamp}"
            tasks.append(
                (
                    name,
                    [
                        sys.executable,
                        script,
                        *script_flags,
                        *line,
                        "--seed",
                        str(seed),
                        "--runs-dir",
                        os.path.abspath(args.runs_dir),
                        "--run-name",
                        name,
                        "--torch-threads",
                        str(args.cpus),
                    ],
                )
            )
    return tasks


def wait_for(jobs: list, poll_seconds: float) -> list[str]:
    """Poll until every job is in a terminal state; return their states."""
    while True:
        states = [slurm_state(j) for j in jobs]
        if "running" not in states:
            return states
        time.sleep(poll_seconds)


def main(args: Args, script_flags: list[str]) -> int:
    tasks = task_commands(args, script_flags)
    folder = os.path.abspath(args.folder)
    os.makedirs(folder, exist_ok=True)
    executor = slurm_executor(
        folder, args.job_name, args.time_min, args.cpus, args.mem_gb, args.partition, args.mail_user, args.mail_type
    )
    logs = [os.path.join(folder, f"{name}.log") for name, _ in tasks]
    jobs = executor.map_array(run_command, [c for _, c in tasks], logs, [ROOT] * len(tasks))
    for (name, _), job in zip(tasks, jobs):
        print(f"submitted {job.job_id}: {name}", flush=True)
    if not args.wait:
        return 0
    states = wait_for(jobs, args.poll_seconds)
    for (name, _), job, state in zip(tasks, jobs, states):
        print(f"{job.job_id} {name}: {job.state.split()[0]} ({state})", flush=True)
    return 0 if all(s == "finished" for s in states) else 1


if __name__ == "__main__":
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    status = 0

    def entry(args: Args) -> None:
        global status
        status = main(args, argv[split + 1 :])

    run_cli(Args, entry, argv[:split])
    sys.exit(status)
