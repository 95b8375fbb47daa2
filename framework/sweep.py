r"""Hyperparameter sweeps from W&B sweep YAML: through a W&B server when one is configured, else locally.

The YAML (`sweep_config/*.yaml`) is W&B's sweep format: `method` (grid / random / bayes), `metric` (a key of the
runs' summary.json such as `final_eval_return`, or a TensorBoard tag such as `eval/episodic_return`), `parameters`
(the script's flags in snake_case, each with `value`, `values` or a distribution), optional `early_terminate`
(hyperband) and `run_cap`.

  * W&B mode: `wandb.sweep` registers the sweep (or `--sweep-id` joins one) and `wandb.agent` runs trials; each trial
    logs its evaluation history and summary to its W&B run.
  * Local mode (no W&B server configured): W&B's open-source sweep engine (the `sweeps` package) validates the YAML,
    proposes each next trial from the finished ones, and decides hyperband early termination; the same YAML works.

Trials run in this process, as local subprocesses, or as SLURM jobs (submitit); at the end a table of the trials,
best first, is printed and saved to `<sweep dir>/results.md` (and `results.json`).

    python framework/sweep.py --config-filename sweep_config/hopper.yaml --algorithm sac-rlhf --sweep-count 8
    python framework/sweep.py --config-filename sweep_config/pref_ppo_hopper.yaml --algorithm pref-ppo \
        --launcher slurm --max-parallel 4
    # join a W&B sweep:
    python framework/sweep.py --config-filename sweep_config/hopper.yaml --sweep-id abc123 --project-name prefrl
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import netrc
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import yaml

from framework.checkpoint import atomic_write_bytes
from framework.runtime import UsageError, run_cli, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = {"sac-rlhf": "sac_rlhf", "pref-ppo": "pref_ppo", "sac": "sac", "ppo": "ppo"}
"""--algorithm -> the script framework/<name>.py (and module framework.<name>)"""
HISTORY_TAGS = {"final_eval_return": "eval/episodic_return"}
"""summary.json keys whose per-evaluation history is a TensorBoard tag (read while a trial runs, for hyperband)"""
SWEEP_KEYS_FOR_TRIALS = ("runs_dir", "run_name")
"""flags the sweep sets for every trial itself"""


@dataclass
class Args:
    config_filename: str = "sweep_config/hopper.yaml"
    """the sweep definition (W&B sweep YAML)"""
    algorithm: Literal["sac-rlhf", "pref-ppo", "sac", "ppo"] = "sac-rlhf"
    """the script each trial runs"""
    sweep_count: int = 10
    """trials this process runs (the YAML's `run_cap`, when set, caps the whole sweep)"""
    mode: Literal["auto", "wandb", "local"] = "auto"
    """`wandb`: a W&B server runs the sweep; `local`: the `sweeps` engine here; `auto`: W&B if a server is configured"""
    launcher: Literal["inprocess", "local", "slurm"] = "local"
    """where trials run: in this process, as subprocesses, or as SLURM jobs"""
    max_parallel: int = 1
    """trials running at once (local and slurm launchers; W&B mode with slurm: worker jobs)"""
    project_name: str = "prefrl"
    """the W&B project of the sweep"""
    entity: str | None = None
    """the W&B entity (team) of the sweep"""
    sweep_id: str | None = None
    """join this existing W&B sweep instead of creating one"""
    sweep_dir: str | None = None
    """folder for the trials' runs, logs and the results table (default: runs/sweeps/<yaml>__<algorithm>__<time>)"""
    seed: int = 1
    """seed of the local engine's proposals (random and bayes)"""
    poll_seconds: float = 2.0
    """how often running trials are checked (states, history for early termination)"""
    probe_timeout: float = 2.0
    """seconds to wait for the W&B server to answer in `auto` mode"""
    slurm_partition: str | None = os.environ.get("PREFRL_SLURM_PARTITION")
    """SLURM partition (default: $PREFRL_SLURM_PARTITION, else the cluster's default)"""
    slurm_time_min: int = int(os.environ.get("PREFRL_SLURM_TIME_MIN", "240"))
    """time limit of each SLURM job in minutes (default: $PREFRL_SLURM_TIME_MIN or 240)"""
    slurm_cpus: int = 1
    """CPUs per SLURM job"""
    slurm_mem_gb: float = 4.0
    """memory per SLURM job in GB"""
    slurm_mail_user: str | None = os.environ.get("PREFRL_MAIL_USER")
    """address SLURM mails about jobs (default: $PREFRL_MAIL_USER; none: no mail)"""
    slurm_mail_type: str = "FAIL"
    """which events SLURM mails about (sbatch --mail-type)"""


# ---------------------------------------------------------------------------------------------------- the YAML
def shipped_config(name: str) -> str | None:
    """sweep_config/<name> of the checkout this file is in, or the copy installed with the package (a wheel)."""
    beside = os.path.join(ROOT, "sweep_config", name)
    if os.path.isfile(beside):
        return beside
    try:
        from importlib.resources import files

        installed = files("framework.sweep_config") / name
    except ModuleNotFoundError:
        return None
    return str(installed) if installed.is_file() else None


def load_sweep_config(path: str) -> dict:
    """Read and validate a W&B sweep YAML with the `sweeps` engine's schema; problems become `UsageError`s."""
    import jsonschema
    from sweeps import SweepConfig

    if not os.path.isfile(path) and os.path.dirname(path) in ("sweep_config", ""):
        path = shipped_config(os.path.basename(path)) or path
    if not os.path.isfile(path):
        raise UsageError(f"--config-filename {path!r}: no such file (the sweep definitions are in sweep_config/)")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping with method, metric and parameters, got {type(raw).__name__}")
    engine_view = {k: v for k, v in raw.items() if k != "run_cap"}  # enforced here, whatever the schema's version
    try:
        SweepConfig(engine_view)
    except (jsonschema.ValidationError, ValueError) as err:
        first = str(getattr(err, "message", err)).splitlines()[0]
        raise UsageError(f"{path}: {first}") from None
    if "run_cap" in raw and (not isinstance(raw["run_cap"], int) or raw["run_cap"] < 1):
        raise UsageError(f"{path}: run_cap must be a positive integer, got {raw['run_cap']!r}")
    if raw.get("early_terminate") and "metric" not in raw:
        raise UsageError(f"{path}: early_terminate needs a metric to compare trials by")
    return raw


def algorithm_args_type(algorithm: str) -> type:
    """The `Args` dataclass of the script that `--algorithm` names."""
    return importlib.import_module(f"framework.{ALGORITHMS[algorithm]}").Args


def check_parameters(config: dict, algorithm: str, path: str) -> None:
    """Every swept parameter must be a flag of the algorithm's script (snake_case, as in its `Args`)."""
    names = {f.name for f in dataclasses.fields(algorithm_args_type(algorithm))}
    for name, spec in config.get("parameters", {}).items():
        if name in SWEEP_KEYS_FOR_TRIALS:
            raise UsageError(f"{path}: parameter {name!r} is set by the sweep itself for every trial; remove it")
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"{path}: parameter {name!r} is not a flag of framework/{ALGORITHMS[algorithm]}.py{hint}")
        if isinstance(spec, dict) and "parameters" in spec:
            raise UsageError(f"{path}: parameter {name!r}: nested parameters are not supported; use flat flag names")


