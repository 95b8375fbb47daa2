"""The feedback server over real HTTP: round trips, malformed input, security, leases, duplicates, and kill -9."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from feedback_helpers import FAKE_MP4, SERVER, Server, api, make_run


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data", "--lease-seconds", "2", "--max-request-mb", "1").start()
    yield s
    s.stop()


def lease(server, run_id, client, exclude=()):
    r = api(server, "POST", f"/api/runs/{run_id}/lease", json={"client": client, "labeler": client, "exclude": list(exclude)})
    assert r.status_code == 200, r.text
    return r.json()["query"]


def answer(server, qid, choice, client="alice"):
    return api(server, "POST", f"/api/queries/{qid}/answer", json={"client": client, "labeler": client, "choice": choice})


def test_round_trip_from_upload_to_final_labels(server):
    keys = make_run(server, n=4)
    runs = api(server, "GET", "/api/runs").json()["runs"]
    assert [(r["id"], r["pending"], r["total"]) for r in runs] == [("run-1", 4, 4)]
    seen = {}
    for choice in ["left", "right", "equal", "skip"]:
        q = lease(server, "run-1", "alice")
        assert q["question"] == "Which hops higher?" and q["env_id"] == "Hopper-v5"
        clip = api(server, "GET", q["left"])
        assert clip.status_code == 200 and clip.content == FAKE_MP4 and clip.headers["Content-Type"] == "video/mp4"
        r = answer(server, q["id"], choice)
        assert r.status_code == 200 and r.json()["duplicate"] is False
        seen[q["key"]] = choice
    assert lease(server, "run-1", "alice") is None
    events = api(server, "GET", "/api/runs/run-1/events", params={"since": 0}).json()
    assert [(e["key"], e["choice"], e["label"]) for e in events["events"]] == [
        (k, c, {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}[c]) for k, c in seen.items()]
    assert api(server, "GET", "/api/runs/run-1/events", params={"since": events["cursor"]}).json()["events"] == []
    labels = api(server, "POST", "/api/runs/run-1/close", json={"keys": keys}).json()["labels"]
    assert {k: v["label"] for k, v in labels.items()} == {k: {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}[c]
                                                           for k, c in seen.items()}
    assert all(v["answered"] for v in labels.values())
    assert {q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"]} == {"used"}
    # closing again is idempotent (a trainer that died after closing asks again)
    assert api(server, "POST", "/api/runs/run-1/close", json={"keys": keys}).json()["labels"] == labels
    progress = api(server, "GET", "/api/runs/run-1").json()["progress"]
    assert progress["run_answered"] == 4 and progress["pending"] == 0


def test_upload_is_idempotent_by_key(server):
    keys = make_run(server, n=2)
    again = api(server, "POST", "/api/runs/run-1/queries", headers={"X-Prefrl-Client": "t"},
                data={"queries": json.dumps([{"key": keys[0], "session": 0}])})
    assert again.status_code == 200 and again.json() == {"added": [], "existing": [keys[0]]}
    assert len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"]) == 2


MP4 = ("left:k", ("k.mp4", FAKE_MP4, "video/mp4"))
CLIENT = {"X-Prefrl-Client": "t"}


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("POST", "/api/queries/1/answer", {"data": "choice=left"}, 415),                     # not JSON
    ("POST", "/api/queries/1/answer", {"json": ["left"]}, 400),                          # JSON but not an object
    ("POST", "/api/queries/1/answer", {"json": {"client": "a", "labeler": "a"}}, 400),   # missing field
    ("POST", "/api/queries/1/answer", {"json": {"client": "a", "labeler": "a", "choice": 1}}, 400),       # wrong type
    ("POST", "/api/queries/1/answer", {"json": {"client": "a", "labeler": "a", "choice": "LEFT!"}}, 400),  # bad value
    ("POST", "/api/queries/1/answer", {"json": {"client": "", "labeler": "a", "choice": "left"}}, 400),   # empty name
    ("POST", "/api/queries/1/answer", {"json": {"client": "a" * 500, "labeler": "a", "choice": "left"}}, 400),
    ("POST", "/api/queries/999/answer", {"json": {"client": "a", "labeler": "a", "choice": "left"}}, 404),
    ("POST", "/api/queries/abc/answer", {"json": {"client": "a", "labeler": "a", "choice": "left"}}, 404),
    ("POST", "/api/runs/nope/lease", {"json": {"client": "a"}}, 404),                     # unknown run
    ("POST", "/api/runs/run-1/lease", {"json": {"client": "a", "exclude": ["x"]}}, 400),  # bad list
    ("PUT", "/api/runs/bad%20id", {"json": {"env_id": "Hopper-v5"}}, 400),               # bad run id
    ("PUT", "/api/runs/run-2", {"json": {"env_id": 5}}, 400),
    ("GET", "/api/runs/run-1/events?since=-1", {}, 400),
    ("GET", "/api/runs/run-1/events?since=abc", {}, 400),
    ("POST", "/api/runs/run-1/queries", {"data": {"queries": "[]"}}, 403),               # upload without header
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": "not json"}}, 400),
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": '[{"key": "k"}]'}}, 400),
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": '[{"key": "../k", "session": 0}]'}}, 400),
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": '[{"key": "k", "session": 0}]'},
                                         "files": [MP4]}, 400),                          # right clip missing
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": '[{"key": "k", "session": 0}]'},
                                         "files": [("left:k", ("k", b"<html>", "video/mp4")),
                                                   ("right:k", ("k", b"<html>", "video/mp4"))]}, 415),  # not an mp4
    ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": "[]"},
                                         "files": [("left:k", ("k", b"\0" * 2_000_000, "video/mp4"))]}, 413),  # too big
    ("POST", "/api/runs/run-1/close", {"json": {"keys": "k"}}, 400),
    ("POST", "/api/runs/run-1/close", {"json": {"keys": ["unknown"]}}, 404),
    ("DELETE", "/api/runs/run-1", {}, 405),
])
def test_malformed_input_gets_a_json_4xx(server, method, path, kwargs, status):
    make_run(server)
    r = api(server, method, path, **kwargs)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"]) == 0  # nothing half-stored


@pytest.mark.parametrize("path", ["/media/../feedback.sqlite3", "/media/..%2ffeedback.sqlite3", "/media/%2e%2e%2ffeedback.sqlite3",
                                  "/media/..%2f..%2f..%2fetc%2fpasswd", "/static/../feedback_server.py",
                                  "/static/..%2ffeedback_server.py", "/media/feedback.sqlite3", "/static/%2e%2e/feedback_server.py"])
def test_path_traversal_is_refused(server, path):
    make_run(server, n=1)
    r = requests.get(server.url + path, timeout=5)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"SQLite" not in r.content and b"root:" not in r.content and b"create_app" not in r.content


def test_no_cross_origin_access(server):
    make_run(server, n=1)
    r = requests.get(server.url + "/api/runs", headers={"Origin": "https://evil.example"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = requests.options(server.url + "/api/queries/1/answer", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_off_loopback_needs_a_token(tmp_path):
    refused = subprocess.run([sys.executable, str(SERVER), "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 2 and "token" in refused.stderr and "Traceback" not in refused.stderr

    s = Server(tmp_path / "data", host="0.0.0.0", token="s3cret").start()
    try:
        for path in ["/api/runs", "/api/health", "/"]:
            assert requests.get(s.url + path, timeout=5).status_code == 401
            assert requests.get(s.url + path, headers={"X-Prefrl-Token": "wrong"}, timeout=5).status_code == 401
        assert requests.get(s.url + "/api/runs", headers={"X-Prefrl-Token": "s3cret"}, timeout=5).status_code == 200
        assert requests.get(s.url + "/?token=s3cret", timeout=5).status_code == 200
        keys = make_run(s, n=1)
        q = api(s, "POST", "/api/runs/run-1/lease", json={"client": "a"}).json()["query"]
        assert requests.get(s.url + q["left"], timeout=5).status_code == 401
        assert requests.get(s.url + q["left"] + "?token=s3cret", timeout=5).status_code == 200
        assert requests.post(s.url + f"/api/queries/{q['id']}/answer", timeout=5,
                             json={"client": "a", "labeler": "a", "choice": "left"}).status_code == 401
        assert keys
    finally:
        s.stop()


def test_two_labelers_never_hold_the_same_query(server):
    make_run(server, n=3)
    a = lease(server, "run-1", "alice")
    b = lease(server, "run-1", "bob")
    a2 = lease(server, "run-1", "alice", exclude=[a["id"]])  # alice preloads a second one
    assert len({a["id"], b["id"], a2["id"]}) == 3
    assert lease(server, "run-1", "carol") is None  # all three held
    assert answer(server, a["id"], "left", client="bob").status_code == 409  # bob cannot answer alice's query
    assert lease(server, "run-1", "alice")["id"] in (a["id"], a2["id"])  # alice gets her own back
    time.sleep(2.5)  # alice closed her tab: the leases expire
    c = lease(server, "run-1", "carol")
    assert c["id"] in (a["id"], a2["id"])
    assert answer(server, c["id"], "right", client="carol").status_code == 200


def test_duplicate_answers_are_stored_once(server):
    make_run(server, n=1)
    q = lease(server, "run-1", "alice")
    assert answer(server, q["id"], "left").json()["duplicate"] is False
    assert answer(server, q["id"], "left").json()["duplicate"] is True  # a retried request
    conflicting = answer(server, q["id"], "right")
    assert conflicting.status_code == 409 and "undo" in conflicting.json()["error"]
    events = api(server, "GET", "/api/runs/run-1/events").json()["events"]
    assert [(e["kind"], e["choice"]) for e in events] == [("answer", "left")]


def test_undo_until_the_trainer_has_used_the_answer(server):
    keys = make_run(server, n=2)
    q = lease(server, "run-1", "alice")
    answer(server, q["id"], "left")
    undone = api(server, "POST", "/api/runs/run-1/undo", json={"client": "alice", "labeler": "alice"})
    assert undone.status_code == 200 and undone.json()["query"]["id"] == q["id"]
    assert answer(server, q["id"], "right").status_code == 200  # answered again, differently
    events = api(server, "GET", "/api/runs/run-1/events").json()["events"]
    assert [(e["kind"], e["choice"]) for e in events] == [("answer", "left"), ("undo", None), ("answer", "right")]
    api(server, "POST", "/api/runs/run-1/close", json={"keys": keys})
    late = api(server, "POST", "/api/runs/run-1/undo", json={"client": "alice", "labeler": "alice"})
    assert late.status_code == 409 and "used" in late.json()["error"]
    statuses = {q["key"]: q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"]}
    assert statuses == {keys[0]: "used", keys[1]: "withdrawn"}
    assert lease(server, "run-1", "alice") is None  # withdrawn queries leave the page


def test_the_page_is_served_with_its_controls(server):
    html = requests.get(server.url + "/", timeout=5).text
    for needle in ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Undo", "Left is better", "Equally good", "Can't tell"]:
        assert needle in html


def test_kill_9_loses_no_answer_and_keeps_pending_queries_pending(tmp_path):
    data = tmp_path / "data"
    s = Server(data).start()
    keys = make_run(s, n=4)
    first = lease(s, "run-1", "alice")
    second = lease(s, "run-1", "alice", exclude=[first["id"]])
    assert answer(s, first["id"], "right").status_code == 200
    assert answer(s, second["id"], "equal").status_code == 200
    held = lease(s, "run-1", "alice")  # a third one on screen when the server dies
    s.kill9()
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/api/runs", timeout=2)

    restarted = Server(data)
    restarted.port, restarted.url = s.port, s.url
    restarted.start()
    try:
        queries = {q["key"]: q for q in api(restarted, "GET", "/api/runs/run-1/queries").json()["queries"]}
        assert queries[first["key"]]["status"] == "answered" and queries[first["key"]]["label"] == 1.0
        assert queries[second["key"]]["status"] == "answered" and queries[second["key"]]["label"] == 0.5
        assert sorted(k for k, q in queries.items() if q["status"] == "pending") == sorted(
            k for k in keys if k not in (first["key"], second["key"]))
        events = api(restarted, "GET", "/api/runs/run-1/events").json()["events"]
        assert [(e["key"], e["choice"]) for e in events] == [(first["key"], "right"), (second["key"], "equal")]
        again = lease(restarted, "run-1", "alice")  # the page picks up where it was
        assert again["id"] == held["id"]
        assert requests.get(restarted.url + again["left"], timeout=5).content == FAKE_MP4
        with sqlite3.connect(data / "feedback.sqlite3") as con:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        restarted.stop()
