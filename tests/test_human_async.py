"""Asynchronous feedback from people: the agent learns while they label on the page, answers count once they can no
longer be undone, and a trainer killed with -9 picks up every answer given while it was down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, run_script
from feedback_helpers import ApiLabeler, Server, api
from framework.feedback_client import FeedbackClient, HumanTeacher
from framework.preferences import read_preferences
from test_human_feedback import query_batch, wait_for


def answer_next(server: Server, run: str, choice: str, client: str = "person") -> dict | None:
    """Lease the next pending pair of `run` and answer it, as the page does."""
    q = api(server, "POST", f"/api/runs/{run}/lease", json={"client": client}).json()["query"]
    if q is not None:
        body = {"client": client, "labeler": client, "choice": choice}
        assert api(server, "POST", f"/api/queries/{q['id']}/answer", json=body).ok
    return q


def collect_until(teacher: HumanTeacher, n: int, timeout: float = 20.0) -> dict[str, float]:
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.update(teacher.collect())
        time.sleep(0.05)
    return got


def human_teacher(server: Server, run: str, run_dir, undo_grace: float = 10.0) -> HumanTeacher:
    """A trainer's human teacher on `server`: 64-pixel clips, polling every 0.1 s, no progress bar."""
    client = FeedbackClient(server.url)
    return HumanTeacher(
        client, run, "InvertedPendulum-v5", str(run_dir), 64, 30.0, 0.0, "Which?", 0.1, False, undo_grace=undo_grace
    )


def statuses(server: Server, run: str) -> dict[str, str]:
    return {q["key"]: q["status"] for q in api(server, "GET", f"/api/runs/{run}/queries").json()["queries"]}


def test_answers_count_once_they_can_no_longer_be_undone_and_a_new_teacher_finds_those_given_meanwhile(tmp_path):
    server = Server(tmp_path / "data").start()
    run = "async-teacher"

    first = human_teacher(server, run, tmp_path, undo_grace=1.0)
    try:
        start = time.monotonic()
        keys = first.submit(query_batch(7))
        assert time.monotonic() - start < 0.5  # rendering and uploading happen behind the agent's back
        wait_for(lambda: len(statuses(server, run)) == 7, 30, "the uploads")
        answered = [answer_next(server, run, c) for c in ("left", "right", "equal")]
        # the last answer is taken back within the grace period and given again: only the second one counts
        assert api(server, "POST", f"/api/runs/{run}/undo", json={"client": "person", "labeler": "person"}).ok
        answer_next(server, run, "skip")
        got = collect_until(first, 3)
        assert got == {answered[0]["key"]: 0.0, answered[1]["key"]: 1.0, answered[2]["key"]: got[answered[2]["key"]]}
        assert np.isnan(got[answered[2]["key"]])  # can't tell: a skipped pair
        # now final: the page can no longer take them back
        refused = api(server, "POST", f"/api/runs/{run}/undo", json={"client": "person", "labeler": "person"})
        assert refused.status_code == 409 and "already used" in refused.json()["error"]
        assert sum(s == "used" for s in statuses(server, run).values()) == 3

        # the trainer stops (a checkpoint holds what it waits for, and an answer taken but not yet collected);
        # meanwhile a person answers two more pairs
        taken = answer_next(server, run, "equal")["key"]
        wait_for(lambda: first.ready, 10, "the answer taken")
        state = first.state_dict()
        first.stop.set()
        assert sorted(state["watching"]) == sorted(set(keys) - set(got) - {taken})
        meanwhile = [answer_next(server, run, "right")["key"] for _ in range(2)]
        second = human_teacher(server, run, tmp_path, undo_grace=0.2)
        second.load_state_dict(state)
        assert collect_until(second, 3) == {taken: 0.5, **{k: 1.0 for k in meanwhile}}
        # the run ends: the last pair was never answered and leaves the page
        assert second.collect(final=True) == []
        assert sorted(statuses(server, run).values()) == ["used"] * 6 + ["withdrawn"]
        trainer = api(server, "GET", f"/api/runs/{run}").json()["trainer"]
        assert trainer["state"] == "finished" and trainer["labels_given"] == 6 and trainer["pending"] == 0
        records = [json.loads(line) for line in open(tmp_path / "answers.jsonl")]
        assert [r["kind"] for r in records if "event" in r] == ["answer"] * 3 + ["undo", "answer"] + ["answer"] * 3
        assert sorted(k for r in records if "final" in r for k in r["final"]) == sorted([*got, taken, *meanwhile])
    finally:
        first.stop.set()
        server.stop()


def test_a_pair_asked_again_after_a_resume_finds_the_answer_given_while_the_trainer_was_down(tmp_path):
    from dataclasses import replace

    server = Server(tmp_path / "data").start()
    run = "asked-again"

    first, second = human_teacher(server, run, tmp_path), human_teacher(server, run, tmp_path, undo_grace=0.2)
    try:
        keys = first.submit(query_batch(2))  # asked after the last checkpoint, then the trainer dies
        wait_for(lambda: len(statuses(server, run)) == 2, 30, "the uploads")
        first.stop.set()
        for _ in keys:
            answer_next(server, run, "left")
        second.submit(replace(query_batch(1), step=300))  # the resumed trainer asks something new first ...
        time.sleep(1.0)  # ... and its poller reads the feed past the answers above
        assert second.submit(query_batch(2)) == keys  # then asks the pairs of <run>/asked/ again: the same keys
        assert collect_until(second, 2) == {k: 0.0 for k in keys}
    finally:
        first.stop.set()
        second.stop.set()
        server.stop()


