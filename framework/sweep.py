r"""Hyperparameter sweeps from W&B sweep YAML: through a W&B server when one is configured, else locally.

The YAML (`sweep_config/*.yaml`) is W&B's sweep format: `method` (grid / random / bayes), `metric` (a key of the
runs' summary.json such as `final_eval_return`, or a TensorBoard tag such as `eval/episodic_return`), `parameters`
(the script's flags in snake_case, each with `value`, `values` or a distribution), optional `early_terminate`
(hyperband) and `run_cap`.

  * W&B mode: `wandb.sweep` registers the sweep (or `--sweep-id` joins one) and `wandb.agent` runs trials; each trial
    logs its evaluation history and summary to its W&B run.
  * Local mode (no W&B server configured): an Optuna study reads the same YAML -- grid -> GridSampler, random ->
    RandomSampler, bayes -> TPE, hyperband -> HyperbandPruner over the evaluations, run_cap, the metric and its goal
    -- and lives in a storage (a SQLite file in the sweep folder by default; a database URL or a journal file with
    --storage), so several processes or SLURM jobs given the same --sweep-dir (or --storage and --study-name) work on
    one sweep at once, each asking the study for its next trial.

Trials run in this process, as local subprocesses, or as SLURM jobs (submitit); at the end a table of the trials,
best first, is printed and saved to `<sweep dir>/results.md` (and `results.json`).

    python framework/sweep.py --config-filename sweep_config/hopper.yaml --algorithm sac-rlhf --sweep-count 8
    python framework/sweep.py --config-filename sweep_config/pref_ppo_hopper.yaml --algorithm pref-ppo \
        --launcher slurm --max-parallel 4
    # a second worker on the same sweep (another terminal, or a SLURM job: slurm/sweep_worker.sbatch):
    python framework/sweep.py --config-filename sweep_config/hopper.yaml --sweep-dir runs/sweeps/hopper
    # join a W&B sweep:
    python framework/sweep.py --config-filename sweep_config/hopper.yaml --sweep-id abc123 --project-name prefrl
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import json
import math
import netrc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from framework.checkpoint import atomic_write_bytes
from framework.runtime import Interrupted, UsageError, run_cli, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = {"sac-rlhf": "sac_rlhf", "pref-ppo": "pref_ppo", "sac": "sac", "ppo": "ppo"}
"""--algorithm -> the script framework/<name>.py (and module framework.<name>)"""
HISTORY_TAGS = {
    "final_eval_return": ("eval/episodic_return", "eval_history"),
    "final_success_rate": ("eval/success_rate", "success_history"),  # Meta-World
}
"""summary.json keys with a per-evaluation history: its TensorBoard tag (read while a trial runs, for hyperband) and
its summary.json key (once the trial has ended)"""
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
    """`wandb`: a W&B server runs the sweep; `local`: an Optuna study here; `auto`: W&B if a server is configured"""
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
    seed: int | None = None
    """seed of the local engine's proposals (grid order, random, bayes); default: a fresh one (give workers of one
    sweep different seeds, or none)"""
    storage: str | None = None
    """local mode: where the Optuna study lives, shared by every worker of the sweep: a database URL
    (`sqlite:///sweep.db`, `postgresql://...`) or `journal:<file>` (Optuna's journal file, for workers on a shared disk
    such as NFS, where SQLite's locking is unsafe); default: `sqlite:///<sweep dir>/study.db`"""
    study_name: str | None = None
    """local mode: the study's name in the storage (default: the sweep folder's name); workers with the same storage
    and study name run one sweep together"""
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


SWEEP_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "name",
    "description",
    "program",
    "command",
    "project",
    "entity",
)
"""the top-level keys of a W&B sweep YAML"""
DISTRIBUTIONS = {
    "constant": {"value"},
    "categorical": {"values"},
    "int_uniform": {"min", "max"},
    "uniform": {"min", "max"},
    "log_uniform_values": {"min", "max"},
    "log_uniform": {"min", "max"},
    "q_uniform": {"min", "max", "q"},
    "q_log_uniform_values": {"min", "max", "q"},
}
"""the W&B distributions the local engine samples, with the keys each needs (W&B's unbounded ones -- normal,
log_normal, beta and their q_ forms, inv_log_uniform -- have no Optuna counterpart and are refused)"""


