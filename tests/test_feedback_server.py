"""The feedback server over real HTTP: round trips, malformed input, security, leases, duplicates, and kill -9."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from feedback_helpers import FAKE_MP4, ROOT, SERVER, Server, api, make_run
from framework.preferences import COLUMNS as PREFERENCE_COLUMNS

EXPORT = ROOT / "humanFeedback" / "export.py"


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data", "--lease-seconds", "2", "--max-request-mb", "1").start()
    yield s
    s.stop()


def lease(server, run_id, client, exclude=()):
    r = api(
        server,
        "POST",
        f"/api/runs/{run_id}/lease",
        json={"client": client, "labeler": client, "exclude": list(exclude)},
    )
    assert r.status_code == 200, r.text
    return r.json()["query"]


def answer(server, qid, choice, client="alice", **extra):
    return api(
        server,
        "POST",
        f"/api/queries/{qid}/answer",
        json={"client": client, "labeler": client, "choice": choice, **extra},
    )


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
        (k, c, {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}[c]) for k, c in seen.items()
    ]
    assert api(server, "GET", "/api/runs/run-1/events", params={"since": events["cursor"]}).json()["events"] == []
    labels = api(server, "POST", "/api/runs/run-1/close", json={"keys": keys}).json()["labels"]
    assert {k: v["label"] for k, v in labels.items()} == {
        k: {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}[c] for k, c in seen.items()
    }
    assert all(v["answered"] for v in labels.values())
    assert {q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"]} == {"used"}
    # closing again is idempotent (a trainer that died after closing asks again)
    assert api(server, "POST", "/api/runs/run-1/close", json={"keys": keys}).json()["labels"] == labels
    progress = api(server, "GET", "/api/runs/run-1").json()["progress"]
    assert progress["run_answered"] == 4 and progress["pending"] == 0


def test_upload_is_idempotent_by_key(server):
    keys = make_run(server, n=2)
    again = api(
        server,
        "POST",
        "/api/runs/run-1/queries",
        headers={"X-Prefrl-Client": "t"},
        data={"queries": json.dumps([{"key": keys[0], "session": 0}])},
    )
    assert again.status_code == 200 and again.json() == {"added": [], "existing": [keys[0]]}
    assert len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"]) == 2


MP4 = ("left:k", ("k.mp4", FAKE_MP4, "video/mp4"))
CLIENT = {"X-Prefrl-Client": "t"}


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("POST", "/api/queries/1/answer", {"data": "choice=left"}, 415),  # not JSON
        ("POST", "/api/queries/1/answer", {"json": ["left"]}, 400),  # JSON but not an object
        ("POST", "/api/queries/1/answer", {"json": {"client": "a", "labeler": "a"}}, 400),  # missing field
        ("POST", "/api/queries/1/answer", {"json": {"client": "a", "labeler": "a", "choice": 1}}, 400),  # wrong type
        (
            "POST",
            "/api/queries/1/answer",
            {"json": {"client": "a", "labeler": "a", "choice": "LEFT!"}},
            400,
        ),  # bad value
        (
            "POST",
            "/api/queries/1/answer",
            {"json": {"client": "", "labeler": "a", "choice": "left"}},
            400,
        ),  # empty name
        ("POST", "/api/queries/1/answer", {"json": {"client": "a" * 500, "labeler": "a", "choice": "left"}}, 400),
        ("POST", "/api/queries/999/answer", {"json": {"client": "a", "labeler": "a", "choice": "left"}}, 404),
        ("POST", "/api/queries/abc/answer", {"json": {"client": "a", "labeler": "a", "choice": "left"}}, 404),
        ("POST", "/api/runs/nope/lease", {"json": {"client": "a"}}, 404),  # unknown run
        ("POST", "/api/runs/run-1/lease", {"json": {"client": "a", "exclude": ["x"]}}, 400),  # bad list
        ("PUT", "/api/runs/bad%20id", {"json": {"env_id": "Hopper-v5"}}, 400),  # bad run id
        ("PUT", "/api/runs/run-2", {"json": {"env_id": 5}}, 400),
        ("GET", "/api/runs/run-1/events?since=-1", {}, 400),
        ("GET", "/api/runs/run-1/events?since=abc", {}, 400),
        ("POST", "/api/runs/run-1/queries", {"data": {"queries": "[]"}}, 403),  # upload without header
        ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": "not json"}}, 400),
        ("POST", "/api/runs/run-1/queries", {"headers": CLIENT, "data": {"queries": '[{"key": "k"}]'}}, 400),
        (
            "POST",
            "/api/runs/run-1/queries",
            {"headers": CLIENT, "data": {"queries": '[{"key": "../k", "session": 0}]'}},
            400,
        ),
        (
            "POST",
            "/api/runs/run-1/queries",
            {"headers": CLIENT, "data": {"queries": '[{"key": "k", "session": 0}]'}, "files": [MP4]},
            400,
        ),  # right clip missing
        (
            "POST",
            "/api/runs/run-1/queries",
            {
                "headers": CLIENT,
                "data": {"queries": '[{"key": "k", "session": 0}]'},
                "files": [("left:k", ("k", b"<html>", "video/mp4")), ("right:k", ("k", b"<html>", "video/mp4"))],
            },
            415,
        ),  # not an mp4
        (
            "POST",
            "/api/runs/run-1/queries",
            {
                "headers": CLIENT,
                "data": {"queries": "[]"},
                "files": [("left:k", ("k", b"\0" * 2_000_000, "video/mp4"))],
            },
            413,
        ),  # too big
        ("POST", "/api/runs/run-1/close", {"json": {"keys": "k"}}, 400),
        ("POST", "/api/runs/run-1/close", {"json": {"keys": ["unknown"]}}, 404),
        ("DELETE", "/api/runs/run-1", {}, 405),
    ],
)
def test_malformed_input_gets_a_json_4xx(server, method, path, kwargs, status):
    make_run(server)
    r = api(server, method, path, **kwargs)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"]) == 0  # nothing half-stored


@pytest.mark.parametrize(
    "path",
    [
        "/media/../feedback.sqlite3",
        "/media/..%2ffeedback.sqlite3",
        "/media/%2e%2e%2ffeedback.sqlite3",
        "/media/..%2f..%2f..%2fetc%2fpasswd",
        "/static/../feedback_server.py",
        "/static/..%2ffeedback_server.py",
        "/media/feedback.sqlite3",
        "/static/%2e%2e/feedback_server.py",
    ],
)
def test_path_traversal_is_refused(server, path):
    make_run(server, n=1)
    r = requests.get(server.url + path, timeout=5)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"SQLite" not in r.content and b"root:" not in r.content and b"create_app" not in r.content


def test_no_cross_origin_access(server):
    make_run(server, n=1)
    r = requests.get(server.url + "/api/runs", headers={"Origin": "https://evil.example"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = requests.options(
        server.url + "/api/queries/1/answer",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_off_loopback_needs_a_token(tmp_path):
    refused = subprocess.run(
        [sys.executable, str(SERVER), "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
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
        assert (
            requests.post(
                s.url + f"/api/queries/{q['id']}/answer",
                timeout=5,
                json={"client": "a", "labeler": "a", "choice": "left"},
            ).status_code
            == 401
        )
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
    for needle in [
        "ArrowLeft",
        "ArrowRight",
        "ArrowUp",
        "ArrowDown",
        "Undo",
        "Left is better",
        "Equally good",
        "Can't tell",
    ]:
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
            k for k in keys if k not in (first["key"], second["key"])
        )
        events = api(restarted, "GET", "/api/runs/run-1/events").json()["events"]
        assert [(e["key"], e["choice"]) for e in events] == [(first["key"], "right"), (second["key"], "equal")]
        again = lease(restarted, "run-1", "alice")  # the page picks up where it was
        assert again["id"] == held["id"]
        assert requests.get(restarted.url + again["left"], timeout=5).content == FAKE_MP4
        with sqlite3.connect(data / "feedback.sqlite3") as con:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        restarted.stop()


# ------------------------------------------------------------------------------------------- edge input and fuzzing
NASTY = [
    "\ud800",
    "a\udfff",
    2**63,
    -(2**63) - 1,
    "<4400 digits>",
    1e308 * 10,
    float("nan"),
    -1,
    0,
    True,
    None,
    "",
    "x" * 5000,
    [],
    {},
    [1, "a"],
    {"a": 1},
    "²",
    "left",
    3.5,
    "../x",
    "\x00",
    "é" * 50,
]


def raw(server, method, path, body: str | bytes | None = None, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    return requests.request(method, server.url + path, data=body, headers=h, timeout=10)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/runs/run-1/lease", '{"client": "\\ud800"}'),
        ("POST", "/api/runs/run-1/lease", '{"client": "a", "labeler": "\\ud800"}'),
        ("PUT", "/api/runs/run-2", '{"env_id": "\\ud800"}'),
        ("PUT", "/api/runs/run-2", '{"env_id": "Hopper-v5", "question": "\\udfff?"}'),
        ("POST", "/api/queries/1/answer", '{"client": "a", "labeler": "\\ud800", "choice": "left"}'),
        ("POST", f"/api/queries/{2**63}/answer", '{"client": "a", "labeler": "a", "choice": "left"}'),
        ("POST", f"/api/queries/{'9' * 5000}/answer", '{"client": "a", "labeler": "a", "choice": "left"}'),
        ("POST", "/api/runs/run-1/lease", f'{{"client": "a", "exclude": [{2**63}]}}'),
        ("POST", "/api/leases/renew", f'{{"client": "a", "ids": [{2**64}]}}'),
        ("POST", "/api/runs/run-1/lease", f'{{"client": "a", "exclude": [{"9" * 4400}]}}'),
        ("GET", "/api/runs/run-1/events?since=%C2%B2", None),
        ("GET", f"/api/runs/run-1/events?since={2**63}", None),
        ("GET", f"/api/runs/run-1/events?since={'1' * 4400}", None),
        ("POST", "/api/runs/run-1/lease", "[" * 100_000 + "]" * 100_000),
        ("POST", "/api/runs/run-1/close", '{"keys": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("POST", "/api/runs/run-1/lease", b'{"client": "\xff\xfe"}'),
        ("PUT", "/api/runs/run-1/status", f'{{"state": "training", "sessions_done": {2**63}}}'),
        ("PUT", "/api/runs/run-1/status", '{"state": "training", "next_in_s": NaN}'),
        ("PUT", "/api/runs/run-1/status", f'{{"state": "training", "next_in_s": {10**400}}}'),
        ("PUT", "/api/runs/run-1/status", '{"state": "\\ud800"}'),
    ],
)
def test_edge_input_is_a_4xx_never_a_500(server, method, path, body):
    make_run(server, n=1)
    r = raw(server, method, path, body, headers={"X-Prefrl-Client": "t"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "error" in r.json() and "\n" not in r.json()["error"]


@pytest.mark.parametrize(
    "queries",
    [
        f'[{{"key": "k", "session": {"9" * 4400}}}]',
        f'[{{"key": "k", "session": {2**63}}}]',
        '[{"key": "\\ud800", "session": 0}]',
        "[" * 50_000,
        '[{"key": "k", "session": 0, "left_valid": 0}]',
        '[{"key": "k", "session": 0, "right_valid": "1"}]',
    ],
)
def test_edge_input_in_an_upload_is_a_4xx(server, queries):
    make_run(server)
    files = [("left:k", ("k.mp4", FAKE_MP4, "video/mp4")), ("right:k", ("k.mp4", FAKE_MP4, "video/mp4"))]
    r = api(server, "POST", "/api/runs/run-1/queries", headers=CLIENT, data={"queries": queries}, files=files)
    assert r.status_code == 400, r.text
    assert list((server.data_dir / "media").iterdir()) == []  # nothing written


def test_fuzzing_every_endpoint_gives_no_5xx_and_leaves_a_sound_database(server):
    """A few thousand random requests (valid shapes filled with hostile values) against every route."""
    import random

    rng = random.Random(0)
    keys = make_run(server, n=6)
    make_run(server, "run-2", n=3)
    s = requests.Session()
    routes = [
        ("PUT", "/api/runs/{run}", ["env_id", "question"]),
        ("PUT", "/api/runs/{run}/status", ["state", "sessions_done", "sessions_total", "next_in_s", "labels_given"]),
        ("POST", "/api/runs/{run}/lease", ["client", "labeler", "exclude"]),
        ("POST", "/api/leases/renew", ["client", "ids"]),
        ("POST", "/api/queries/{qid}/answer", ["client", "labeler", "choice", "response_ms"]),
        ("POST", "/api/runs/{run}/undo", ["client", "labeler"]),
        ("POST", "/api/runs/{run}/close", ["keys"]),
        ("GET", "/api/runs/{run}/events", []),
        ("GET", "/api/runs/{run}/answers", []),
        ("GET", "/api/runs/{run}", []),
        ("GET", "/api/runs", []),
        ("GET", "/api/runs/{run}/queries", []),
        ("GET", "/media/{clip}", []),
        ("PUT", "/api/runs/{run}/mode", ["mode", "client"]),
        ("POST", "/api/runs/{run}/ranking/next", ["client", "labeler"]),
        ("POST", "/api/runs/{run}/ranking/answer", ["client", "labeler", "clip", "against", "answer", "response_ms"]),
        ("POST", "/api/runs/{run}/ranking/undo", ["client", "labeler"]),
        ("GET", "/api/runs/{run}/ranking", []),
    ]
    good = {
        "env_id": "Hopper-v5",
        "question": "Which?",
        "state": "training",
        "sessions_done": 1,
        "sessions_total": 3,
        "next_in_s": 12.5,
        "labels_given": 4,
        "client": "c1",
        "labeler": "l1",
        "exclude": [1],
        "ids": [1, 2],
        "choice": "left",
        "response_ms": 1234.5,
        "keys": keys[:2],
        "mode": "ranking",
        "clip": "1:right",
        "against": "1:left",
        "answer": "better",
    }
    statuses = []
    for _ in range(3000):
        method, template, names = rng.choice(routes)
        path = template.format(
            run=rng.choice(["run-1", "run-2", "run-1", "nope", "%ED%A0%80", "a" * 300]),
            qid=rng.choice(["1", "2", "7", "0", str(2**63), "-1", "1e3", "%C2%B2"]),
            clip=rng.choice(["x.mp4", "0" * 32 + ".mp4", "..%2f..%2fetc%2fpasswd"]),
        )
        body = {n: (rng.choice(NASTY) if rng.random() < 0.3 else good[n]) for n in names if rng.random() < 0.9}
        if rng.random() < 0.1:
            body[rng.choice(["extra", "client"])] = {"deep": [[[[rng.choice(NASTY)]]]]}
        params = {"since": rng.choice(["0", "5", "-1", "²", "1" * 30, ""])} if "events" in template else None
        data = json.dumps(body, allow_nan=True).replace('"<4400 digits>"', "9" * 4400) if method != "GET" else None
        headers = {"Content-Type": rng.choice(["application/json"] * 4 + ["text/plain"]), "X-Prefrl-Client": "fuzz"}
        r = s.request(method, server.url + path, data=data, params=params, headers=headers, timeout=10)
        statuses.append(r.status_code)
        if r.status_code >= 400:
            assert "error" in r.json(), r.text
    assert max(statuses) < 500, [st for st in statuses if st >= 500][:5]
    assert statuses.count(200) > 300  # the valid requests among them were served
    with sqlite3.connect(server.data_dir / "feedback.sqlite3") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert "Traceback" not in server.log_path.read_text()


# ----------------------------------------------------------------------------------------------------- security
def test_only_loopback_host_names_are_answered_on_loopback(server):
    make_run(server, n=1)
    for host in ["attacker.test", "attacker.test:80", "10.0.0.1", "example.org:5001", "127.0.0.1.attacker.test"]:
        r = requests.post(server.url + "/api/runs/run-1/lease", json={"client": "a"}, headers={"Host": host}, timeout=5)
        assert r.status_code == 400 and "host" in r.json()["error"], host
        assert requests.get(server.url + "/", headers={"Host": host}, timeout=5).status_code == 400
    for host in [f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}", "127.0.0.2"]:
        assert requests.get(server.url + "/api/runs", headers={"Host": host}, timeout=5).status_code == 200, host


def test_off_loopback_the_configured_host_names_are_answered(tmp_path):
    s = Server(tmp_path / "data", "--allowed-hosts", "labels.example.org,127.0.0.1", host="0.0.0.0", token="t").start()
    try:
        assert api(s, "GET", "/api/runs", headers={"Host": "labels.example.org"}).status_code == 200
        assert api(s, "GET", "/api/runs", headers={"Host": "attacker.test"}).status_code == 400
    finally:
        s.stop()


def test_undo_takes_back_only_the_same_clients_answer(server):
    make_run(server, n=2)
    q = lease(server, "run-1", "alice")
    assert answer(server, q["id"], "left", client="alice").status_code == 200
    # bob uses alice's labeler name: not enough
    r = api(server, "POST", "/api/runs/run-1/undo", json={"client": "bob", "labeler": "alice"})
    assert r.status_code == 409
    r = api(server, "POST", "/api/runs/run-1/undo", json={"client": "alice", "labeler": "someone"})
    assert r.status_code == 200 and r.json()["query"]["id"] == q["id"]


def test_a_token_moves_from_the_url_to_a_cookie_and_never_reaches_the_log(tmp_path):
    s = Server(tmp_path / "data", host="127.0.0.1", token="s3cret-value").start()
    try:
        make_run(s, n=1)
        browser = requests.Session()
        first = browser.get(s.url + "/?token=s3cret-value", timeout=5)
        assert first.status_code == 200
        cookie = first.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"prefrl_token_{s.port}" in cookie
        # from now on the page sends neither a header nor ?token=: the cookie carries it, clips included
        q = browser.post(s.url + "/api/runs/run-1/lease", json={"client": "a"}, timeout=5).json()["query"]
        assert "token" not in q["left"]
        assert browser.get(s.url + q["left"], timeout=5).content == FAKE_MP4
        assert requests.get(s.url + q["left"], timeout=5).status_code == 401  # not without it
        assert requests.get(s.url + "/?token=wrong", timeout=5).status_code == 401
    finally:
        s.stop()
    logged = s.log_path.read_text()
    assert "token=REDACTED" in logged and "s3cret-value" not in logged


def test_the_page_cannot_be_framed_by_another_site(server):
    for path in ["/", "/api/runs"]:
        r = requests.get(server.url + path, timeout=5)
        assert (
            r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        )
        assert "Werkzeug" not in r.headers.get("Server", "")


def test_media_links_are_not_followed(server, tmp_path):
    make_run(server, n=1)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    link = server.data_dir / "media" / ("a" * 32 + ".mp4")
    link.symlink_to(secret)
    r = requests.get(server.url + "/media/" + link.name, timeout=5)
    assert r.status_code == 404 and b"private" not in r.content


def test_an_upload_of_1000_queries_is_accepted_and_1001_refused(server):
    make_run(server)
    for n, status in [(1000, 200), (1001, 400)]:
        keys = [f"n{n}-{i}" for i in range(n)]
        files = [(f"{side}:{k}", (f"{k}.mp4", FAKE_MP4, "video/mp4")) for k in keys for side in ("left", "right")]
        r = api(
            server,
            "POST",
            "/api/runs/run-1/queries",
            headers=CLIENT,
            files=files,
            data={"queries": json.dumps([{"key": k, "session": 0} for k in keys])},
        )
        assert r.status_code == status, r.text
    assert len(api(server, "GET", "/api/runs/run-1/queries").json()["queries"]) == 1000
    assert "most 1000 queries" in SERVER.read_text()  # the documented limit is the enforced one


def test_clip_files_match_the_database_after_a_crash(tmp_path):
    """Orphans (uploads killed before their commit) are removed at start; a committed clip still under its temporary
    name (killed between commit and rename) is completed."""
    data = tmp_path / "data"
    s = Server(data).start()
    make_run(s, n=2)
    s.stop()
    media = data / "media"
    with sqlite3.connect(data / "feedback.sqlite3") as con:
        committed = con.execute("SELECT left_clip FROM queries LIMIT 1").fetchone()[0]
    os.replace(media / committed, media / f".{committed}.tmp")  # killed between commit and rename
    (media / ("b" * 32 + ".mp4")).write_bytes(FAKE_MP4)  # an orphan clip
    (media / f".{'c' * 32}.mp4.tmp").write_bytes(FAKE_MP4)  # an upload killed before its commit
    s.start()
    try:
        with sqlite3.connect(data / "feedback.sqlite3") as con:
            referenced = {n for row in con.execute("SELECT left_clip, right_clip FROM queries") for n in row}
        assert {p.name for p in media.iterdir()} == referenced
        q = lease(s, "run-1", "a")
        assert requests.get(s.url + q["left"], timeout=5).content == FAKE_MP4
    finally:
        s.stop()


def test_trainer_status_clip_ends_and_who_holds_what_reach_the_page(server):
    assert api(server, "PUT", "/api/runs/run-1", json={"env_id": "Hopper-v5"}).ok
    files = [(f"{side}:k{i}", ("k.mp4", FAKE_MP4, "video/mp4")) for i in range(2) for side in ("left", "right")]
    r = api(
        server,
        "POST",
        "/api/runs/run-1/queries",
        headers=CLIENT,
        files=files,
        data={"queries": json.dumps([{"key": "k0", "session": 0, "left_valid": 0.5}, {"key": "k1", "session": 0}])},
    )
    assert r.ok, r.text
    assert api(server, "GET", "/api/runs/run-1").json()["trainer"] is None
    status = {"state": "training", "sessions_done": 1, "sessions_total": 3, "next_in_s": 90.0, "labels_given": 2}
    assert api(server, "PUT", "/api/runs/run-1/status", headers=CLIENT, json=status).ok
    assert api(server, "PUT", "/api/runs/run-1/status", json=status).status_code == 403  # trainers only
    assert (
        api(server, "PUT", "/api/runs/run-1/status", headers=CLIENT, json={**status, "state": "x"}).status_code == 400
    )
    seen = api(server, "GET", "/api/runs").json()["runs"][0]["trainer"]
    assert {k: seen[k] for k in status} == status and 0 <= seen["age_s"] < 5
    a = api(server, "POST", "/api/runs/run-1/lease", json={"client": "tab-a"}).json()
    assert (a["query"]["left_valid"], a["query"]["right_valid"]) == (0.5, 1.0) and a["trainer"]["state"] == "training"
    b = api(server, "POST", "/api/runs/run-1/lease", json={"client": "tab-a", "exclude": [a["query"]["id"]]}).json()
    c = api(server, "POST", "/api/runs/run-1/lease", json={"client": "tab-b"}).json()
    assert c["query"] is None and c["progress"]["held_elsewhere"] == 2 and c["progress"]["pending"] == 2
    assert b["progress"]["held_elsewhere"] == 0
    refused = answer(server, a["query"]["id"], "left", client="tab-b")
    assert refused.status_code == 409 and refused.json()["reason"] == "leased"
    assert answer(server, a["query"]["id"], "left", client="tab-a").ok
    again = answer(server, a["query"]["id"], "right", client="tab-a").json()
    assert again["reason"] == "answered" and again["choice"] == "left"
    api(server, "POST", "/api/runs/run-1/close", json={"keys": ["k0", "k1"]})
    assert answer(server, b["query"]["id"], "left", client="tab-a").json()["reason"] == "withdrawn"


def test_an_older_database_file_is_upgraded_in_place(tmp_path):
    """A data folder written before clip ends, trainer status and response times existed keeps its answers and gains
    the columns; export.py reads it read-only before the upgrade (no response times) and after."""
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    with sqlite3.connect(data / "feedback.sqlite3") as con:
        con.executescript("""
            CREATE TABLE runs (id TEXT PRIMARY KEY, env_id TEXT NOT NULL, question TEXT NOT NULL, created REAL NOT NULL,
                               updated REAL NOT NULL);
            CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(id),
                key TEXT NOT NULL, session INTEGER NOT NULL, left_clip TEXT NOT NULL, right_clip TEXT NOT NULL,
                created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending', choice TEXT, label REAL, labeler TEXT,
                answered_at REAL, lease_client TEXT, lease_until REAL, UNIQUE (run_id, key));
            CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, query_id INTEGER NOT NULL,
                key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('answer', 'undo')), choice TEXT, label REAL,
                labeler TEXT, client TEXT, time REAL NOT NULL);
            INSERT INTO runs VALUES ('old', 'Hopper-v5', 'Which?', 0, 0);
            INSERT INTO events (run_id, query_id, key, kind, choice, label, labeler, client, time)
                VALUES ('old', 1, 'k0', 'answer', 'left', 0.0, 'ann', 'old-tab', 5);""")
        for i in range(2):
            con.execute(
                "INSERT INTO queries (run_id, key, session, left_clip, right_clip, created, status, choice, label) "
                "VALUES ('old', ?, 0, ?, ?, 0, ?, ?, ?)",
                (
                    f"k{i}",
                    f"{i}" * 32 + ".mp4",
                    f"{i + 2}" * 32 + ".mp4",
                    ["answered", "pending"][i],
                    ["left", None][i],
                    [0.0, None][i],
                ),
            )
    for name in ["0" * 32, "1" * 32, "2" * 32, "3" * 32]:
        (data / "media" / f"{name}.mp4").write_bytes(FAKE_MP4)
    before = export(data, "--out", str(tmp_path / "before.jsonl"))
    assert before.returncode == 0, before.stderr
    rows = [json.loads(line) for line in (tmp_path / "before.jsonl").read_text().splitlines()]
    assert [(r["key"], r["answer"], r["labeler_session"], r["response_time_s"]) for r in rows] == [
        ("k0", "left", "old-tab", None),
        ("k1", None, None, None),
    ]
    s = Server(data).start()
    try:
        queries = api(s, "GET", "/api/runs/old/queries").json()["queries"]
        assert [(q["key"], q["status"], q["label"]) for q in queries] == [
            ("k0", "answered", 0.0),
            ("k1", "pending", None),
        ]
        q = lease(s, "old", "a")
        assert q["key"] == "k1" and q["left_valid"] == 1.0
        assert len(list((data / "media").iterdir())) == 4
        assert answer(s, q["id"], "right", client="a", response_ms=700).ok
        events = api(s, "GET", "/api/runs/old/events").json()["events"]
        assert [(e["key"], e["client"], e["response_ms"]) for e in events] == [
            ("k0", "old-tab", None),
            ("k1", "a", 700),
        ]
        rows = api(s, "GET", "/api/runs/old/answers").json()["answers"]
        assert [(r["key"], r["labeler_session"], r["response_time_s"]) for r in rows] == [
            ("k0", "old-tab", None),
            ("k1", "a", 0.7),
        ]
    finally:
        s.stop()
    with sqlite3.connect(data / "feedback.sqlite3") as con:
        for table in ("queries", "events"):
            assert "response_ms" in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def test_stalled_clients_do_not_hold_up_the_others(server):
    """Connections that send half a request and stall (a slow or hostile client) take no worker thread: requests
    from others are still answered at once, also with more stalled clients than the server has threads."""
    import socket

    make_run(server, n=1)
    stalled = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"POST /api/runs/run-1/lease HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(sock)
        for _ in range(20):
            start = time.monotonic()
            assert requests.get(server.url + "/api/runs", timeout=5).status_code == 200
            assert time.monotonic() - start < 1.0
        old = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # a request without an HTTP version
        old.sendall(b"GET /api/runs\r\n\r\n")
        reply = old.recv(200)
        old.close()
        assert not reply.startswith(b"{") and (reply == b"" or reply.startswith(b"HTTP/1."))  # never HTTP/0.9
    finally:
        for sock in stalled:
            sock.close()


# ---------------------------------------------------------------------------------------- response times and export
def export(data_dir, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python humanFeedback/export.py --data-dir <data_dir> args...`"""
    return subprocess.run(
        [sys.executable, str(EXPORT), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_the_response_time_and_the_tab_of_an_answer_are_stored_and_returned(server):
    make_run(server, n=3)
    first = lease(server, "run-1", "tab-a")
    assert answer(server, first["id"], "left", client="tab-a", response_ms=1234.5).ok
    second = lease(server, "run-1", "tab-b")
    assert answer(server, second["id"], "right", client="tab-b").ok  # no response time: unknown
    third = lease(server, "run-1", "tab-b")
    assert answer(server, third["id"], "equal", client="tab-b", response_ms=None).ok
    events = api(server, "GET", "/api/runs/run-1/events").json()["events"]
    assert [(e["key"], e["client"], e["response_ms"]) for e in events] == [
        (first["key"], "tab-a", 1234.5),
        (second["key"], "tab-b", None),
        (third["key"], "tab-b", None),
    ]
    rows = {r["key"]: r for r in api(server, "GET", "/api/runs/run-1/answers").json()["answers"]}
    assert rows[first["key"]]["response_time_s"] == 1.2345 and rows[first["key"]]["labeler_session"] == "tab-a"
    assert rows[second["key"]]["response_time_s"] is None
    # a retried request with another response time stores nothing new
    assert answer(server, first["id"], "left", client="tab-a", response_ms=99).json()["duplicate"] is True
    assert api(server, "GET", "/api/runs/run-1/answers").json()["answers"][0]["response_time_s"] == 1.2345


@pytest.mark.parametrize(
    "value",
    ["true", '"1200"', "-1", "-0.5", "86400001", "1e400", str(10**400), "NaN", "Infinity", "[]", "{}"],
)
def test_a_bad_response_time_is_a_400_and_stores_nothing(server, value):
    make_run(server, n=1)
    q = lease(server, "run-1", "alice")
    body = f'{{"client": "alice", "labeler": "alice", "choice": "left", "response_ms": {value}}}'
    r = raw(server, "POST", f"/api/queries/{q['id']}/answer", body)
    assert r.status_code == 400, (value, r.text)
    assert "response_ms" in r.json()["error"] and "\n" not in r.json()["error"]
    assert api(server, "GET", "/api/runs/run-1/events").json()["events"] == []
    assert api(server, "GET", "/api/runs/run-1/queries").json()["queries"][0]["status"] == "pending"


@pytest.mark.parametrize("value", [0, 86_400_000, 350, 12.25])
def test_response_times_within_a_day_are_accepted(server, value):
    make_run(server, n=1)
    q = lease(server, "run-1", "alice")
    assert answer(server, q["id"], "left", response_ms=value).ok
    assert api(server, "GET", "/api/runs/run-1/events").json()["events"][0]["response_ms"] == value


def answer_every_way(server) -> tuple[list[str], dict]:
    """Six queries of run-1 left in every state: used, answered, skipped, answered again after an undo, undone, and
    withdrawn. Returns the keys and {key: (status, answer, label, labeler, labeler_session, response_time_s, undos)}."""
    keys = make_run(server, n=6)
    ids = []
    for client in ["alice", "bob", "alice", "alice", "carol", "alice"]:  # each holds the pair it answers
        ids.append(lease(server, "run-1", client, exclude=ids)["id"])
    assert answer(server, ids[0], "left", response_ms=500).ok
    assert answer(server, ids[1], "right", client="bob", response_ms=1500).ok
    assert answer(server, ids[2], "skip", response_ms=800).ok
    assert answer(server, ids[3], "equal", response_ms=400).ok
    assert api(server, "POST", "/api/runs/run-1/undo", json={"client": "alice", "labeler": "alice"}).ok
    assert answer(server, ids[3], "right", response_ms=900).ok
    assert answer(server, ids[4], "left", client="carol", response_ms=300).ok
    assert api(server, "POST", "/api/runs/run-1/undo", json={"client": "carol", "labeler": "carol"}).ok
    assert api(server, "POST", "/api/runs/run-1/close", json={"keys": [keys[0], keys[5]]}).ok
    return keys, {
        keys[0]: ("used", "left", 0.0, "alice", "alice", 0.5, 0),
        keys[1]: ("answered", "right", 1.0, "bob", "bob", 1.5, 0),
        keys[2]: ("answered", "skip", None, "alice", "alice", 0.8, 0),
        keys[3]: ("answered", "right", 1.0, "alice", "alice", 0.9, 1),
        keys[4]: ("pending", None, None, None, None, None, 1),
        keys[5]: ("withdrawn", None, None, None, None, None, 0),
    }


# the server's answer table speaks the preference dataset's language (framework/preferences.py): the same names for
# the same facts, plus what only the server knows (status, asked_at, undos)
ANSWER_COLUMNS = [
    *(c for c in PREFERENCE_COLUMNS if c not in ("run", "asked_step", "learned_step", "teacher")),
    "status",
    "asked_at",
    "undos",
]


def test_the_answers_endpoint_gives_one_row_per_query_in_every_state(server):
    start = time.time()
    keys, expected = answer_every_way(server)
    rows = api(server, "GET", "/api/runs/run-1/answers").json()["answers"]
    assert [sorted(r) for r in rows] == [sorted(ANSWER_COLUMNS)] * 6
    assert [r["key"] for r in rows] == keys  # in query order
    assert {
        r["key"]: (
            r["status"],
            r["answer"],
            r["label"],
            r["labeler"],
            r["labeler_session"],
            r["response_time_s"],
            r["undos"],
        )
        for r in rows
    } == expected
    for r in rows:
        assert r["feedback_session"] == 0 and start - 1 < r["asked_at"] < time.time() + 1
        assert (r["answered_at"] is None) == (r["answer"] is None)
        assert r["answered_at"] is None or r["answered_at"] >= r["asked_at"]
    statuses = {q["key"]: q["status"] for q in api(server, "GET", "/api/runs/run-1/queries").json()["queries"]}
    assert statuses == {r["key"]: r["status"] for r in rows}
    assert api(server, "GET", "/api/runs/nope/answers").status_code == 404
    assert api(server, "GET", "/api/runs/bad%20id/answers").status_code == 400
    make_run(server, "empty")
    assert api(server, "GET", "/api/runs/empty/answers").json() == {"answers": []}


def test_the_answers_endpoint_needs_the_token_off_loopback(tmp_path):
    s = Server(tmp_path / "data", host="0.0.0.0", token="s3cret").start()
    try:
        make_run(s, n=1)
        assert requests.get(s.url + "/api/runs/run-1/answers", timeout=5).status_code == 401
        assert len(api(s, "GET", "/api/runs/run-1/answers").json()["answers"]) == 1
    finally:
        s.stop()


def test_export_writes_the_endpoints_rows_as_parquet_csv_and_jsonl(server, tmp_path):
    import csv

    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    answer_every_way(server)
    rows = api(server, "GET", "/api/runs/run-1/answers").json()["answers"]
    done = export(server.data_dir, "--run", "run-1", "--out", str(tmp_path / "answers.parquet"))  # server running
    assert done.returncode == 0 and done.stderr == "" and "6 rows of run run-1" in done.stdout, done.stderr
    table = pyarrow_parquet.read_table(tmp_path / "answers.parquet")
    assert sorted(table.column_names) == sorted(ANSWER_COLUMNS) and table.to_pylist() == rows
    assert str(table.schema.field("feedback_session").type) == "int64"
    server.stop()
    done = export(server.data_dir, "--out", str(tmp_path / "answers.csv"))  # the only run, the server gone
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "answers.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    assert export(server.data_dir, "--out", str(tmp_path / "answers.jsonl")).returncode == 0
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    listed = export(server.data_dir, "--list")
    assert listed.returncode == 0 and listed.stdout.split() == ["run-1", "Hopper-v5", "4", "of", "6", "answered"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "answers"))) == [
        "answers.csv",
        "answers.jsonl",
        "answers.parquet",
    ]


