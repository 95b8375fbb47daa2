"""One vocabulary for what runs write: every script's summary.json starts with the documented keys (speeds computed
the same way), and every TensorBoard tag a script writes is documented, one tag per quantity."""

from __future__ import annotations

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_scripts
from framework.tracking import SUMMARY_KEYS, TENSORBOARD_TAGS

COMMON = "--env-id InvertedPendulum-v5 --eval-episodes 1 --no-cuda --torch-threads 1 --seed 2".split()
PREFERENCE = "--segment-length 10 --labels-per-session 10 --total-labels 20 --reward-epochs 5"
UPRIGHT_REWARD = "def upright(qpos):\n    return 1.0 - abs(float(qpos[1]))\n"
# each about 10 s on a 2-core CPU; the four run at the same time
RUNS = {
    "sac.py": "--total-timesteps 600 --learning-starts 200 --hidden-size 32 --log-frequency 100 --eval-frequency 300",
    "ppo.py": "--total-timesteps 1024 --num-envs 2 --num-steps 256 --eval-frequency 512",
    "sac_rlhf.py": "--total-timesteps 700 --learning-starts 100 --unsupervised-steps 200 --feedback-frequency 200 "
    f"--hidden-size 32 --log-frequency 100 --eval-frequency 350 {PREFERENCE}",
    "pref_ppo.py": "--total-timesteps 1536 --num-envs 2 --num-steps 256 --unsupervised-steps 512 "
    f"--feedback-frequency 512 --eval-frequency 768 {PREFERENCE}",
}
# written only with --teacher-reward, --rime and --reward-warm-start in sac_rlhf (test_sac_rlhf checks them) and with
# --feedback-async (test_async.py)
NOT_WRITTEN_HERE = {"charts/episodic_teacher_return", "feedback/answer_delay_steps", "reward/rime_trusted"}
NOT_WRITTEN_HERE |= {"reward/rime_flipped", "reward/warm_start_loss"}


def documented(tag: str) -> bool:
    return tag in TENSORBOARD_TAGS or (tag.startswith("time/") and "time/<phase>" in TENSORBOARD_TAGS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, set[str]]]:
    """script -> (summary.json, TensorBoard tags) of a short run of each script."""
    runs_dir = tmp_path_factory.mktemp("runs")
    (runs_dir / "rewards.py").write_text(UPRIGHT_REWARD)
    extra = {"pref_ppo.py": ["--teacher-reward", f"{runs_dir / 'rewards.py'}:upright"]}
    name = {script: script.removesuffix(".py") for script in RUNS}
    results = run_scripts(
        {
            s: [*COMMON, *flags.split(), *extra.get(s, []), "--runs-dir", str(runs_dir), "--run-name", name[s]]
            for s, flags in RUNS.items()
        }
    )
    out = {}
    for script, result in results.items():
        assert result.returncode == 0, result.stderr[-3000:]
        accumulator = EventAccumulator(str(runs_dir / name[script]))
        accumulator.Reload()
        summary = json.loads((runs_dir / name[script] / "summary.json").read_text())
        out[script] = (summary, set(accumulator.Tags()["scalars"]))
    return out


@pytest.mark.parametrize("script", list(RUNS))
def test_summary_starts_with_the_documented_keys(runs, script):
    summary, _ = runs[script]
    assert list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert summary["algorithm"] == script.removesuffix(".py") and summary["stop_reason"] == "budget"
    assert summary["total_timesteps"] == int(RUNS[script].split()[1])
    assert summary["final_eval_return"] == summary["eval_history"][-1][1] <= summary["best_eval_return"]
    assert summary["best_eval_return"] == max(r for _, r in summary["eval_history"])
    assert all(math.isfinite(summary[k]) and summary[k] > 0 for k in ("sps", "learning_sps", "wall_time_s"))
    assert summary["phase_time_s"]["evaluation"] > 0
    assert summary["labels_used"] == (20 if "pref" in script or "rlhf" in script else 0)
    # the teacher's own return, with a user-written teacher reward (pref_ppo here), is summarised beside the true one
    with_teacher = script == "pref_ppo.py"
    assert ("final_teacher_return" in summary) == with_teacher
    if with_teacher:
        assert summary["final_teacher_return"] == summary["teacher_history"][-1][1] > 0
        assert [s for s, _ in summary["teacher_history"]] == [s for s, _ in summary["eval_history"]]


def test_every_tensorboard_tag_is_documented_and_each_documented_tag_is_written(runs):
    written = set().union(*(tags for _, tags in runs.values()))
    undocumented = sorted(tag for tag in written if not documented(tag))
    assert not undocumented, f"tags not in tracking.TENSORBOARD_TAGS: {undocumented}"
    never = sorted(set(TENSORBOARD_TAGS) - written - NOT_WRITTEN_HERE - {"time/<phase>"})
    assert not never, f"documented but written by no script: {never}"
    # the quantities both preference scripts log go under the same tags
    shared = {"charts/agent_reward_mean", "feedback/labels_used", "feedback/teacher_prefers_b", "reward/pearson"}
    assert shared <= runs["sac_rlhf.py"][1] & runs["pref_ppo.py"][1]


def run_on_a_terminal(*args: str) -> tuple[str, str]:
    """Run `python framework/sac.py args` with stderr on a 120-column pseudo-terminal (a person's shell): (stdout,
    stderr)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from conftest import ROOT

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [sys.executable, str(ROOT / "framework" / "sac.py"), *args]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=child, text=True)
    os.close(child)
    err = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read()
    proc.wait(60)
    os.close(main)
    return out, err.decode(errors="replace")


def test_a_person_sees_the_run_folder_a_progress_bar_and_a_closing_line(runs_dir):
    flags = [*COMMON, *RUNS["sac.py"].split(), "--runs-dir", str(runs_dir)]
    out, err = run_on_a_terminal(*flags, "--run-name", "tty")
    assert f"run folder: {runs_dir / 'tty'} (tensorboard --logdir {runs_dir})" in out
    assert "600/600" in err and "steps/s" in err and "eval " in err  # steps, speed, the last evaluation
    assert out.strip().splitlines()[-1].startswith("done: 600 steps in ")
    assert "final evaluation return" in out and str(runs_dir / "tty" / "summary.json") in out
    out, err = run_on_a_terminal(*flags, "--run-name", "quiet", "--no-progress-bar")
    assert "steps/s" not in err and "done: 600 steps" in out