def one_of(name: str, value: object, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name} {value!r} is not one of {', '.join(choices)}{hint}"


def check_parameter_spec(name: str, spec: object) -> None:
    """One parameter of the YAML in one of W&B's forms: `value`, `values` (optionally `probabilities`), or a
    `distribution` (inferred from `min`/`max` when absent, as W&B does)."""
    if not isinstance(spec, dict):
        raise UsageError(f"parameter {name!r}: expected a mapping (value, values or distribution), got {spec!r}")
    if "parameters" in spec:
        raise UsageError(f"parameter {name!r}: nested parameters are not supported; use flat flag names")
    if "distribution" in spec:
        kind = spec["distribution"]
        if kind not in DISTRIBUTIONS:
            raise UsageError(f"parameter {name!r}: " + one_of("distribution", kind, DISTRIBUTIONS))
        missing = DISTRIBUTIONS[kind] - set(spec)
        if missing:
            raise UsageError(f"parameter {name!r}: distribution {kind} needs {', '.join(sorted(missing))}")
    elif not ({"value", "values"} & set(spec) or {"min", "max"} <= set(spec)):
        raise UsageError(f"parameter {name!r}: give value, values, min and max, or a distribution")
    if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
        raise UsageError(f"parameter {name!r}: values must be a non-empty list, got {spec['values']!r}")
    if "probabilities" in spec:
        raise UsageError(f"parameter {name!r}: probabilities are not supported by the local engine (W&B mode has them)")
    if "min" in spec and "max" in spec:
        low, high = spec["min"], spec["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise UsageError(f"parameter {name!r}: min and max must be numbers with min <= max, got {low!r}, {high!r}")
        if spec.get("distribution") in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
            raise UsageError(f"parameter {name!r}: {spec['distribution']} needs min > 0, got {low!r}")


def load_sweep_config(path: str) -> dict:
    """Read and check a W&B sweep YAML (its keys, method, metric, early termination and parameter forms); problems
    become one-line `UsageError`s naming the file."""
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
    try:
        check_sweep_config(raw)
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None
    return raw


def check_sweep_config(raw: dict) -> None:
    for key in raw:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown key {key!r} (a W&B sweep has {', '.join(SWEEP_KEYS)}){hint}")
    if raw.get("method") not in ("grid", "random", "bayes"):
        raise UsageError(one_of("method", raw.get("method"), ("grid", "random", "bayes")))
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            raise UsageError(f"metric must be a mapping with a name (and goal), got {metric!r}")
        if metric.get("goal", "minimize") not in ("minimize", "maximize"):
            raise UsageError(one_of("metric goal", metric["goal"], ("minimize", "maximize")))
    if raw["method"] == "bayes" and metric is None:
        raise UsageError("method bayes needs a metric to model")
    early = raw.get("early_terminate")
    if early:
        if not isinstance(early, dict) or early.get("type") != "hyperband":
            raise UsageError(f"early_terminate: only type hyperband is supported, got {early!r}")
        if "min_iter" not in early and "max_iter" not in early:
            raise UsageError("early_terminate: hyperband needs min_iter or max_iter")
        for key in ("min_iter", "max_iter", "eta", "s"):
            if key in early and (not isinstance(early[key], int) or early[key] < 1):
                raise UsageError(f"early_terminate: {key} must be a positive integer, got {early[key]!r}")
        if metric is None:
            raise UsageError("early_terminate needs a metric to compare trials by")
    if "run_cap" in raw and (not isinstance(raw["run_cap"], int) or raw["run_cap"] < 1):
        raise UsageError(f"run_cap must be a positive integer, got {raw['run_cap']!r}")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UsageError("parameters must be a mapping of flag names to value, values or a distribution")
    for name, spec in parameters.items():
        check_parameter_spec(name, spec)
    if raw["method"] == "grid":
        for name, spec in parameters.items():
            if "value" not in spec and "values" not in spec and spec.get("distribution") != "int_uniform":
                raise UsageError(f"parameter {name!r}: method grid needs values (or an int_uniform range)")


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
    reported: int = 0  # evaluations already handed to the study


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
            trial.history = [(int(s), float(v)) for s, v in summary.get(HISTORY_TAGS[metric][1], [])]
        return
    if summary is None and not live:
        return
    trial.history = read_tensorboard(trial.run_dir, HISTORY_TAGS.get(metric, (metric,))[0])
    trial.metric = trial.history[-1][1] if trial.history else math.nan


# ---------------------------------------------------------------------------------------------------- the local engine
def parameters(config: dict) -> list[tuple[str, dict]]:
    return list(config["parameters"].items())


def grid_values(spec: dict) -> list:
    """The points a grid visits for one parameter: its values, its one value, or every integer of an int_uniform."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return list(range(spec["min"], spec["max"] + 1))


def choice_key(value: Any) -> Any:
    """Optuna's categorical choices are None, bool, int, float or str: anything else (a list) goes as its JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def suggest(handle, name: str, spec: dict, method: str) -> Any:
    """The value of one YAML parameter for an Optuna trial, with W&B's meaning of each distribution."""
    kind = spec.get("distribution")
    if kind is None:
        if "value" in spec:
            kind = "constant"
        elif "values" in spec:
            kind = "categorical"
        else:
            whole = all(isinstance(spec[k], int) for k in ("min", "max"))
            kind = "int_uniform" if whole else "uniform"
    if kind == "constant":
        return spec["value"]
    if method == "grid" or kind == "categorical":
        values = grid_values(spec)
        keys = [choice_key(v) for v in values]
        return values[keys.index(handle.suggest_categorical(name, keys))]
    low, high = spec["min"], spec["max"]
    if kind == "int_uniform":
        return handle.suggest_int(name, int(low), int(high))
    if kind == "uniform":
        return handle.suggest_float(name, low, high)
    if kind == "log_uniform":  # W&B: min and max are exponents of e
        return handle.suggest_float(name, math.exp(low), math.exp(high), log=True)
    value = handle.suggest_float(name, low, high, log=kind != "q_uniform")
    if kind == "log_uniform_values":
        return value
    q = spec["q"]  # q_uniform, q_log_uniform_values: round(X / q) * q, as W&B
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) and isinstance(low, int) else rounded