def test_export_refuses_bad_input_in_one_line(server, tmp_path):
    make_run(server, n=1)
    out = str(tmp_path / "a.csv")
    cases = [
        (tmp_path / "missing", ["--out", out], "no data folder"),
        (tmp_path, ["--out", out], "no feedback.sqlite3"),
        (server.data_dir, ["--run", "nope", "--out", out], "no run 'nope'"),
        (server.data_dir, ["--out", str(tmp_path / "a.xlsx")], "must end in"),
        (server.data_dir, ["--out", str(tmp_path / "nowhere" / "a.csv")], "no folder"),
        (server.data_dir, [], "--out"),
        (server.data_dir, ["--bogus"], "unrecognized"),
    ]
    make_run(server, "run-2")
    cases.append((server.data_dir, ["--out", out], "2 runs: choose one with --run"))
    for data_dir, args, words in cases:
        r = export(data_dir, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "a.csv").exists()
    # without pyarrow, parquet is refused with the way out; csv still works
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "pyarrow.py").write_text("raise ImportError('hidden')\n")
    no_arrow = export(
        server.data_dir, "--run", "run-1", "--out", str(tmp_path / "a.parquet"), env={"PYTHONPATH": str(hide)}
    )
    assert no_arrow.returncode == 2 and no_arrow.stderr.count("\n") == 1 and "pip install pyarrow" in no_arrow.stderr
    assert not (tmp_path / "a.parquet").exists()
    assert export(server.data_dir, "--run", "run-1", "--out", out, env={"PYTHONPATH": str(hide)}).returncode == 0