ASYNC_RUN = (
    "--env-id InvertedPendulum-v5 --total-timesteps 4000 --learning-starts 100 --unsupervised-steps 100 "
    "--feedback-frequency 300 --labels-per-session 6 --total-labels 36 --segment-length 15 --feedback-pending 6 "
    "--reward-update-every 6 --feedback-poll-frequency 100 --feedback-undo-grace 0.5 --feedback-timeout 120 "
    "--eval-frequency 4000 "
    "--eval-episodes 2 --checkpoint-frequency 300 --hidden-size 64 --teacher-feedback-mode human --clip-size 64 "
    "--torch-threads 1 --no-cuda"
).split()


def test_a_trainer_killed_mid_run_uses_every_answer_given_while_it_was_down(tmp_path, runs_dir):
    from framework.checkpoint import load_checkpoint

    server = Server(tmp_path / "data").start()
    run = "async-killed"
    flags = [*ASYNC_RUN, "--feedback-server-url", server.url, "--runs-dir", str(runs_dir), "--run-name", run]
    log = open(tmp_path / "trainer.log", "w")
    command = [sys.executable, str(ROOT / "framework" / "sac_rlhf.py"), *flags]
    trainer = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    labeler = ApiLabeler(server.url, choose=lambda q: "right", delay=0.2)  # a person at work: 0.2 s per pair
    labeler.start()
    checkpoint = runs_dir / run / "checkpoint.pt"
    try:

        def asynchronous_checkpoint():  # a checkpoint taken while the agent learns and answers are out
            if trainer.poll() is not None or not checkpoint.exists():
                return None
            try:
                saved = load_checkpoint(str(checkpoint))
            except Exception:  # being written
                return None
            return saved if saved["state"]["session"] >= 2 and saved["state"]["outstanding"] else None

        wait_for(asynchronous_checkpoint, 240, "a checkpoint with outstanding queries")
        labeler.stop()  # the person pauses; the trainer tops the pairs on the page up, and is killed
        wait_for(lambda: list(statuses(server, run).values()).count("pending") >= 3, 60, "pairs on the page")
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        saved = load_checkpoint(str(checkpoint))
        # while the trainer is down, a person answers everything on the page (some pairs were asked after the
        # checkpoint: the resumed run finds them in <run>/asked/)
        given_meanwhile = []
        while (q := answer_next(server, run, "left")) is not None:
            given_meanwhile.append(q["key"])
        assert len(given_meanwhile) >= 1
        labeler = ApiLabeler(server.url, choose=lambda q: "right", delay=0.2)
        labeler.start()
        resumed = run_script("sac_rlhf.py", "--resume", str(runs_dir / run), timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        labeler.stop()
        if trainer.poll() is None:
            trainer.kill()
        server.stop()
    summary = json.loads((runs_dir / run / "summary.json").read_text())
    assert summary["labels_used"] == summary["labels_stored"] == 36
    labels = read_preferences(str(runs_dir / run)).pairs()
    # every answer given while the trainer was down ("left", 0) trained the reward model, and nothing else is 0
    assert (labels["labels"] == 0.0).sum() == len(given_meanwhile)
    assert (labels["steps"] > saved["state"]["global_step"]).sum() >= len(given_meanwhile)
    server.start()
    final = statuses(server, run)
    server.stop()
    assert all(final[k] == "used" for k in given_meanwhile)
    assert sum(s == "used" for s in final.values()) == 36 and set(final.values()) <= {"used", "withdrawn"}
    # the agent stepped on while answers were out
    from test_async import scalars

    delays = [v for _, v in scalars(runs_dir / run, "feedback/answer_delay_steps")]
    assert delays and min(delays) > 0


def test_pref_ppo_learns_from_people_asynchronously(tmp_path, runs_dir):
    server = Server(tmp_path / "data").start()
    labeler = ApiLabeler(server.url, choose=lambda q: ["left", "right"][len(q["key"]) % 2], delay=0.1)
    labeler.start()
    try:
        result = run_script(
            "pref_ppo.py",
            *"--env-id InvertedPendulum-v5 --total-timesteps 8192 --num-envs 2 --num-steps 256 --unsupervised-steps 512"
            " --feedback-frequency 512 --labels-per-session 5 --total-labels 15 --segment-length 15"
            " --feedback-pending 5 --reward-update-every 5 --feedback-poll-frequency 512 --feedback-undo-grace 0.5"
            " --eval-frequency 8192 --eval-episodes 2 --teacher-feedback-mode human --clip-size 64 --torch-threads 1"
            " --no-cuda".split(),
            "--feedback-server-url",
            server.url,
            "--runs-dir",
            str(runs_dir),
            "--run-name",
            "ppo-async",
            timeout=300,
        )
    finally:
        labeler.stop()
        server.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "asynchronous feedback: the agent learns while you label" in result.stdout
    summary = json.loads((runs_dir / "ppo-async" / "summary.json").read_text())
    assert summary["labels_used"] == summary["labels_stored"] == len(labeler.answered) == 15
    from test_async import scalars

    delays = [v for _, v in scalars(runs_dir / "ppo-async", "feedback/answer_delay_steps")]
    assert delays and min(delays) > 0  # PPO collected rollouts while people answered