def grid_size(config: dict) -> int:
    return math.prod(len(grid_values(spec)) for _, spec in parameters(config) if "value" not in spec)


def sweep_cap(config: dict) -> int | None:
    """The whole sweep's trial count limit: run_cap, and for a grid its number of points."""
    caps = [config["run_cap"]] if "run_cap" in config else []
    if config["method"] == "grid":
        caps.append(grid_size(config))
    return min(caps) if caps else None


def make_sampler(config: dict, seed: int | None):
    """grid -> GridSampler (trial k takes grid point k, so workers never repeat a point), random -> RandomSampler,
    bayes -> TPE."""
    import optuna

    method = config["method"]
    if method == "grid":

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                pass  # it would call study.stop(), which only works inside study.optimize; the cap stops the grid

        space = {
            name: [choice_key(v) for v in grid_values(spec)] for name, spec in parameters(config) if "value" not in spec
        }
        return Grid(space, seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def evaluations_per_run(config: dict, algorithm: str) -> int | None:
    """How many evaluations a trial makes (total_timesteps // eval_frequency), when neither is swept."""
    defaults = {f.name: f.default for f in dataclasses.fields(algorithm_args_type(algorithm))}
    values = {}
    for name in ("total_timesteps", "eval_frequency"):
        spec = config["parameters"].get(name, {"value": defaults.get(name)})
        if "value" not in spec or not isinstance(spec["value"], int) or spec["value"] <= 0:
            return None
        values[name] = spec["value"]
    return values["total_timesteps"] // values["eval_frequency"]


def make_pruner(config: dict, algorithm: str):
    """early_terminate hyperband -> HyperbandPruner over the evaluations: min_iter (or max_iter / eta^s) is the
    first rung, eta the reduction factor, max_iter (else the evaluations a trial makes) the last."""
    import optuna

    early = config.get("early_terminate")
    if not early:
        return optuna.pruners.NopPruner()
    eta = early.get("eta", 3)
    top = early.get("max_iter") or evaluations_per_run(config, algorithm)
    low = early.get("min_iter") or max(1, early["max_iter"] // eta ** early.get("s", 0))
    return optuna.pruners.HyperbandPruner(
        min_resource=low, max_resource=max(top, low) if top else "auto", reduction_factor=eta
    )


def study_storage(spec: str):
    """`journal:<file>` -> Optuna's journal file (safe on a shared disk, e.g. NFS, for many workers); a database URL
    (`sqlite:///<file>`, `postgresql://...`, `mysql://...`) -> a relational storage."""
    import optuna

    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = os.path.abspath(spec[len("journal:") :])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in spec:
        raise UsageError(
            f"--storage {spec!r}: give a database URL (sqlite:///sweep.db, postgresql://...) or journal:<file>"
        )
    if spec.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(spec[len("sqlite:///") :])), exist_ok=True)
    kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}  # workers wait for the lock
    try:
        return optuna.storages.RDBStorage(spec, engine_kwargs=kwargs)
    except Exception as err:  # a missing driver, an unreachable server, a bad URL
        raise UsageError(f"--storage {spec!r}: {str(err).splitlines()[0]}") from None


