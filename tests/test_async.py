"""Asynchronous feedback with simulated teachers: a teacher that takes a person's time per answer, and both
preference scripts learning while answers are outstanding."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import kill_at_checkpoint, run_script
from framework.preferences import read_preferences
from framework.teacher import QueryBatch, SimulatedTeacher
from toolbox.reward_ranking import ranking_accuracy


def batch(n: int, session: int = 0, step: int = 100) -> QueryBatch:
    rng = np.random.default_rng(session)
    a, b = rng.normal(size=(n, 10)), rng.normal(size=(n, 10))
    ones, states = np.ones((n, 10)), np.zeros((n, 10, 3))
    return QueryBatch("InvertedPendulum-v5", step, a, b, ones, ones, states, states, session)


def test_a_latency_teacher_answers_one_pair_after_another_with_the_labels_of_an_instant_one():
    instant, slow = SimulatedTeacher(seed=3), SimulatedTeacher(seed=3, latency=0.05)
    expected = instant.answer(batch(12))
    start = time.monotonic()
    keys = slow.submit(batch(12))
    assert len(set(keys)) == 12 and len(slow.collect()) < 12  # about 0.6 s of answers, not there at once
    got: dict[str, float] = {}
    while len(got) < 12 and time.monotonic() - start < 10:
        got.update(slow.collect())
        time.sleep(0.02)
    assert time.monotonic() - start > 0.2
    np.testing.assert_array_equal([got[k] for k in keys], expected)
    assert slow.collect() == []


def test_answers_on_their_way_survive_a_checkpoint():
    teacher = SimulatedTeacher(seed=1, latency=0.2)
    keys = teacher.submit(batch(5))
    state = teacher.state_dict()
    resumed = SimulatedTeacher(seed=99, latency=0.2)
    resumed.load_state_dict(state)
    assert resumed.rng.bit_generator.state == teacher.rng.bit_generator.state
    deadline, got = time.monotonic() + 10, {}
    while len(got) < 5 and time.monotonic() < deadline:
        got.update(resumed.collect())
        time.sleep(0.02)
    assert sorted(got) == sorted(keys)
    assert len(set(resumed.submit(batch(3, session=1, step=200))) - set(keys)) == 3  # later queries, new keys


def test_a_synchronous_latency_teacher_takes_its_time():
    start = time.monotonic()
    SimulatedTeacher(latency=0.02).answer(batch(20))
    assert time.monotonic() - start > 0.1


@pytest.mark.parametrize("script", ["sac_rlhf", "pref_ppo"])
def test_people_label_asynchronously_by_default_and_simulated_teachers_in_sessions(script):
    import importlib

    from framework.teacher import validate_teacher_args

    args_type = importlib.import_module(f"framework.{script}").Args
    for mode, given, settled in [
        ("human", "auto", "on"),
        ("simulated", "auto", "off"),
        ("human", "off", "off"),
        ("simulated", "on", "on"),
    ]:
        args = args_type(teacher_feedback_mode=mode, feedback_async=given)
        validate_teacher_args(args)
        assert args.feedback_async == settled, (mode, given)


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


ASYNC = "--feedback-async on --feedback-pending 10 --reward-update-every 20 --teacher-latency 0.05 --no-cuda".split()
RUNS = {
    # PEBBLE on HalfCheetah (an informative reward), 200 labels: the first 20 in a blocking session at step 500, the
    # rest while the agent trains (measured: ranking accuracy 0.76 asynchronous, 0.80 synchronous, about 30 s each)
    "sac_rlhf.py": "--env-id HalfCheetah-v5 --segment-length 25 --labels-per-session 20 --total-labels 200 "
    "--total-timesteps 4000 --learning-starts 200 --unsupervised-steps 300 --feedback-frequency 300 "
    "--feedback-poll-frequency 100 --hidden-size 64 --eval-frequency 4000 --eval-episodes 1",
    "pref_ppo.py": "--env-id InvertedPendulum-v5 --segment-length 20 --labels-per-session 20 --total-labels 80 "
    "--total-timesteps 12288 --num-envs 2 --num-steps 256 --unsupervised-steps 1024 --feedback-frequency 2048 "
    "--feedback-poll-frequency 512 --eval-frequency 6144 --eval-episodes 2",
}


@pytest.mark.parametrize("script", list(RUNS))
def test_the_agent_learns_on_while_answers_are_outstanding(runs_dir, script):
    name = script.removesuffix(".py")
    result = run_script(script, *ASYNC, *RUNS[script].split(), "--runs-dir", str(runs_dir), "--run-name", name)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((runs_dir / name / "summary.json").read_text())
    budget = int(RUNS[script].split("--total-labels ")[1].split()[0])
    assert summary["labels_used"] == summary["labels_stored"] == budget
    assert len(read_preferences(str(runs_dir / name)).pairs()["labels"]) == budget
    # answers learned from in batches of at least 20 after the blocking first session (the last batch, at the end of
    # the run, takes whatever has arrived)
    batches = [v for _, v in scalars(runs_dir / name, "feedback/labels_used")]
    assert batches[0] == 20 and all(b - a >= 20 for a, b in zip(batches[:-1], batches[1:-1])) and len(batches) >= 3
    delays = [v for _, v in scalars(runs_dir / name, "feedback/answer_delay_steps")]
    assert len(delays) == len(batches) - 1 and min(delays) > 0, delays  # the agent stepped on while they were out
    if script == "sac_rlhf.py":
        assert ranking_accuracy(runs_dir / name) >= 0.65


def test_a_run_killed_with_answers_outstanding_resumes_with_all_of_them(runs_dir):
    from framework.checkpoint import load_checkpoint

    flags = [*ASYNC, *RUNS["sac_rlhf.py"].split(), "--checkpoint-frequency", "500", "--runs-dir", str(runs_dir)]
    checkpoint = str(runs_dir / "killed" / "checkpoint.pt")

    def answers_on_their_way(step: int) -> bool:  # kill it hard at the first checkpoint taken while answers are out
        if step < 1000:
            return False
        saved = load_checkpoint(checkpoint)
        return bool(saved["state"]["outstanding"] and saved["teacher"]["waiting"])

    kill_at_checkpoint("sac_rlhf.py", *flags, "--run-name", "killed", when=answers_on_their_way)
    saved = load_checkpoint(checkpoint)
    asked = saved["state"]["labels_used"] + len(saved["state"]["arrived"]) + len(saved["state"]["outstanding"])
    assert asked > saved["state"]["labels_used"]

    resumed = run_script("sac_rlhf.py", "--resume", str(runs_dir / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((runs_dir / "killed" / "summary.json").read_text())
    assert summary["labels_used"] == summary["labels_stored"] == 200
    steps = read_preferences(str(runs_dir / "killed")).pairs()["steps"]
    assert len(steps) == 200 and (steps > saved["state"]["global_step"]).sum() >= asked - saved["state"]["labels_used"]
