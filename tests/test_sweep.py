"""sweep.py: local sweeps from W&B YAML (grid, random, bayes, hyperband), W&B-server detection, SLURM trials,
bad input."""

from __future__ import annotations

import http.server
import json
import math
import os
import subprocess
import threading
import time

import pytest
import yaml

from conftest import ROOT, run_script
from framework.sweep import Trial, load_sweep_config, to_sweep_run, wandb_server

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


def test_bayes_proposes_within_bounds_and_learns_from_summaries(tmp_path):
    import sweeps

    config = load_sweep_config(
        write_yaml(
            tmp_path / "bayes.yaml",
            "bayes",
            {
                "gamma": {"distribution": "uniform", "min": 0.9, "max": 0.99},
                "batch_size": {"distribution": "int_uniform", "min": 16, "max": 128},
                "policy_lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            },
        )
    )
    engine = sweeps.SweepConfig(config)
    trials: list[Trial] = []
    for i in range(6):
        proposal = sweeps.next_run(engine, [to_sweep_run(t, "final_eval_return") for t in trials])
        params = {k: v["value"] for k, v in proposal.config.items()}
        assert 0.9 <= params["gamma"] <= 0.99 and 16 <= params["batch_size"] <= 128
        assert isinstance(params["batch_size"], int) and 1e-4 <= params["policy_lr"] <= 1e-2
        # a made-up objective: the engine must see it (summaries survive the conversion to its runs)
        trials.append(Trial(f"t{i}", params, "", state="finished", metric=-abs(params["gamma"] - 0.95)))
        run = to_sweep_run(trials[-1], "final_eval_return")
        assert run.summary_metrics == {"final_eval_return": trials[-1].metric}
    assert "predicted_value" in proposal.search_info  # the proposal came from a model fitted to the summaries


def test_hyperband_stops_the_lagging_trial():
    import sweeps

    config = sweeps.SweepConfig(
        {
            "method": "random",
            "metric": {"name": "final_eval_return", "goal": "maximize"},
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "parameters": {"gamma": {"min": 0.9, "max": 0.99}},
        }
    )
    good = Trial("good", {"gamma": 0.99}, "", state="finished", history=[(1, 10.0), (2, 50.0), (3, 90.0)])
    fair = Trial("fair", {"gamma": 0.95}, "", state="running", history=[(1, 10.0), (2, 20.0)])
    bad = Trial("bad", {"gamma": 0.9}, "", state="running", history=[(1, 1.0), (2, 2.0)])
    young = Trial("young", {"gamma": 0.91}, "", state="running", history=[(1, 0.0)])  # before the first band
    stopped = sweeps.stop_runs(config, [to_sweep_run(t, "final_eval_return") for t in (good, fair, bad, young)])
    assert [r.name for r in stopped] == ["bad"]  # below the median of the trials at band 2


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
        ("unknown_key", "Additional properties are not allowed ('iterations' was unexpected)"),
        ("bad_method", "'annealing' is not one of"),
        (
            "unknown_parameter",
            "parameter 'total_label' is not a flag of framework/sac_rlhf.py; did you mean 'total_labels'",
        ),
        ("missing_file", "no such file"),
    ],
)
def test_bad_input_is_one_line(tmp_path, case, expected):
    base = {
        "method": "random",
        "metric": {"name": "final_eval_return", "goal": "maximize"},
        "parameters": {"total_labels": {"values": [100, 200]}},
    }
    if case == "unknown_key":
        base["iterations"] = 3
    elif case == "bad_method":
        base["method"] = "annealing"
    elif case == "unknown_parameter":
        base["parameters"]["total_label"] = {"value": 5}
    path = tmp_path / "sweep.yaml"
    if case != "missing_file":
        path.write_text(yaml.safe_dump(base))
    result = run_script(
        "sweep.py",
        "--config-filename",
        str(path),
        "--algorithm",
        "sac-rlhf",
        "--sweep-dir",
        str(tmp_path / "sweep"),
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

    from framework import pref_ppo, sac_rlhf

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
        module = {"framework/sac_rlhf.py": sac_rlhf, "framework/pref_ppo.py": pref_ppo}[words[0]]
        flags = words[1:] + extra
        args = tyro.cli(module.Args, args=flags)
        assert (args.teacher_feedback_mode == "human" and args.feedback_server_autostart) == bool(extra), path.name
        assert args.env_id.lower().replace("-v5", "") in path.name.replace("_", "")
