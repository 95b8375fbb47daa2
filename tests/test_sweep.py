"""sweep.py: local sweeps from W&B YAML on an Optuna study (grid, random, bayes, hyperband, run_cap), several workers
on one study (processes and SLURM jobs), W&B-server detection, SLURM trials, bad input."""

from __future__ import annotations

import http.server
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import ROOT, run_script
from framework import sweep
from framework.sweep import load_sweep_config, wandb_server

# sac.py for 300 steps on InvertedPendulum-v5: a few seconds per trial
TINY_SAC = {
    "env_id": {"value": "InvertedPendulum-v5"},
    "total_timesteps": {"value": 300},
    "learning_starts": {"value": 100},
    "eval_frequency": {"value": 150},
    "eval_episodes": {"value": 2},
    "hidden_size": {"value": 32},
    "torch_threads": {"value": 1},
    "cuda": {"value": False},
}


def write_yaml(path, method: str, parameters: dict, **extra) -> str:
    config = {
        "method": method,
        "metric": {"name": "final_eval_return", "goal": "maximize"},
        "parameters": {**TINY_SAC, **parameters},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def results(sweep_dir) -> dict:
    return json.loads((sweep_dir / "results.json").read_text())


def table_rows(sweep_dir) -> list[list[str]]:
    lines = (sweep_dir / "results.md").read_text().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_grid_sweep_in_process_without_wandb_server(tmp_path, monkeypatch):
    config = write_yaml(tmp_path / "grid.yaml", "grid", {"seed": {"values": [1, 2]}, "gamma": {"values": [0.9, 0.99]}})
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run_script(
        "sweep.py",
        "--config-filename",
        config,
        "--algorithm",
        "sac",
        "--launcher",
        "inprocess",
        "--sweep-count",
        "10",
        "--sweep-dir",
        str(tmp_path / "sweep"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep mode: local (no W&B API key" in result.stdout
    out = results(tmp_path / "sweep")
    # the grid is exhausted after its 4 points although --sweep-count allows 10
    assert sorted((t["params"]["seed"], t["params"]["gamma"]) for t in out["trials"]) == [
        (1, 0.9),
        (1, 0.99),
        (2, 0.9),
        (2, 0.99),
    ]
    assert all(t["state"] == "finished" for t in out["trials"])
    for t in out["trials"]:  # each trial's metric is its run's final evaluation return
        summary = json.loads((tmp_path / "sweep" / "runs" / t["name"] / "summary.json").read_text())
        assert t["metric"] == summary["final_eval_return"] and summary["total_timesteps"] == 300
        assert [s for s, _ in t["history"]] == [150, 300]
    rows = table_rows(tmp_path / "sweep")
    values = [float(r[3]) for r in rows]
    assert values == sorted(values, reverse=True) and len(rows) == 4
    assert rows[0][:3] == ["1", max(out["trials"], key=lambda t: t["metric"])["name"], "finished"]


def test_random_sweep_as_subprocesses_respects_run_cap(tmp_path):
    config = write_yaml(
        tmp_path / "random.yaml",
        "random",
        {"gamma": {"distribution": "uniform", "min": 0.8, "max": 0.99}, "batch_size": {"values": [32, 64]}},
        run_cap=2,
    )
    result = run_script(
        "sweep.py",
        "--config-filename",
        config,
        "--algorithm",
        "sac",
        "--launcher",
        "local",
        "--sweep-count",
        "5",
        "--sweep-dir",
        str(tmp_path / "sweep"),
        "--poll-seconds",
        "0.5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = results(tmp_path / "sweep")
    assert len(out["trials"]) == 2  # run_cap wins over --sweep-count
    for t in out["trials"]:
        assert t["state"] == "finished" and not math.isnan(t["metric"])
        assert 0.8 <= t["params"]["gamma"] <= 0.99 and t["params"]["batch_size"] in (32, 64)
        assert (tmp_path / "sweep" / "logs" / f"{t['name']}.log").read_text().count("eval_return=") == 2


def study_of(sweep_dir, storage: str | None = None):
    import optuna

    storage = storage or f"sqlite:///{sweep_dir / 'study.db'}"
    if storage.startswith("journal:"):
        storage = sweep.study_storage(storage)
    return optuna.load_study(study_name=os.path.basename(sweep_dir), storage=storage)


def test_bayes_is_tpe_and_homes_in_on_the_optimum():
    """bayes -> TPE over W&B's distributions: proposals stay in bounds and types, and after its random start the
    model's proposals sit closer to the optimum of a made-up objective than random ones do."""
    import optuna

    config = {
        "method": "bayes",
        "metric": {"name": "final_eval_return", "goal": "maximize"},
        "parameters": {
            "gamma": {"distribution": "uniform", "min": 0.9, "max": 0.99},
            "batch_size": {"distribution": "int_uniform", "min": 16, "max": 128},
            "policy_lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "hidden_size": {"values": [64, 256]},
        },
    }
    sweep.check_sweep_config(config)
    sampler = sweep.make_sampler(config, seed=3)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distances = []
    for _ in range(40):
        trial = study.ask()
        p = {name: sweep.suggest(trial, name, spec, "bayes") for name, spec in sweep.parameters(config)}
        assert 0.9 <= p["gamma"] <= 0.99 and 16 <= p["batch_size"] <= 128 and 1e-4 <= p["policy_lr"] <= 1e-2
        assert isinstance(p["batch_size"], int) and p["hidden_size"] in (64, 256)
        distances.append(abs(p["gamma"] - 0.95) / 0.09 + abs(math.log10(p["policy_lr"]) + 3) / 2)
        study.tell(trial, -distances[-1])
    random_start, modelled = sum(distances[:10]) / 10, sum(distances[-15:]) / 15
    assert modelled < 0.6 * random_start, (random_start, modelled)


def test_distributions_keep_their_wandb_meaning():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    specs = {
        "a": {"distribution": "q_uniform", "min": 0, "max": 100, "q": 10},
        "b": {"distribution": "log_uniform", "min": -2, "max": 0},  # exponents of e
        "c": {"values": [[64, 64], [256, 256]]},  # lists are fine as choices
        "d": {"min": 1, "max": 4},  # ints without a distribution: int_uniform, as W&B infers
        "e": {"min": 0.5, "max": 1.0},
        "f": {"distribution": "constant", "value": "x"},
    }
    for _ in range(30):
        trial = study.ask()
        p = {name: sweep.suggest(trial, name, spec, "random") for name, spec in specs.items()}
        assert p["a"] % 10 == 0 and isinstance(p["a"], int) and 0 <= p["a"] <= 100
        assert math.exp(-2) <= p["b"] <= 1.0 and p["c"] in ([64, 64], [256, 256])
        assert isinstance(p["d"], int) and 1 <= p["d"] <= 4 and isinstance(p["e"], float) and p["f"] == "x"
        study.tell(trial, 0.0)


class ScriptedLauncher:
    """Trials whose evaluations appear one per poll, from a script of histories (no training): the sweep loop, the
    pruner and the study are the real ones."""

    def __init__(self, histories: list[list[float]]):
        self.histories, self.stopped = histories, []

    def start(self, trial, argv, log_path):
        trial.handle = {"script": self.histories[int(trial.name.split("-")[1])], "shown": 0}
        trial.state = "running"

    def poll(self, trial):
        if trial.state != "running":
            return trial.state
        trial.handle["shown"] += 1
        return "finished" if trial.handle["shown"] >= len(trial.handle["script"]) else "running"

    def stop(self, trial):
        self.stopped.append(trial.name)


def test_hyperband_prunes_the_lagging_trial_and_the_study_records_it(tmp_path, monkeypatch):
    config = {
        "method": "random",
        "metric": {"name": "final_eval_return", "goal": "maximize"},
        # min_iter 2, eta 2 and 3 evaluations per trial: one bracket, a cut after the 2nd evaluation
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {**TINY_SAC, "total_timesteps": {"value": 300}, "eval_frequency": {"value": 100}},
    }
    sweep.check_sweep_config(config)
    launcher = ScriptedLauncher([[10, 50, 90], [1, 2, 3], [20, 60, 95]])

    def scripted_metric(trial, metric, live):
        trial.history = [
            (100 * (i + 1), float(v)) for i, v in enumerate(trial.handle["script"][: trial.handle["shown"]])
        ]
        trial.metric = trial.history[-1][1] if trial.history else math.nan

    monkeypatch.setattr(sweep, "make_launcher", lambda args, sweep_dir: launcher)
    monkeypatch.setattr(sweep, "update_metric", scripted_metric)
    args = sweep.Args(algorithm="sac", sweep_count=3, poll_seconds=0.0, seed=0)
    trials = sweep.run_local_sweep(args, config, str(tmp_path / "sweep"))
    assert launcher.stopped == ["trial-001"]
    assert [(t.name, t.state, t.metric) for t in trials] == [
        ("trial-000", "finished", 90.0),
        ("trial-001", "stopped", 2.0),
        ("trial-002", "finished", 95.0),
    ]
    study = study_of(tmp_path / "sweep")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study.trials[1].intermediate_values == {1: 1.0, 2: 2.0}  # step = the evaluation's number
    assert study.best_trial.number == 2 and study.best_value == 95.0


HISTORIES = [
    ("final_eval_return", "eval/episodic_return", "eval_history"),
    ("final_success_rate", "eval/success_rate", "success_history"),
]


@pytest.mark.parametrize("metric, tag, key", HISTORIES)
def test_hyperband_follows_the_metrics_own_history(tmp_path, metric, tag, key):
    """While a trial runs its evaluations come from TensorBoard, once it ended from summary.json: the return's, or
    Meta-World's success rate's when that is the metric."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "trial"
    writer = SummaryWriter(str(run_dir))
    for step, value in ((100, 0.2), (200, 0.6)):
        writer.add_scalar(tag, value, step)
        writer.add_scalar("eval/other", 9.0, step)
    writer.close()
    trial = sweep.Trial("trial-000", {}, str(run_dir))
    sweep.update_metric(trial, metric, live=True)
    assert trial.history == [(100, pytest.approx(0.2)), (200, pytest.approx(0.6))] and trial.metric == pytest.approx(
        0.6
    )
    (run_dir / "summary.json").write_text(json.dumps({metric: 0.7, key: [[100, 0.2], [200, 0.6], [300, 0.7]]}))
    sweep.update_metric(trial, metric, live=True)
    assert trial.history == [(100, 0.2), (200, 0.6), (300, 0.7)] and trial.metric == 0.7


def sweep_command(config: str, sweep_dir, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "framework" / "sweep.py"),
        "--config-filename",
        config,
        "--algorithm",
        "sac",
        "--mode",
        "local",
        "--sweep-dir",
        str(sweep_dir),
        "--poll-seconds",
        "0.3",
        *extra,
    ]


def test_two_local_workers_share_one_sweep(tmp_path):
    """Two processes on the same sweep folder ask one SQLite study for trials: together they run exactly run_cap
    trials, none twice, each with its own run folder, and either one's table lists them all."""
    config = write_yaml(
        tmp_path / "random.yaml",
        "random",
        {"gamma": {"min": 0.8, "max": 0.99}, "seed": {"values": [1, 2, 3]}},
        run_cap=6,
    )
    workers = [
        subprocess.Popen(
            sweep_command(config, tmp_path / "sweep", "--launcher", "local", "--sweep-count", "6"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = study_of(tmp_path / "sweep")
    assert [t.number for t in study.trials] == list(range(6)) and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both worked on it
    assert len({(t.params["gamma"], t.params["seed"]) for t in study.trials}) == 6
    for t in study.trials:  # the study's value is the run's own final evaluation return
        summary = json.loads((tmp_path / "sweep" / "runs" / f"trial-{t.number:03d}" / "summary.json").read_text())
        assert t.value == summary["final_eval_return"] and t.user_attrs["params"]["gamma"] == t.params["gamma"]
    assert sum(out.count(": finished final_eval_return=") for out in outputs) == 6
    rows = table_rows(tmp_path / "sweep")
    assert sorted(r[1] for r in rows) == [f"trial-{i:03d}" for i in range(6)]
    # a worker started after the cap is reached runs nothing and reports the whole sweep
    again = subprocess.run(
        sweep_command(config, tmp_path / "sweep"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "(6 trials so far)" in again.stdout and "trial-006" not in again.stdout


def test_an_interrupted_worker_leaves_no_trial_running_and_the_sweep_goes_on(tmp_path):
    """SIGTERM to a worker mid-trial: its trial is stopped and recorded as failed (not left RUNNING for other workers
    to wait on), the worker exits 130, and the next worker continues the sweep up to run_cap."""
    config = write_yaml(
        tmp_path / "random.yaml", "random", {"gamma": {"min": 0.8, "max": 0.99}, "total_timesteps": {"value": 20000}}
    )
    worker = subprocess.Popen(
        sweep_command(config, tmp_path / "sweep", "--launcher", "local", "--sweep-count", "1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = tmp_path / "sweep" / "logs" / "trial-000.log"
    deadline = time.time() + 60
    while not (log.exists() and "step=300 eval_return" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    worker.terminate()
    out = worker.communicate(timeout=60)[0]
    assert worker.returncode == 130, out
    assert "trial-000: cancelled" in out
    study = study_of(tmp_path / "sweep")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert study.trials[0].user_attrs["detail"] == "the sweep worker was interrupted"
    assert [r[1:3] for r in table_rows(tmp_path / "sweep")] == [["trial-000", "cancelled"]]  # the table so far
    assert (tmp_path / "sweep" / "runs" / "trial-000" / "checkpoint.pt").is_file()  # the trial itself saved on SIGTERM
    short = write_yaml(tmp_path / "random.yaml", "random", {"gamma": {"min": 0.8, "max": 0.99}})
    mismatch = subprocess.run(
        sweep_command(short, tmp_path / "sweep"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert mismatch.returncode == 2 and "was started with another sweep definition" in mismatch.stderr
    config = write_yaml(
        tmp_path / "random.yaml", "random", {"gamma": {"min": 0.8, "max": 0.99}, "total_timesteps": {"value": 300}}
    )
    again = subprocess.run(
        sweep_command(config, tmp_path / "sweep", "--study-name", "second", "--sweep-count", "1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "study 'second' (0 trials so far)" in again.stdout


def test_slurm_workers_share_one_sweep_through_a_journal_file(slurm_cluster, tmp_path):
    """slurm/sweep_worker.sbatch as an array of two: both tasks ask the same Optuna study (a journal file on the shared
    disk), run their trials in the job, and together stop at run_cap."""
    config = write_yaml(
        tmp_path / "random.yaml", "random", {"gamma": {"min": 0.8, "max": 0.99}, "seed": {"values": [1, 2]}}, run_cap=4
    )
    env = {**os.environ, "PREFRL_ROOT": str(ROOT), "PREFRL_PYTHON": sys.executable}
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=1-2",
            f"--output={tmp_path}/%A_%a.out",
            str(ROOT / "slurm" / "sweep_worker.sbatch"),
            *sweep_command(config, sweep_dir, "--sweep-count", "4", "--storage", f"journal:{sweep_dir}/study.journal")[
                2:
            ],
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    from slurm_cluster import wait_for_states

    job = out.stdout.strip().split(";")[0]
    states = wait_for_states([f"{job}_1", f"{job}_2"], timeout=240)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    study = study_of(sweep_dir, f"journal:{sweep_dir}/study.journal")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials), [t.state for t in study.trials]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2, logs[-3000:]
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4
    assert logs.count(": finished final_eval_return=") == 4


def test_wandb_detection_picks_local_mode_quickly(tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_server() == (False, "no W&B API key for api.wandb.ai (set WANDB_API_KEY or run `wandb login`)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_server()[1] == "WANDB_MODE=offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    available, reason = wandb_server(timeout=1.0)
    assert not available and "did not answer" in reason and time.perf_counter() - start < 3

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        assert wandb_server(timeout=1.0) == (True, f"W&B server http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_key", "unknown key 'iterations' (a W&B sweep has method, metric, parameters"),
        ("bad_method", "method 'annealing' is not one of grid, random, bayes"),
        ("unbounded", "parameter 'reward_lr': distribution 'normal' is not one of constant, categorical"),
        ("bad_range", "parameter 'reward_lr': min and max must be numbers with min <= max, got 0.1, 0.001"),
        ("grid_range", "parameter 'reward_lr': method grid needs values (or an int_uniform range)"),
        ("bad_goal", "metric goal 'maximise' is not one of minimize, maximize; did you mean 'maximize'?"),
        (
            "unknown_parameter",
            "parameter 'total_label' is not a flag of framework/sac_rlhf.py; did you mean 'total_labels'",
        ),
        ("missing_file", "no such file"),
        ("bad_storage", "--storage 'study.db': give a database URL (sqlite:///sweep.db, postgresql://...)"),
        ("unreachable_storage", "--storage 'postgresql://nobody@127.0.0.1:9/x': "),
    ],
)
def test_bad_input_is_one_line(tmp_path, case, expected):
    base = {
        "method": "random",
        "metric": {"name": "final_eval_return", "goal": "maximize"},
        "parameters": {"total_labels": {"values": [100, 200]}},
    }
    storage = []
    if case == "unknown_key":
        base["iterations"] = 3
    elif case == "bad_method":
        base["method"] = "annealing"
    elif case == "unbounded":
        base["parameters"]["reward_lr"] = {"distribution": "normal", "mu": 0.001, "sigma": 0.001}
    elif case in ("bad_range", "grid_range"):
        base["parameters"]["reward_lr"] = (
            {"min": 0.1, "max": 0.001} if case == "bad_range" else {"min": 1e-3, "max": 0.1}
        )
        base["method"] = "grid" if case == "grid_range" else "random"
    elif case == "bad_goal":
        base["metric"]["goal"] = "maximise"
    elif case == "unknown_parameter":
        base["parameters"]["total_label"] = {"value": 5}
    elif case == "bad_storage":
        storage = ["--storage", "study.db"]
    elif case == "unreachable_storage":
        storage = ["--storage", "postgresql://nobody@127.0.0.1:9/x"]
    path = tmp_path / "sweep.yaml"
    if case != "missing_file":
        path.write_text(yaml.safe_dump(base))
    result = run_script(
        "sweep.py",
        "--config-filename",
        str(path),
        "--algorithm",
        "sac-rlhf",
        "--mode",
        "local",
        "--sweep-dir",
        str(tmp_path / "sweep"),
        *storage,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


def test_shipped_configs_are_valid_for_their_algorithm():
    from framework.sweep import check_parameters

    paths = sorted((ROOT / "sweep_config").glob("*.yaml"))
    assert len(paths) >= 14
    for path in paths:
        config = load_sweep_config(str(path))
        algorithms = ["pref-ppo"] if path.name.startswith("pref_ppo") else ["sac-rlhf"]
        if path.name == "hopper.yaml":
            algorithms = ["sac-rlhf", "pref-ppo"]
        for algorithm in algorithms:
            check_parameters(config, algorithm, str(path))
    for env in ["hopper", "walker2d", "halfcheetah", "ant", "swimmer", "reacher", "pusher", "invertedpendulum"]:
        assert (ROOT / "sweep_config" / f"sac_rlhf_{env}.yaml").is_file()


def test_sweep_trials_run_as_slurm_jobs(slurm_cluster, tmp_path):
    config = write_yaml(tmp_path / "grid.yaml", "grid", {"seed": {"values": [1, 2]}})
    result = run_script(
        "sweep.py",
        "--config-filename",
        config,
        "--algorithm",
        "sac",
        "--launcher",
        "slurm",
        "--max-parallel",
        "2",
        "--sweep-dir",
        str(tmp_path / "sweep"),
        "--poll-seconds",
        "0.5",
        "--slurm-time-min",
        "10",
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = results(tmp_path / "sweep")
    assert sorted(t["params"]["seed"] for t in out["trials"]) == [1, 2]
    assert all(t["state"] == "finished" and t["detail"].startswith("slurm job ") for t in out["trials"])
    assert len({t["detail"] for t in out["trials"]}) == 2  # two different jobs
    rows = table_rows(tmp_path / "sweep")
    assert [r[1] for r in rows] == [t["name"] for t in sorted(out["trials"], key=lambda t: -t["metric"])]
    assert "| rank | trial | state | final_eval_return | seed | run |" in result.stdout


def test_the_gallery_script_passes_existing_flags():
    """scripts/gallery.sh (the README's GIFs): each training it runs parses, and the teacher reward it names loads."""
    import shlex

    import tyro

    from framework import sac, sac_rlhf
    from framework.teacher import load_reward_function

    env = {**os.environ, "GALLERY_DRY_RUN": "1"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gallery.sh")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert len(commands) == 5
    for words in commands:
        module = {"framework/sac_rlhf.py": sac_rlhf, "framework/sac.py": sac}[words[0]]
        args = tyro.cli(module.Args, args=words[1:])
        if getattr(args, "teacher_reward", None):
            load_reward_function(args.teacher_reward)(qvel=[0.5, 0.0])


def test_launch_scripts_pass_existing_flags():
    """Every scripts/*.sh passes only flags its training script has; the human launchers really ask a person."""
    import shlex

    import tyro

    from framework import ppo, pref_ppo, sac, sac_rlhf

    scripts = sorted(p for p in (ROOT / "scripts").glob("*.sh") if p.name != "gallery.sh")
    for env in ["hopper", "walker2d", "halfcheetah", "ant", "swimmer", "reacher", "pusher", "invertedpendulum"]:
        assert {f"{env}_synthetic.sh", f"{env}_human.sh"} <= {p.name for p in scripts}
    for path in scripts:
        text = path.read_text().replace("\\\n", " ")
        extra: list[str] = []
        if path.name.endswith("_human.sh"):  # the synthetic launcher's flags plus the human teacher's
            command = next(line for line in text.splitlines() if line.startswith("exec "))
            words = shlex.split(command)
            assert words[1] == f"$(dirname $0)/{path.name.replace('_human', '_synthetic')}", command
            extra = words[2:-1]
            assert extra == ["--teacher-feedback-mode", "human", "--feedback-server-autostart"]
            text = (path.parent / path.name.replace("_human", "_synthetic")).read_text().replace("\\\n", " ")
        command = next(line for line in text.splitlines() if line.startswith('exec "$PY"'))
        words = shlex.split(command)[2:-1]  # after `exec "$PY"`, before "$@"
        trainers = {"sac_rlhf": sac_rlhf, "pref_ppo": pref_ppo, "sac": sac, "ppo": ppo}
        module = trainers[words[0].removeprefix("framework/").removesuffix(".py")]
        flags = words[1:] + extra
        args = tyro.cli(module.Args, args=flags)
        human = getattr(args, "teacher_feedback_mode", None) == "human" and args.feedback_server_autostart
        assert human == bool(extra), path.name
        task = re.sub(r"-v\d+$", "", args.env_id.split("/")[-1].lower()).replace("-", "")  # dm_control/walker-walk-v0
        assert task in path.name.replace("_", ""), path.name
