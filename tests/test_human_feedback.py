"""The trainer's side of the human loop: the client's retries and timeout, and kill -9 / resume of a trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import ROOT, run_script
from feedback_helpers import ApiLabeler, Server, api, free_port
from framework.feedback_client import FeedbackClient, FeedbackServerError, HumanTeacher
from framework.teacher import QueryBatch
from test_clips import rollout_states


def query_batch(n: int, seg_len: int = 8, session: int = 0) -> QueryBatch:
    states = rollout_states("InvertedPendulum-v5", 2 * n * seg_len).reshape(2, n, seg_len, -1)
    zeros, ones = np.zeros((n, seg_len)), np.ones((n, seg_len))
    return QueryBatch("InvertedPendulum-v5", 100, zeros, zeros, ones, ones, states[0], states[1], session=session)


def test_client_retries_until_the_server_is_up(tmp_path):
    server = Server(tmp_path / "data")
    logs: list[str] = []
    client = FeedbackClient(server.url, log=logs.append, max_backoff=0.5)
    threading.Timer(1.5, server.start, kwargs={"wait": False}).start()
    try:
        assert client.put_run("run-1", "Hopper-v5", "Which?")["run_id"] == "run-1"
        assert "unreachable" in logs[0] and "is back" in logs[-1]
    finally:
        time.sleep(0.5)
        server.stop()


def test_a_wrong_token_is_a_clear_error(tmp_path):
    server = Server(tmp_path / "data", token="right").start()
    try:
        with pytest.raises(FeedbackServerError, match="PREFRL_FEEDBACK_TOKEN"):
            FeedbackClient(server.url, token="wrong").put_run("run-1", "Hopper-v5", "Which?")
    finally:
        server.stop()


def test_answers_arrive_in_order_and_are_kept_in_the_run_folder(tmp_path):
    server = Server(tmp_path / "data").start()
    labeler = ApiLabeler(server.url, choose=lambda q: ["left", "right", "equal", "skip"][int(q["key"][-1]) % 4])
    labeler.start()
    try:
        teacher = HumanTeacher(
            FeedbackClient(server.url),
            "run-1",
            "InvertedPendulum-v5",
            str(tmp_path),
            clip_size=64,
            progress=False,
            poll_interval=0.1,
        )
        labels = teacher.answer(query_batch(4))
        np.testing.assert_array_equal(labels, [0.0, 1.0, 0.5, np.nan])
        records = [json.loads(line) for line in open(tmp_path / "answers.jsonl")]
        assert [r["choice"] for r in records if "event" in r] == ["left", "right", "equal", "skip"]
        assert records[-1]["closed"] == 0 and records[-1]["labels"] == [0.0, 1.0, 0.5, None]
        # the clips on the server are real, playable H.264
        q = api(server, "GET", "/api/runs/run-1/queries").json()["queries"]
        assert {x["status"] for x in q} == {"used"}
    finally:
        labeler.stop()
        server.stop()


def test_timeout_goes_on_with_the_answers_received(tmp_path):
    server = Server(tmp_path / "data").start()

    def answer_two():
        answered = 0
        while answered < 2:
            q = (
                requests.post(server.url + "/api/runs/run-1/lease", json={"client": "a"}, timeout=5).json()["query"]
                if requests.get(server.url + "/api/runs", timeout=5).json()["runs"]
                else None
            )
            if q:
                requests.post(
                    server.url + f"/api/queries/{q['id']}/answer",
                    timeout=5,
                    json={"client": "a", "labeler": "a", "choice": "right"},
                )
                answered += 1
            time.sleep(0.1)

    threading.Thread(target=answer_two, daemon=True).start()
    try:
        teacher = HumanTeacher(
            FeedbackClient(server.url),
            "run-1",
            "InvertedPendulum-v5",
            str(tmp_path),
            clip_size=64,
            timeout=4.0,
            progress=False,
            poll_interval=0.1,
        )
        start = time.monotonic()
        labels = teacher.answer(query_batch(4))
        assert 3.5 < time.monotonic() - start < 20
        assert np.sum(labels == 1.0) == 2 and np.isnan(labels).sum() == 2
        statuses = sorted(q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"])
        assert statuses == ["used", "used", "withdrawn", "withdrawn"]  # the rest left the page
    finally:
        server.stop()


def test_a_server_that_dies_mid_session_does_not_end_the_run(tmp_path):
    server = Server(tmp_path / "data").start()
    teacher = HumanTeacher(
        FeedbackClient(server.url, max_backoff=0.5, log=lambda m: None),
        "run-1",
        "InvertedPendulum-v5",
        str(tmp_path),
        clip_size=64,
        timeout=3.0,
        progress=False,
        poll_interval=0.1,
        close_grace=1.0,
    )
    threading.Timer(1.0, server.kill9).start()
    labels = teacher.answer(query_batch(2))
    assert np.isnan(labels).all()


HUMAN_RUN = [
    "--env-id",
    "InvertedPendulum-v5",
    "--total-timesteps",
    "900",
    "--learning-starts",
    "100",
    "--unsupervised-steps",
    "100",
    "--feedback-frequency",
    "300",
    "--labels-per-session",
    "6",
    "--total-labels",
    "18",
    "--segment-length",
    "15",
    "--eval-frequency",
    "900",
    "--eval-episodes",
    "2",
    "--checkpoint-frequency",
    "300",
    "--teacher-feedback-mode",
    "human",
    "--feedback-async",
    "off",  # feedback sessions (test_human_async.py labels asynchronous runs)
    "--clip-size",
    "64",
    "--torch-threads",
    "1",
    "--no-cuda",
]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_trainer_killed_while_waiting_resumes_with_the_answers_given_meanwhile(tmp_path, runs_dir):
    server = Server(tmp_path / "data").start()
    run = "pend-human"
    trainer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "framework" / "sac_rlhf.py"),
            *HUMAN_RUN,
            "--feedback-server-url",
            server.url,
            "--runs-dir",
            str(runs_dir),
            "--run-name",
            run,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    labeler = None
    try:

        def session_queries():
            r = api(server, "GET", f"/api/runs/{run}/queries")
            return r.ok and len(r.json()["queries"]) == 6 and r.json()["queries"]

        first = wait_for(session_queries, 120, "the first session's queries")
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        # while the trainer is down, a person answers the whole first session
        for _ in first:
            lease = api(server, "POST", f"/api/runs/{run}/lease", json={"client": "p"}).json()["query"]
            assert api(
                server,
                "POST",
                f"/api/queries/{lease['id']}/answer",
                json={"client": "p", "labeler": "person", "choice": "left", "response_ms": 1234},
            ).ok
        labeler = ApiLabeler(server.url, choose=lambda q: "right")
        labeler.start()
        resumed = run_script("sac_rlhf.py", "--resume", str(runs_dir / run), timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resumed" in resumed.stdout
    finally:
        if labeler:
            labeler.stop()
        if trainer.poll() is None:
            trainer.kill()
        server.stop()
    queries = api(server.start(), "GET", f"/api/runs/{run}/queries").json()["queries"]
    server.stop()
    first_keys = {q["key"] for q in first}
    assert len([q for q in queries if q["session"] == 0]) == 6  # the first session was not asked again
    assert all(q["status"] == "used" for q in queries) and len(queries) == 18
    records = [json.loads(line) for line in open(runs_dir / run / "answers.jsonl")]
    given_meanwhile = [r for r in records if r.get("key") in first_keys]
    assert [r["labeler"] for r in given_meanwhile] == ["person"] * 6
    closed = [r for r in records if "closed" in r]
    assert [c["closed"] for c in closed] == [0, 1, 2] and closed[0]["labels"] == [0.0] * 6
    summary = json.loads((runs_dir / run / "summary.json").read_text())
    assert summary["labels_used"] == 18 and summary["labels_stored"] == 18
    from framework.preferences import read_preferences

    data = read_preferences(str(runs_dir / run))
    assert sorted(data.pairs()["labels"].tolist()) == [0.0] * 6 + [1.0] * 12  # the person's answers, then the labeler's
    # the dataset says who answered the first session, in which tab, how fast, and when
    rows = [i for i, key in enumerate(data.table["key"]) if key in first_keys]
    assert len(rows) == 6 and data.meta["teacher"]["kind"] == "human"
    for column, expected in [("answer", "left"), ("labeler", "person"), ("labeler_session", "p")]:
        assert [data.table[column][i] for i in rows] == [expected] * 6, column
    assert [data.table["response_time_s"][i] for i in rows] == [1.234] * 6
    assert sorted(data.table["answered_at"][i] for i in rows) == sorted(r["time"] for r in given_meanwhile)


def test_pref_ppo_human_mode_with_an_autostarted_server(tmp_path, runs_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    labeler = ApiLabeler(url, choose=lambda q: "right")
    labeler.start()
    env = dict(os.environ, PREFRL_FEEDBACK_DATA_DIR=str(tmp_path / "data"))
    try:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "framework" / "pref_ppo.py"),
                "--env-id",
                "InvertedPendulum-v5",
                "--total-timesteps",
                "2048",
                "--num-envs",
                "2",
                "--num-steps",
                "256",
                "--unsupervised-steps",
                "512",
                "--feedback-frequency",
                "512",
                "--labels-per-session",
                "5",
                "--total-labels",
                "10",
                "--segment-length",
                "15",
                "--eval-frequency",
                "2048",
                "--eval-episodes",
                "2",
                "--teacher-feedback-mode",
                "human",
                "--feedback-async",
                "off",
                "--feedback-server-autostart",
                "--feedback-server-url",
                url,
                "--clip-size",
                "64",
                "--runs-dir",
                str(runs_dir),
                "--run-name",
                "ppo-human",
                "--torch-threads",
                "1",
                "--no-cuda",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        labeler.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started a feedback server" in result.stdout
    summary = json.loads((runs_dir / "ppo-human" / "summary.json").read_text())
    assert summary["labels_stored"] == 10
    assert len(labeler.answered) == 10 and (tmp_path / "data" / "feedback.sqlite3").exists()
    with pytest.raises(requests.ConnectionError):  # the child server stopped with the trainer
        requests.get(url + "/api/health", timeout=2)


def test_bad_human_mode_flags_fail_at_start(runs_dir):
    for flags, needle in [
        (["--feedback-server-url", "ftp://x"], "http"),
        (["--feedback-timeout", "-1"], "timeout"),
        (["--clip-size", "99"], "clip-size"),
        (["--teacher-reward", "x.py:f"], "teacher-reward"),
        (["--feedback-server-autostart", "--feedback-server-url", "http://10.1.2.3:5001"], "autostart"),
    ]:
        result = run_script(
            "sac_rlhf.py", "--teacher-feedback-mode", "human", "--runs-dir", str(runs_dir), *flags, timeout=120
        )
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr, (
            flags,
            result.stderr,
        )


# ----------------------------------------------------------------------------------------------- hardening
def test_an_autostarted_server_answers_3000_requests_and_logs_to_the_run_folder(tmp_path):
    """Its one log line per request goes to a file: a pipe nobody reads would fill after ~650 requests and stall it."""
    from framework.feedback_client import start_local_server

    url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "run" / "feedback_server.log"
    os.environ["PREFRL_FEEDBACK_TOKEN"] = "tok-secret"
    try:
        proc = start_local_server(url, "tok-secret", data_dir=str(tmp_path / "data"), log_path=str(log_path))
    finally:
        del os.environ["PREFRL_FEEDBACK_TOKEN"]
    try:
        assert "tok-secret" not in Path(f"/proc/{proc.pid}/cmdline").read_text()  # by environment, not arguments
        s = requests.Session()
        s.headers["X-Prefrl-Token"] = "tok-secret"
        slowest = 0.0
        for i in range(3000):
            start = time.monotonic()
            path = ["/api/runs", "/api/health", "/api/runs/none", "/"][i % 4]
            assert s.get(url + path, timeout=5).status_code in (200, 404)
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 5.0
    finally:
        proc.terminate()
        proc.wait(10)
    logged = log_path.read_text()
    assert logged.count('"GET /api/runs"') >= 750 and "tok-secret" not in logged


class FakeServer:
    """A loopback HTTP server that answers every request with `reply` (status, content type, body), or never."""

    def __init__(
        self,
        status: int = 200,
        content_type: str = "text/html",
        body: bytes = b"<html>proxy login</html>",
        hang: bool = False,
    ):
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self):
                if outer.hang:
                    time.sleep(60)
                    return
                super().handle_one_request()

            def do_GET(self):
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            do_POST = do_PUT = do_GET

            def log_message(self, *args):
                pass

        self.status, self.content_type, self.body, self.hang = status, content_type, body, hang
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/html", b"<html>proxy login</html>"),
        ("application/json", b'{"events": [1, 2'),
        ("application/json", b'{"unrelated": true}'),
        ("application/json", b"[1, 2, 3]"),
    ],
)
def test_a_reply_that_is_not_the_servers_is_one_line_and_waited_out(content_type, body):
    from framework.feedback_client import FeedbackTimeout

    fake = FakeServer(200, content_type, body)
    logs: list[str] = []
    try:
        client = FeedbackClient(fake.url, log=logs.append, max_backoff=0.2)
        with pytest.raises(FeedbackTimeout):
            client.events("run-1", 0, deadline=time.monotonic() + 1.5)
    finally:
        fake.stop()
    assert len(logs) == 1 and "\n" not in logs[0] and "not the feedback server" in logs[0], logs


def test_a_server_that_hangs_does_not_push_past_the_deadline():
    from framework.feedback_client import FeedbackTimeout

    fake = FakeServer(hang=True)
    try:
        client = FeedbackClient(fake.url, log=lambda m: None)  # 30 s per request otherwise
        start = time.monotonic()
        with pytest.raises(FeedbackTimeout):
            client.events("run-1", 0, deadline=start + 2.0)
        assert time.monotonic() - start < 3.0
    finally:
        fake.hang = False
        fake.stop()


def test_at_the_deadline_with_the_server_down_acknowledged_answers_are_kept_and_the_close_retried(tmp_path, capsys):
    server = Server(tmp_path / "data").start()
    answered: list[str] = []

    def answer_two_then_kill():
        while len(answered) < 2:
            runs = requests.get(server.url + "/api/runs", timeout=5).json()["runs"]
            q = (
                runs
                and requests.post(server.url + "/api/runs/run-1/lease", json={"client": "a"}, timeout=5).json()["query"]
            )
            if q:
                assert requests.post(
                    server.url + f"/api/queries/{q['id']}/answer",
                    timeout=5,
                    json={"client": "a", "labeler": "a", "choice": "right"},
                ).ok
                answered.append(q["key"])
            time.sleep(0.1)
        time.sleep(1.0)  # the trainer has seen them
        server.kill9()

    threading.Thread(target=answer_two_then_kill, daemon=True).start()
    teacher = HumanTeacher(
        FeedbackClient(server.url, log=lambda m: None, max_backoff=0.3),
        "run-1",
        "InvertedPendulum-v5",
        str(tmp_path),
        clip_size=64,
        timeout=5.0,
        progress=False,
        poll_interval=0.1,
        close_grace=1.0,
    )
    teacher.plan([(100, 4), (200, 4)])
    labels = teacher.answer(query_batch(4))
    assert np.sum(labels == 1.0) == 2 and np.isnan(labels).sum() == 2  # both acknowledged answers count
    out = capsys.readouterr().out
    assert "unreachable at the deadline" in out and "2 answers it acknowledged" in out and "withdrawn" not in out
    closed = [json.loads(line) for line in open(tmp_path / "answers.jsonl") if '"closed"' in line]
    assert closed[-1]["on_server"] is False and closed[-1]["answered"] == 2
    # the server comes back: the next contact closes the old session (its other pairs leave the page)
    server.start()
    try:
        resumed = HumanTeacher(
            FeedbackClient(server.url), "run-1", "InvertedPendulum-v5", str(tmp_path), clip_size=64, progress=False
        )  # a trainer resumed from the run folder knows it too
        assert list(resumed.unclosed) == [0]
        resumed.finish()
        statuses = sorted(q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"])
        assert statuses == ["used", "used", "withdrawn", "withdrawn"]
        assert api(server, "GET", "/api/runs/run-1").json()["trainer"]["state"] == "ended"
    finally:
        server.stop()
    assert "closed_on_server" in (tmp_path / "answers.jsonl").read_text()


def test_the_page_learns_what_the_trainer_does_and_the_url_comes_with_the_first_pairs(tmp_path, capsys):
    server = Server(tmp_path / "data").start()
    seen: list[dict] = []
    labeler = ApiLabeler(
        server.url, choose=lambda q: seen.append(api(server, "GET", "/api/runs/run-1").json()["trainer"]) or "left"
    )
    try:
        teacher = HumanTeacher(
            FeedbackClient(server.url),
            "run-1",
            "InvertedPendulum-v5",
            str(tmp_path),
            clip_size=64,
            progress=False,
            poll_interval=0.1,
        )
        teacher.plan([(100, 12), (300, 2)])
        on_server_at_first = []
        teacher.upload(
            query_batch(12),
            on_first=lambda: on_server_at_first.append(
                len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"])
            ),
        )
        assert 0 < on_server_at_first[0] < 12  # the URL is printed while later clips still render
        labeler.start()
        teacher.answer(query_batch(12))
        after_first = api(server, "GET", "/api/runs/run-1").json()["trainer"]
        time.sleep(0.5)
        teacher.answer(query_batch(2, session=1))
        after_last = api(server, "GET", "/api/runs/run-1").json()["trainer"]
    finally:
        labeler.stop()
        server.stop()
    posted = [t for t in seen if t]  # the labeler may take the first pairs before the trainer says it waits
    assert posted[0]["state"] == "waiting" and posted[0]["sessions_total"] == 2
    assert (
        after_first["state"] == "training" and after_first["sessions_done"] == 1 and after_first["labels_given"] == 12
    )
    assert after_first["next_in_s"] is not None and after_first["next_in_s"] >= 0
    assert after_last["state"] == "finished" and after_last["labels_given"] == 14
    out = capsys.readouterr().out
    assert "feedback session 1 of 2: 12 pairs of clips; the first are ready to label at http" in out


@pytest.mark.parametrize("feedback_async", ["off", "on"])
def test_a_person_ranking_on_the_page_gives_the_trainer_the_pairs_the_ordering_implies(
    tmp_path, runs_dir, feedback_async
):
    """The person switches the run to ranking and places every clip; the trainer takes each query's label from the
    ordering and learns from the pairs it implies between clips of its answered queries (up to
    --ranking-pairs-per-clip per clip), in sessions and asynchronously."""
    from feedback_helpers import RankingLabeler, clip_value

    server = Server(tmp_path / "data").start()
    labeler = RankingLabeler(server.url)
    labeler.start()
    run = f"ranked-{feedback_async}"
    flags = list(HUMAN_RUN)
    flags[flags.index("--feedback-async") + 1] = feedback_async
    flags += ["--feedback-undo-grace", "0.5"]
    flags += ["--ranking-pairs-per-clip", "4", "--feedback-server-url", server.url]
    try:
        result = run_script("sac_rlhf.py", *flags, "--runs-dir", str(runs_dir), "--run-name", run, timeout=300)
    finally:
        labeler.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = api(server, "GET", f"/api/runs/{run}/ranking").json()
    server.stop()
    summary = json.loads((runs_dir / run / "summary.json").read_text())
    clips = 2 * summary["labels_used"]
    assert summary["labels_used"] == 18 and summary["comparisons"] == state["comparisons"] == labeler.comparisons
    # every clip of an answered query is paired with up to 4 placed before it (never with its own query's other clip)
    assert 4 * (clips - 6) <= summary["implied_pairs"] <= 4 * clips
    assert summary["labels_stored"] == 18 + summary["implied_pairs"]
    from framework.preferences import read_preferences

    data = read_preferences(str(runs_dir / run))  # the asked pairs, labelled by the ordering
    for key, label in zip(data.table["key"], data.pairs()["labels"]):
        assert label == float(clip_value(key, "right") > clip_value(key, "left"))