@contextlib.contextmanager
def first_use_lock(spec: str) -> Iterator[None]:
    """For a SQLite file: one worker at a time creates its tables and the study (two at once fail with "table
    studies already exists"); other storages guard this themselves."""
    if not spec.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = os.path.abspath(spec[len("sqlite:///") :])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_study(args: Args, config: dict, sweep_dir: str):
    """Create the sweep's study, or join it when another worker already has (same storage and study name); joining
    with another sweep definition or algorithm is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, maximize = metric_goal(config)
    spec = args.storage or f"sqlite:///{os.path.join(sweep_dir, 'study.db')}"
    name = args.study_name or os.path.basename(sweep_dir)
    with first_use_lock(spec):
        study = optuna.create_study(
            storage=study_storage(spec),
            study_name=name,
            direction="maximize" if maximize else "minimize",
            sampler=make_sampler(config, args.seed),
            pruner=make_pruner(config, args.algorithm),
            load_if_exists=True,
        )
    definition = json.loads(json.dumps({"config": config, "algorithm": args.algorithm}))  # one attribute: atomic
    saved = study.user_attrs.get("definition")
    if saved is None:
        study.set_user_attr("definition", definition)
    elif saved != definition:
        raise UsageError(
            f"study {name!r} in {args.storage or sweep_dir} was started with another sweep definition or algorithm; "
            "give this one its own --sweep-dir or --study-name"
        )
    print(f"study {name!r} ({len(study.trials)} trials so far)", flush=True)
    return study


def study_size(study) -> int:
    return len(study.get_trials(deepcopy=False))


def study_trials(study) -> list[Trial]:
    """Every trial of the study (from all its workers) as a `Trial`, leaving out those asked past the cap."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "discarded" in attrs or "run_dir" not in attrs:
            continue
        state = attrs.get("sweep_state") or ("running" if t.state.name == "RUNNING" else "failed")
        history = [(int(s), float(v)) for s, v in attrs.get("history", [])]
        metric = history[-1][1] if history else math.nan
        if t.value is not None and study.user_attrs.get("definition", {}).get("config", {}).get("metric"):
            metric = t.value
        trials.append(
            Trial(
                f"trial-{t.number:03d}",
                attrs["params"],
                attrs["run_dir"],
                state,
                metric,
                history,
                attrs.get("detail", ""),
            )
        )
    return trials


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
                [sys.executable, self.script, *argv], cwd=os.getcwd(), stdout=log, stderr=subprocess.STDOUT
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
        trial.handle = self.executor.submit(run_command, [sys.executable, self.script, *argv], log_path, os.getcwd())
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
    """Ask the Optuna study for trials, launch and watch them, report their evaluations to the pruner (hyperband) and
    tell the study how each ended, until this worker's --sweep-count, the sweep's run_cap or the grid is used up.
    Returns every trial of the study (other workers' too)."""
    import optuna

    study = open_study(args, config, sweep_dir)
    metric, _ = metric_goal(config)
    cap = sweep_cap(config)
    launcher = make_launcher(args, sweep_dir)
    early = bool(config.get("early_terminate"))
    if early and args.launcher == "inprocess":
        print("early_terminate needs the local or slurm launcher (trials run to the end in this process)", flush=True)
    running: list[tuple[Trial, optuna.Trial]] = []
    started = 0
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        while True:
            for trial, handle in list(running):
                trial.state = launcher.poll(trial)
                if metric:
                    update_metric(trial, metric, live=early)
                    report_history(handle, trial)
                if trial.state == "running" and early and handle.should_prune():
                    launcher.stop(trial)
                    trial.state, trial.detail = "stopped", f"hyperband stop after {len(trial.history)} evaluations"
                    print(f"{trial.name}: stopped by hyperband ({metric} {[round(v, 3) for _, v in trial.history]})")
                if trial.state != "running":
                    finish(study, handle, trial, metric)
                    running.remove((trial, handle))
            while started < args.sweep_count and len(running) < args.max_parallel:
                if cap is not None and study_size(study) >= cap:
                    break
                handle = study.ask()
                if cap is not None and handle.number >= cap:  # another worker took the last place meanwhile
                    handle.set_user_attr("discarded", "the sweep's run_cap or grid was already reached")
                    study.tell(handle, state=optuna.trial.TrialState.FAIL)
                    break
                params = {name: suggest(handle, name, spec, config["method"]) for name, spec in parameters(config)}
                trial = new_trial(handle.number, params, sweep_dir)
                for key, value in {"params": params, "run_dir": trial.run_dir, "worker": worker}.items():
                    handle.set_user_attr(key, value)
                started += 1
                os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
                print(f"{trial.name}: {params}", flush=True)
                launcher.start(
                    trial, trial_argv(trial, sweep_dir), os.path.join(sweep_dir, "logs", f"{trial.name}.log")
                )
                running.append((trial, handle))
                if args.launcher == "inprocess":
                    break  # it has already run: report it before asking again
            if not running:
                break
            if args.launcher != "inprocess":
                time.sleep(args.poll_seconds)
    except (KeyboardInterrupt, Interrupted):
        for trial, handle in running:  # no trial is left RUNNING in the study for other workers to wait on
            if trial.state == "running":
                launcher.stop(trial)
            trial.state, trial.detail = "cancelled", "the sweep worker was interrupted"
            finish(study, handle, trial, metric)
        save_results(study_trials(study), config, sweep_dir)
        print(f"interrupted; the sweep so far is in {os.path.join(sweep_dir, 'results.md')}", flush=True)
        raise
    return study_trials(study)


