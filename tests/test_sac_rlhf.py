"""sac_rlhf.py end to end: every feature on, resume after a kill, reuse of a pre-exploration, stopping, bad input."""

from __future__ import annotations

import glob
import json
import os
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import kill_at_checkpoint, run_script, terminate_at
from framework.checkpoint import load_checkpoint, save_checkpoint
from framework.preferences import read_preferences

# A small but complete configuration: 200 random steps, 300 steps of pre-exploration, feedback every 400 steps.
TINY = [
    "--env-id",
    "InvertedPendulum-v5",
    "--learning-starts",
    "200",
    "--unsupervised-steps",
    "300",
    "--segment-length",
    "20",
    "--feedback-frequency",
    "400",
    "--labels-per-session",
    "20",
    "--total-labels",
    "100",
    "--hidden-size",
    "64",
    "--batch-size",
    "64",
    "--reward-hidden-size",
    "64",
    "--reward-epochs",
    "20",
    "--eval-episodes",
    "2",
    "--no-cuda",
]

UPRIGHT_REWARD = "def upright(qpos):\n    return 1.0 - abs(float(qpos[1]))\n"


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def scalar_tags(run_dir) -> set[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_every_feature_on(runs_dir, tmp_path):
    reward_file = tmp_path / "rewards.py"
    reward_file.write_text(UPRIGHT_REWARD)
    result = run_script(
        "sac_rlhf.py",
        *[f for f in TINY if f != "--no-cuda"],
        "--cuda",
        "--total-timesteps",
        "1800",
        "--eval-frequency",
        "900",
        "--checkpoint-frequency",
        "600",
        "--surf",
        "--rune",
        "--rime",
        "--reward-warm-start",
        "--reward-input-norm",
        "--query-recent-steps",
        "600",
        "--query-sampling",
        "entropy",
        "--label-schedule",
        "exponential",
        "--schedule-growth",
        "1.5",
        "--teacher-beta",
        "50",
        "--teacher-gamma",
        "0.99",
        "--teacher-eps-mistake",
        "0.1",
        "--teacher-eps-skip",
        "0.05",
        "--teacher-eps-equal",
        "0.05",
        "--teacher-reward",
        f"{reward_file}:upright",
        "--reward-dropout",
        "0.1",
        "--capture-video",
        "--track",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "all",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if not torch.cuda.is_available():  # --cuda without a GPU says so and goes on with the CPU
        assert "CUDA was requested but is not available; running on the CPU." in result.stderr
    run = runs_dir / "all"
    summary = summary_of(run)
    assert summary["total_timesteps"] == 1800 and summary["stop_reason"] == "budget"
    assert summary["sessions"] == 3  # sessions at 500, 900 and 1500
    # skipped pairs cost no label: later sessions ask for them again (only the last session's are not replaced)
    assert 0 < summary["labels_used"] == summary["labels_stored"] <= 60 < summary["labels_used"] + 30
    assert summary["labels_used"] + summary["pairs_skipped"] >= 60
    assert summary["learning_sps"] > 0 and summary["phase_time_s"]["reward_training"] > 0

    labels = read_preferences(str(run)).pairs()
    assert len(labels["labels"]) == summary["labels_stored"]
    assert labels["seg_a"].shape == (summary["labels_stored"], 20, 5) and set(np.unique(labels["labels"])) <= {
        0,
        0.5,
        1,
    }
    assert sorted(set(labels["steps"])) == [500, 900, 1500]

    checkpoint = load_checkpoint(str(run / "checkpoint.pt"))
    assert checkpoint["state"]["global_step"] == 1800 and checkpoint["replay_buffer"]["size"] == 1800
    assert os.path.isfile(run / "exploration.pt") and os.path.isfile(run / "label_schedule.png")
    assert len(glob.glob(str(run / "videos" / "*.mp4"))) == 2
    assert glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))

    tags = scalar_tags(run)
    for tag in [
        "eval/episodic_return",
        "eval/teacher_return",
        "charts/episodic_return",
        "charts/episodic_teacher_return",
        "charts/SPS",
        "feedback/labels_used",
        "reward/train_accuracy",
        "reward/rime_trusted",
        "reward/rime_flipped",
        "reward/val_accuracy",
        "reward/pearson",
        "reward/spearman",
        "time/agent_update",
        "time/exploration_update",
        "time/reward_training",
        "time/relabel",
        "losses/qf_loss",
    ]:
        assert tag in tags, tag