def trial_flags(params: dict[str, Any]) -> list[str]:
    """`{"total_labels": 500, "surf": True}` -> `["--total-labels", "500", "--surf"]` (tyro's flag spelling)."""
    argv: list[str] = []
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is None:
            argv += [flag, "None"]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


# ---------------------------------------------------------------------------------------------------- a trial's numbers
@dataclass
class Trial:
    """One proposed configuration, where it runs, and what it reached."""

    name: str
    params: dict[str, Any]
    run_dir: str
    state: str = "pending"  # pending, running, finished, failed, stopped, cancelled
    metric: float = math.nan
    history: list[tuple[int, float]] = field(default_factory=list)
    detail: str = ""
    handle: Any = None


def read_summary(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_tensorboard(run_dir: str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar tag of a run (also while it is still being written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(run_dir):
        return []
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, float(e.value)) for e in acc.Scalars(tag)]


def update_metric(trial: Trial, metric: str, live: bool) -> None:
    """Fill the trial's metric and history from its summary.json; before that exists (a running trial, when `live`),
    from its TensorBoard events."""
    summary = read_summary(trial.run_dir)
    if summary is not None and metric in summary:
        trial.metric = float(summary[metric])
        if metric in HISTORY_TAGS:
            trial.history = [(int(s), float(v)) for s, v in summary.get("eval_history", [])]
        return
    if summary is None and not live:
        return
    trial.history = read_tensorboard(trial.run_dir, HISTORY_TAGS.get(metric, metric))
    trial.metric = trial.history[-1][1] if trial.history else math.nan


def to_sweep_run(trial: Trial, metric: str | None):
    """The `sweeps` engine's view of a trial (built with its field aliases so pydantic 2 keeps the data)."""
    from sweeps import RunState, SweepRun

    state = {
        "pending": RunState.running,
        "running": RunState.running,
        "finished": RunState.finished,
        "failed": RunState.failed,
        "stopped": RunState.killed,
        "cancelled": RunState.killed,
    }[trial.state]
    summary = {metric: trial.metric} if metric and not math.isnan(trial.metric) else {}
    history = [{metric: v, "_step": s} for s, v in trial.history] if metric else []
    return SweepRun(
        name=trial.name,
        state=state,
        config={k: {"value": v} for k, v in trial.params.items()},
        summaryMetrics=summary,
        sampledHistory=history,
    )


# ---------------------------------------------------------------------------------------------------- launchers
def run_command(command: list[str], log_path: str, cwd: str) -> int:
    """Run a command with its output in `log_path`; raise if it fails (the body of a SLURM job)."""
    with open(log_path, "ab") as log:
        code = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {code}; see {log_path}")
    return code


class InprocessLauncher:
    """Runs each trial's `main` in this process, one after the other (no early termination)."""

    def __init__(self, algorithm: str):
        self.module = importlib.import_module(f"framework.{ALGORITHMS[algorithm]}")

    def start(self, trial: Trial, argv: list[str], log_path: str) -> None:
        import tyro

        trial.state = "running"
        try:
            run_main(self.module.main, tyro.cli(self.module.Args, args=argv))
            trial.state = "finished"
        except (Exception, SystemExit) as err:  # a failing trial is recorded, the sweep goes on
            trial.state, trial.detail = "failed", f"{type(err).__name__}: {err}"

    def poll(self, trial: Trial) -> str:
        return trial.state

    def stop(self, trial: Trial) -> None:
        pass


class LocalLauncher:
    """Runs each trial as `python framework/<script>.py ...` in a subprocess; stopping sends SIGTERM."""

    def __init__(self, algorithm: str):
        self.script = os.path.join(ROOT, "framework", f"{ALGORITHMS[algorithm]}.py")

    def start(self, trial: Trial, argv: list[str], log_path: str) -> None:
        with open(log_path, "ab") as log:
            trial.handle = subprocess.Popen(
                [sys.executable, self.script, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        trial.state = "running"

    def poll(self, trial: Trial) -> str:
        code = trial.handle.poll()
        if code is None or trial.state != "running":
            return trial.state
        if code != 0:
            trial.detail = f"exit status {code}"
        return "finished" if code == 0 else "failed"

    def stop(self, trial: Trial) -> None:
        trial.handle.send_signal(signal.SIGTERM)
        trial.handle.wait()


SLURM_TERMINAL = {
    "COMPLETED": "finished",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "PREEMPTED": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}


def slurm_state(job) -> str:
    """A submitit job's state as a trial state: running until SLURM reports a terminal one (CANCELLED by 0 ->
    cancelled)."""
    raw = job.state.split()[0].rstrip("+") if job.state else "UNKNOWN"
    return SLURM_TERMINAL.get(raw, "running")


def slurm_executor(
    folder: str,
    name: str,
    time_min: int,
    cpus: int,
    mem_gb: float,
    partition: str | None = None,
    mail_user: str | None = None,
    mail_type: str = "FAIL",
):
    """A submitit executor for SLURM jobs with these limits (mail only when `mail_user` is given)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    extra = {"mail_user": mail_user, "mail_type": mail_type} if mail_user else {}
    executor.update_parameters(
        name=name,
        timeout_min=time_min,
        cpus_per_task=cpus,
        mem_gb=mem_gb,
        slurm_partition=partition,
        slurm_additional_parameters=extra,
    )
    return executor


def sweep_executor(args: Args, folder: str, name: str):
    return slurm_executor(
        folder,
        name,
        args.slurm_time_min,
        args.slurm_cpus,
        args.slurm_mem_gb,
        args.slurm_partition,
        args.slurm_mail_user,
        args.slurm_mail_type,
    )


class SlurmLauncher:
    """Submits each trial as a SLURM job through submitit; stopping cancels the job."""

    def __init__(self, algorithm: str, args: Args, folder: str):
        self.script = os.path.join(ROOT, "framework", f"{ALGORITHMS[algorithm]}.py")
        self.executor = sweep_executor(args, folder, f"sweep-{algorithm}")

    def start(self, trial: Trial, argv: list[str], log_path: str) -> None:
        trial.handle = self.executor.submit(run_command, [sys.executable, self.script, *argv], log_path, ROOT)
        trial.state = "running"
        trial.detail = f"slurm job {trial.handle.job_id}"

    def poll(self, trial: Trial) -> str:
        if trial.state != "running":
            return trial.state
        return slurm_state(trial.handle)

    def stop(self, trial: Trial) -> None:
        trial.handle.cancel(check=False)


def make_launcher(args: Args, sweep_dir: str):
    if args.launcher == "inprocess":
        return InprocessLauncher(args.algorithm)
    if args.launcher == "local":
        return LocalLauncher(args.algorithm)
    return SlurmLauncher(args.algorithm, args, os.path.join(sweep_dir, "slurm"))


# ---------------------------------------------------------------------------------------------------- W&B or local
def wandb_server(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a W&B server is configured and answering, and why not: WANDB_MODE, an API key, an HTTP probe."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={mode}"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    host = urllib.parse.urlparse(base).hostname or base
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return False, f"no W&B API key for {host} (set WANDB_API_KEY or run `wandb login`)"
    try:
        urllib.request.urlopen(base, timeout=timeout)
    except urllib.error.HTTPError:
        pass  # any HTTP answer means a server is there
    except (urllib.error.URLError, OSError) as err:
        return False, f"W&B server {base} did not answer within {timeout:g}s ({getattr(err, 'reason', err)})"
    return True, f"W&B server {base}"


def metric_goal(config: dict) -> tuple[str | None, bool]:
    """(metric name, whether larger is better)."""
    metric = config.get("metric") or {}
    return metric.get("name"), metric.get("goal", "minimize") == "maximize"


def new_trial(index: int, params: dict, sweep_dir: str) -> Trial:
    name = f"trial-{index:03d}"
    return Trial(name, params, os.path.join(sweep_dir, "runs", name))


def trial_argv(trial: Trial, sweep_dir: str) -> list[str]:
    return trial_flags(trial.params) + ["--runs-dir", os.path.join(sweep_dir, "runs"), "--run-name", trial.name]


def run_local_sweep(args: Args, config: dict, sweep_dir: str) -> list[Trial]:
    """Propose, launch, watch and (hyperband) stop trials with the `sweeps` engine until the budget is spent or a grid
    is exhausted."""
    import sweeps

    random.seed(args.seed)
    np.random.seed(args.seed)
    engine_config = sweeps.SweepConfig({k: v for k, v in config.items() if k != "run_cap"})
    metric, _ = metric_goal(config)
    budget = min(args.sweep_count, config.get("run_cap", args.sweep_count))
    launcher = make_launcher(args, sweep_dir)
    trials: list[Trial] = []
    exhausted = False
    early = bool(config.get("early_terminate"))
    if early and args.launcher == "inprocess":
        print("early_terminate needs the local or slurm launcher (trials run to the end in this process)", flush=True)
    while True:
        for t in trials:
            if t.state == "running":
                t.state = launcher.poll(t)
                if metric:
                    update_metric(t, metric, live=early)
                if t.state != "running":
                    print(f"{t.name}: {t.state} {metric}={t.metric:.4g} {t.detail}", flush=True)
        if early and args.launcher != "inprocess":
            running = {t.name: t for t in trials if t.state == "running"}
            for run in sweeps.stop_runs(engine_config, [to_sweep_run(t, metric) for t in trials]):
                if run.name in running:
                    t = running[run.name]
                    launcher.stop(t)
                    t.state, t.detail = "stopped", f"hyperband stop after {len(t.history)} evaluations"
                    print(
                        f"{t.name}: stopped by hyperband ({metric} history {[round(v, 3) for _, v in t.history]})",
                        flush=True,
                    )
        active = sum(t.state == "running" for t in trials)
        while not exhausted and active < args.max_parallel and len(trials) < budget:
            proposal = sweeps.next_run(engine_config, [to_sweep_run(t, metric) for t in trials])
            if proposal is None:  # a grid with every point tried
                exhausted = True
                break
            trial = new_trial(len(trials), {k: v["value"] for k, v in proposal.config.items()}, sweep_dir)
            trials.append(trial)
            os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
            print(f"{trial.name}: {trial.params}", flush=True)
            launcher.start(trial, trial_argv(trial, sweep_dir), os.path.join(sweep_dir, "logs", f"{trial.name}.log"))
            if args.launcher == "inprocess" and metric:
                update_metric(trial, metric, live=False)
                print(f"{trial.name}: {trial.state} {metric}={trial.metric:.4g} {trial.detail}", flush=True)
            active = sum(t.state == "running" for t in trials)
        if active == 0 and (exhausted or len(trials) >= budget):
            return trials
        time.sleep(args.poll_seconds)


def run_wandb_sweep(args: Args, config: dict, sweep_dir: str) -> list[Trial]:
    """Register (or join) the sweep on the W&B server and run trials with `wandb.agent`; with the slurm launcher,
    submit `--max-parallel` SLURM jobs that each run such an agent."""
    import wandb

    sweep_id = args.sweep_id or wandb.sweep(config, project=args.project_name, entity=args.entity)
    print(f"W&B sweep {sweep_id} in project {args.project_name}", flush=True)
    if args.launcher == "slurm":
        return submit_wandb_workers(args, sweep_id, sweep_dir)
    metric, _ = metric_goal(config)
    launcher = LocalLauncher(args.algorithm) if args.launcher == "local" else InprocessLauncher(args.algorithm)
    trials: list[Trial] = []

    def one_trial() -> None:
        run = wandb.init()
        trial = new_trial(len(trials), dict(run.config), sweep_dir)
        trials.append(trial)
        os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
        launcher.start(trial, trial_argv(trial, sweep_dir), os.path.join(sweep_dir, "logs", f"{trial.name}.log"))
        while launcher.poll(trial) == "running":
            time.sleep(args.poll_seconds)
        trial.state = launcher.poll(trial)
        if metric:
            update_metric(trial, metric, live=False)
            for step, value in trial.history:
                run.log({metric: value, "global_step": step})
        run.summary.update(
            {k: v for k, v in (read_summary(trial.run_dir) or {}).items() if isinstance(v, (int, float, str))}
        )
        run.finish(exit_code=0 if trial.state == "finished" else 1)

    wandb.agent(sweep_id, function=one_trial, count=args.sweep_count, project=args.project_name, entity=args.entity)
    return trials


def submit_wandb_workers(args: Args, sweep_id: str, sweep_dir: str) -> list[Trial]:
    """SLURM jobs that each join the W&B sweep and run its trials in-process (slurm/sweep_worker.sbatch does the
    same with sbatch)."""
    executor = sweep_executor(args, os.path.join(sweep_dir, "slurm"), f"sweep-worker-{sweep_id}")
    per_worker = math.ceil(args.sweep_count / args.max_parallel)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--config-filename",
        os.path.abspath(args.config_filename),
        "--algorithm",
        args.algorithm,
        "--mode",
        "wandb",
        "--sweep-id",
        sweep_id,
        "--project-name",
        args.project_name,
        "--launcher",
        "inprocess",
        "--sweep-count",
        str(per_worker),
        "--sweep-dir",
        sweep_dir,
    ]
    if args.entity:
        command += ["--entity", args.entity]
    jobs = [
        executor.submit(run_command, command, os.path.join(sweep_dir, f"worker-{i}.log"), ROOT)
        for i in range(args.max_parallel)
    ]
    print(
        f"submitted W&B sweep workers: {', '.join(j.job_id for j in jobs)}; results are in the W&B sweep page",
        flush=True,
    )
    return []


# ---------------------------------------------------------------------------------------------------- the table
def results_table(trials: list[Trial], metric: str | None, maximize: bool) -> str:
    """A markdown table of the trials, best first (trials without a value last)."""

    def key(t: Trial) -> tuple:
        missing = math.isnan(t.metric)
        return (missing, -t.metric if maximize and not missing else (t.metric if not missing else 0))

    swept = sorted({k for t in trials for k in t.params if len({json.dumps(u.params.get(k)) for u in trials}) > 1})
    header = ["rank", "trial", "state", metric or "metric", *swept, "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, t in enumerate(sorted(trials, key=key), 1):
        value = "" if math.isnan(t.metric) else f"{t.metric:.4g}"
        cells = [str(rank), t.name, t.state, value, *(str(t.params.get(k, "")) for k in swept), t.run_dir]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(trials: list[Trial], config: dict, sweep_dir: str) -> str:
    metric, maximize = metric_goal(config)
    table = results_table(trials, metric, maximize)
    atomic_write_bytes(os.path.join(sweep_dir, "results.md"), (table + "\n").encode())
    rows = [
        {
            "name": t.name,
            "state": t.state,
            "metric": None if math.isnan(t.metric) else t.metric,
            "params": t.params,
            "history": t.history,
            "run_dir": t.run_dir,
            "detail": t.detail,
        }
        for t in trials
    ]
    atomic_write_bytes(
        os.path.join(sweep_dir, "results.json"),
        json.dumps(
            {"metric": metric, "goal": "maximize" if maximize else "minimize", "trials": rows}, indent=2
        ).encode(),
    )
    return table


def main(args: Args) -> list[Trial]:
    if args.sweep_count < 1 or args.max_parallel < 1:
        raise UsageError(
            f"--sweep-count and --max-parallel must be >= 1, got {args.sweep_count} and {args.max_parallel}"
        )
    warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
    config = load_sweep_config(args.config_filename)
    check_parameters(config, args.algorithm, args.config_filename)
    if args.launcher == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise UsageError(
                "--launcher slurm: no `sbatch` on PATH (run on a SLURM login node, or start a local "
                "cluster with slurm/local_cluster.sh up)"
            )
    if args.mode == "auto":
        use_wandb, reason = wandb_server(args.probe_timeout)
    else:
        use_wandb, reason = args.mode == "wandb", f"--mode {args.mode}"
    if args.sweep_id and not use_wandb:
        raise UsageError(f"--sweep-id {args.sweep_id!r} joins a W&B sweep, but no W&B server is usable ({reason})")
    stem = os.path.splitext(os.path.basename(args.config_filename))[0]
    sweep_dir = os.path.abspath(
        args.sweep_dir or os.path.join("runs", "sweeps", f"{stem}__{args.algorithm}__{int(time.time())}")
    )
    os.makedirs(sweep_dir, exist_ok=True)
    print(
        f"sweep mode: {'wandb' if use_wandb else 'local'} ({reason}); launcher: {args.launcher}; folder: {sweep_dir}",
        flush=True,
    )
    trials = run_wandb_sweep(args, config, sweep_dir) if use_wandb else run_local_sweep(args, config, sweep_dir)
    if trials:
        table = save_results(trials, config, sweep_dir)
        print(f"\n{table}\n\nsaved {os.path.join(sweep_dir, 'results.md')}", flush=True)
    return trials


def cli() -> None:
    """The `prefrl-sweep` command."""
    run_cli(Args, main)


if __name__ == "__main__":
    cli()