def report_history(handle, trial: Trial) -> None:
    """Hand the trial's evaluations to the study as intermediate values, step = the evaluation's number (1, 2, ...:
    hyperband's min_iter counts evaluations)."""
    for index, (_, value) in enumerate(trial.history[trial.reported :], trial.reported + 1):
        if math.isfinite(value):
            handle.report(value, step=index)
    trial.reported = len(trial.history)


def finish(study, handle, trial: Trial, metric: str | None) -> None:
    """Tell the study how a trial ended: complete with its metric, pruned (hyperband), or failed."""
    from optuna.trial import TrialState

    handle.set_user_attr("history", trial.history)
    handle.set_user_attr("detail", trial.detail)
    handle.set_user_attr("sweep_state", trial.state)
    if trial.state == "finished" and (metric is None or math.isfinite(trial.metric)):
        study.tell(handle, 0.0 if metric is None else trial.metric)
    elif trial.state == "stopped":
        study.tell(handle, state=TrialState.PRUNED)
    else:
        if trial.state == "finished":
            trial.state, trial.detail = "failed", f"finished without {metric} in its summary.json or TensorBoard log"
            handle.set_user_attr("sweep_state", trial.state)
            handle.set_user_attr("detail", trial.detail)
        study.tell(handle, state=TrialState.FAIL)
    print(f"{trial.name}: {trial.state} {metric}={trial.metric:.4g} {trial.detail}", flush=True)


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
        executor.submit(run_command, command, os.path.join(sweep_dir, f"worker-{i}.log"), os.getcwd())
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