@pytest.mark.parametrize("mode", ["off", "on"])
def test_skipped_pairs_cost_no_label(runs_dir, mode):
    """B-Pref's skip teacher with a high threshold skips many pairs of a random InvertedPendulum policy (short
    episodes, segments mostly padding); each skipped pair is asked again, in the next session or through the queue of
    asynchronous feedback, so the labels counted against the budget are the labels given."""
    flags = [*TINY, "--total-timesteps", "1700", "--labels-per-session", "20", "--total-labels", "60",
             "--teacher-eps-skip", "0.3", "--feedback-async", mode, "--feedback-pending", "10",
             "--reward-update-every", "10", "--feedback-poll-frequency", "50", "--eval-frequency", "1700"]  # fmt: skip
    result = run_script("sac_rlhf.py", *flags, "--runs-dir", str(runs_dir), "--run-name", "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(runs_dir / "skip")
    assert summary["pairs_skipped"] >= 20  # measured: 46 in sessions
    assert summary["labels_used"] == summary["labels_stored"] <= 60  # every label given is stored and charged
    assert summary["labels_used"] >= 30  # measured: 38 labels from 84 pairs asked
    asked = read_preferences(str(runs_dir / "skip")).table["label"]  # every pair asked, with its answer
    assert len(asked) == summary["labels_used"] + summary["pairs_skipped"] > 60
    if mode == "off":  # a session asks its own 20 and the pairs skipped before it
        acc = EventAccumulator(str(runs_dir / "skip"), size_guidance={"scalars": 0})
        acc.Reload()
        used = [e.value for e in acc.Scalars("feedback/labels_used")]
        skipped = [e.value for e in acc.Scalars("feedback/skipped")]
        before = 0.0
        for k, (total, skips) in enumerate(zip(used, skipped)):
            assert total - before + skips == 20 * (k + 1) - before
            before = total


def test_resume_after_kill_matches_a_straight_run(runs_dir):
    """A run SIGKILLed after a checkpoint and resumed ends exactly like one run straight through (RIME's running
    statistics of a noisy teacher's labels and the reward model's input statistics included)."""
    flags = [
        *TINY,
        "--rime",
        "--reward-input-norm",
        "--teacher-eps-mistake",
        "0.2",
        "--total-timesteps",
        "2400",
        "--eval-frequency",
        "1200",
        "--checkpoint-frequency",
        "300",
        "--runs-dir",
        str(runs_dir),
    ]
    straight = run_script("sac_rlhf.py", *flags, "--run-name", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = runs_dir / "killed"
    # kill it hard once it has checkpointed after its second feedback session
    kill_at_checkpoint("sac_rlhf.py", *flags, "--run-name", "killed", when=lambda step: step > 1000)
    killed_at = load_checkpoint(str(killed_dir / "checkpoint.pt"))["state"]["global_step"]
    assert 1000 < killed_at < 2400

    resumed = run_script("sac_rlhf.py", "--resume", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {killed_dir} at step {killed_at}" in resumed.stdout

    a, b = summary_of(runs_dir / "straight"), summary_of(killed_dir)
    assert a["total_timesteps"] == b["total_timesteps"] == 2400
    assert a["buffer_size"] == b["buffer_size"] == 2400
    assert a["labels_used"] == b["labels_used"]
    labels_a, labels_b = (
        read_preferences(str(runs_dir / "straight")).pairs(),
        read_preferences(str(killed_dir)).pairs(),
    )
    for key in labels_a:
        np.testing.assert_array_equal(labels_a[key], labels_b[key], err_msg=key)
    assert a["eval_history"] == b["eval_history"], "the resumed run continues exactly where the killed one was"


def test_sigterm_saves_a_checkpoint_and_resume_finishes(runs_dir):
    flags = [
        *TINY,
        "--total-timesteps",
        "3000",
        "--eval-frequency",
        "3000",
        "--checkpoint-frequency",
        "0",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "term",
    ]
    returncode, stderr = terminate_at("sac_rlhf.py", *flags, when=lambda line: "session=1" in line)
    assert returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(str(runs_dir / "term" / "checkpoint.pt"))
    assert saved["state"]["global_step"] >= 500 and len(saved["preferences"]["labels"]) > 0

    resumed = run_script("sac_rlhf.py", "--resume", str(runs_dir / "term"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(runs_dir / "term")
    assert summary["total_timesteps"] == 3000 and summary["labels_used"] == 100


def test_exploration_is_saved_and_reused(runs_dir):
    first = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "900",
        "--eval-frequency",
        "900",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "explorer",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    saved = load_checkpoint(str(runs_dir / "explorer" / "exploration.pt"))
    assert saved["state"]["global_step"] == 500 and saved["replay_buffer"]["size"] == 500
    assert len(saved["preferences"]["labels"]) == 0, "saved before the first feedback session"
    assert np.abs(saved["replay_buffer"]["obs"]).sum() > 0 and np.abs(saved["replay_buffer"]["physics"]).sum() > 0

    start = time.perf_counter()
    second = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "900",
        "--eval-frequency",
        "900",
        "--exploration-load",
        str(runs_dir / "explorer"),
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "reuser",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "loaded pre-exploration" in second.stdout and "500 transitions" in second.stdout
    summary = summary_of(runs_dir / "reuser")
    assert summary["buffer_size"] == 900 and summary["total_timesteps"] == 900
    assert "exploration_update" not in summary["phase_time_s"], "no pre-exploration ran again"
    assert not os.path.exists(runs_dir / "reuser" / "exploration.pt")
    reused = load_checkpoint(str(runs_dir / "reuser" / "checkpoint.pt"))
    assert len(reused["preferences"]["labels"]) == summary["labels_used"], "the label budget, none carried over"
    assert time.perf_counter() - start < 120

    wrong = run_script(
        "sac_rlhf.py",
        *TINY,
        "--env-id",
        "InvertedDoublePendulum-v5",
        "--total-timesteps",
        "900",
        "--exploration-load",
        str(runs_dir / "explorer"),
        "--runs-dir",
        str(runs_dir),
    )
    assert wrong.returncode == 2 and "was made on 'InvertedPendulum-v5'" in wrong.stderr
    warm = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "900",
        "--reward-warm-start",
        "--exploration-load",
        str(runs_dir / "explorer"),
        "--runs-dir",
        str(runs_dir),
    )
    assert warm.returncode == 2 and "was made without --reward-warm-start, this run is with it" in warm.stderr
    saved["preferences"] = reused["preferences"]  # as if saved after a feedback session: its labels would add up
    os.makedirs(runs_dir / "labelled")
    save_checkpoint(saved, str(runs_dir / "labelled" / "exploration.pt"))
    labelled = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "900",
        "--exploration-load",
        str(runs_dir / "labelled"),
        "--runs-dir",
        str(runs_dir),
    )
    assert labelled.returncode == 2 and f"holds {summary['labels_used']} labels already" in labelled.stderr
    assert len(labelled.stderr.strip().splitlines()) == 1


def test_warm_start_fits_the_exploration_reward_and_keeps_the_critics(runs_dir):
    """RIME's warm start: by the end of pre-exploration the reward model predicts the state-entropy reward the critics
    learn from (one step per env step on the agent's batch), and the first session keeps the critics instead of
    resetting them."""
    result = run_script(
        "sac_rlhf.py",
        *TINY,
        "--unsupervised-steps",
        "1000",
        "--total-timesteps",
        "1500",
        "--eval-frequency",
        "1500",
        "--log-frequency",
        "100",
        "--reward-warm-start",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "warm",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "critics kept: the reward model was warm-started" in result.stdout
    acc = EventAccumulator(str(runs_dir / "warm"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("reward/warm_start_loss")]
    # logged every 100 steps from 300 to 1100 (the session at 1200 ends it); the targets' variance is about 0.1
    assert len(losses) == 9 and losses[-1] < min(losses[0] / 4, 0.01), losses


def test_early_stopping(runs_dir):
    result = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "5000",
        "--eval-frequency",
        "600",
        "--early-stop-return",
        "-1",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "stop",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(runs_dir / "stop")
    assert summary["total_timesteps"] == 600 and "--early-stop-return" in summary["stop_reason"]

    result = run_script(
        "sac_rlhf.py",
        *TINY,
        "--total-timesteps",
        "5000",
        "--eval-frequency",
        "550",
        "--early-stop-patience",
        "1",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "patience",
    )
    summary = summary_of(runs_dir / "patience")
    history = [r for _, r in summary["eval_history"]]
    assert "without a new best" in summary["stop_reason"] and summary["total_timesteps"] < 5000
    assert history[-1] <= max(history[:-1])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--total-labels", "-5"], "--total-labels must be >= 0, got -5"),
        (["--query-recent-steps", "-2"], "--query-recent-steps must be >= 0, got -2"),
        (["--labels-per-session", "200", "--total-labels", "100"], "is more than the whole label budget"),
        (["--total-timesteps", "400"], "leave no training steps"),
        (["--surf-crop", "30"], "--surf-crop (30) must be shorter than --segment-length (20)"),
        (["--rime-flip-epsilon", "0.7"], "--rime-flip-epsilon in (0, 0.5), got 3.0, 1.0 and 0.7"),
        (["--reward-warm-start", "--no-unsupervised-exploration"], "--reward-warm-start fits the reward model during"),
        (["--teacher-beta", "0"], "teacher beta must be > 0"),
        (["--teacher-reward", "nowhere/missing.py:f"], "teacher reward file 'nowhere/missing.py' does not exist"),
        (["--resume", "/nonexistent/run"], "no checkpoint.pt in that folder"),
        (["--exploration-load", "/nonexistent/run"], "no exploration.pt in that folder"),
        (["--env-id", "Pendulum"], "unknown environment id 'Pendulum'"),
    ],
)
def test_bad_input_is_one_line(runs_dir, flags, message):
    result = run_script("sac_rlhf.py", *TINY, "--total-timesteps", "2000", *flags, "--runs-dir", str(runs_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and message in result.stderr


def test_unknown_sampling_method_is_rejected_by_the_parser(runs_dir):
    result = run_script("sac_rlhf.py", "--query-sampling", "random", "--runs-dir", str(runs_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "uniform" in result.stderr and "disagreement" in result.stderr


@pytest.mark.slow
def test_pebble_learns_inverted_pendulum_from_preferences(runs_dir):
    """Measured (2-core CPU, seeds 1-2): 72.8 and 55.2 after 5000 steps and 200 labels, ~50 s; the untrained
    policy scores 4-10 and the oracle sac.py 64-96 with the same budget and networks."""
    result = run_script(
        "sac_rlhf.py",
        "--env-id",
        "InvertedPendulum-v5",
        "--total-timesteps",
        "5000",
        "--learning-starts",
        "500",
        "--unsupervised-steps",
        "1000",
        "--segment-length",
        "25",
        "--feedback-frequency",
        "700",
        "--labels-per-session",
        "40",
        "--total-labels",
        "200",
        "--hidden-size",
        "64",
        "--batch-size",
        "128",
        "--reward-hidden-size",
        "128",
        "--eval-frequency",
        "5000",
        "--eval-episodes",
        "5",
        "--no-cuda",
        "--seed",
        "1",
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "learn",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(runs_dir / "learn")
    assert summary["labels_used"] == 200
    assert summary["final_eval_return"] >= 40.0, summary["eval_history"]
    # another agent trains on the exported reward model alone (<run>/reward_model.pt2); measured: 69.4 (seed 1)
    oracle = run_script(
        "sac.py",
        *"--env-id InvertedPendulum-v5 --total-timesteps 5000 --learning-starts 500 --hidden-size 64 --batch-size 128"
        " --eval-frequency 5000 --eval-episodes 5 --no-cuda --seed 1".split(),
        "--reward-model",
        str(runs_dir / "learn"),
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "on-learned-reward",
    )
    assert oracle.returncode == 0, oracle.stderr[-3000:]
    on_learned = summary_of(runs_dir / "on-learned-reward")
    assert on_learned["final_eval_return"] >= 30.0, on_learned["eval_history"]  # random policies score 4-10
