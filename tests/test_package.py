"""prefrl as a package: a wheel installed outside the checkout carries the feedback server, its page, the sweep
definitions and console commands, and trains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import requests

from conftest import ROOT

TINY = ["--env-id", "InvertedPendulum-v5", "--total-timesteps", "400", "--learning-starts", "100",
        "--no-unsupervised-exploration", "--segment-length", "10", "--feedback-frequency", "100",
        "--labels-per-session", "10", "--total-labels", "20", "--hidden-size", "32", "--batch-size", "32",
        "--reward-hidden-size", "32", "--reward-epochs", "5", "--eval-frequency", "400", "--eval-episodes", "1",
        "--no-cuda"]  # fmt: skip


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def test_a_wheel_installed_outside_the_checkout_serves_the_page_and_trains(tmp_path):
    dist, site, work, home = (tmp_path / name for name in ("dist", "site", "work", "home"))
    work.mkdir()
    # (--no-build-isolation: built with this environment's setuptools, nothing downloaded)
    run(sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q", "-w", dist, cwd=tmp_path)
    (wheel,) = dist.glob("prefrl-*.whl")
    run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel)
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(home)}  # the wheel's code, not the checkout's

    where = run(
        sys.executable,
        "-c",
        "import framework, humanFeedback\n"
        "from framework.feedback_client import SERVER_SCRIPT\n"
        "from framework.sweep import load_sweep_config, shipped_config\n"
        "load_sweep_config('sweep_config/sac_rlhf_hopper.yaml')\n"
        "print(framework.__file__, humanFeedback.__file__, SERVER_SCRIPT, shipped_config('hopper.yaml'))",
        cwd=work,
        env=env,
    ).stdout.split()
    assert len(where) == 4 and all(path.startswith(str(site)) for path in where), where

    # the server from its console command: the page and the API, its data in the user's home (not site-packages)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([site / "bin" / "prefrl-feedback-server", "--port", str(port)], cwd=work, env=env,
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.ok and "<html" in page.text.lower()
        assert (home / ".prefrl" / "feedback" / "feedback.sqlite3").is_file()
    finally:
        server.terminate()
        server.wait(10)
        log.close()

    # a tiny PEBBLE run from the installed script, and the evaluation command on its folder
    run(sys.executable, site / "framework" / "sac_rlhf.py", *TINY, "--runs-dir", work / "runs", "--run-name", "w",
        cwd=work, env=env)  # fmt: skip
    summary = json.loads((work / "runs" / "w" / "summary.json").read_text())
    assert summary["total_timesteps"] == 400 and summary["labels_used"] == 20
    evaluated = run(site / "bin" / "prefrl-evaluate", work / "runs" / "w", "--episodes", "1", cwd=work, env=env)
    assert "mean return" in evaluated.stdout
    # a local sweep from its console command: trials run the installed scripts, in the user's folder
    (work / "tiny.yaml").write_text(
        "method: grid\nmetric: {name: final_eval_return, goal: maximize}\nparameters:\n"
        "  env_id: {value: InvertedPendulum-v5}\n  total_timesteps: {value: 300}\n  learning_starts: {value: 100}\n"
        "  eval_frequency: {value: 300}\n  eval_episodes: {value: 1}\n  hidden_size: {value: 32}\n"
        "  seed: {values: [1, 2]}\n"
    )
    swept = run(site / "bin" / "prefrl-sweep", "--config-filename", "tiny.yaml", "--algorithm", "sac", "--mode",
                "local", "--launcher", "local", "--sweep-dir", "sweeps/tiny", "--poll-seconds", "0.3", cwd=work,
                env=env)  # fmt: skip
    assert swept.stdout.count(": finished final_eval_return=") == 2, swept.stdout[-2000:]
    assert (work / "sweeps" / "tiny" / "study.db").is_file() and (work / "sweeps" / "tiny" / "results.md").is_file()
    for trial in ("trial-000", "trial-001"):
        assert json.loads((work / "sweeps" / "tiny" / "runs" / trial / "summary.json").read_text())["seed"] in (1, 2)
