"""Ranking mode on a real feedback server: clips of pending queries inserted into an ordering over HTTP."""

from __future__ import annotations

import math

import pytest

from feedback_helpers import Server, api, clip_value, make_run
from feedback_helpers import rank_one as rank_clip


def value_of(clip: dict) -> float:
    return clip_value(clip["key"], clip["side"])


def rank_one(server: Server, run: str, client: str = "tab-1", labeler: str = "ann") -> dict | None:
    return rank_clip(server.url, run, client, labeler)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data", "--quiet").start()
    yield s
    s.stop()


def set_mode(server: Server, run: str, mode: str, client: str = "tab-1"):
    return api(server, "PUT", f"/api/runs/{run}/mode", json={"mode": mode, "client": client})


def test_ranking_a_session_of_60_queries_survives_kill_9(server):
    """60 queries (120 clips), about 700 comparisons: every query is answered with the label the true values give, the
    ordering is the true order, a kill -9 midway loses no placement, and each clip took at most ceil(log2(T + 1))."""
    keys = make_run(server, "run-r", 60)
    assert set_mode(server, "run-r", "ranking").json() == {"mode": "ranking"}
    assert api(server, "GET", "/api/runs").json()["runs"][0]["mode"] == "ranking"
    comparisons, bound, killed_at = 0, 0, None
    while (done := rank_one(server, "run-r")) is not None:
        comparisons += 1
        if comparisons == 1 or done["placed"]:
            bound += math.ceil(math.log2(len(api(server, "GET", "/api/runs/run-r/ranking").json()["tiers"]) + 1))
        if comparisons == 300:
            before = api(server, "GET", "/api/runs/run-r/ranking").json()
            server.kill9()
            server.start()
            assert api(server, "GET", "/api/runs/run-r/ranking").json() == before
            killed_at = before["comparisons"]
    assert killed_at == 300
    state = api(server, "GET", "/api/runs/run-r/ranking").json()
    assert state["comparisons"] == comparisons and state["pending"] is None
    clips = [c for tier in state["tiers"] for c in tier]
    assert len(clips) == 120 and all(len(t) == 1 for t in state["tiers"])  # no two true values are equal
    values = [value_of(c) for c in clips]
    assert values == sorted(values, reverse=True)  # best first
    assert comparisons <= bound < 120 * 7.0  # binary insertion, far below the 119 * 120 / 2 pairs it implies
    answers = {q["key"]: q for q in api(server, "GET", "/api/runs/run-r/queries").json()["queries"]}
    for key in keys:
        truth = value_of({"key": key, "side": "right"}) > value_of({"key": key, "side": "left"})
        assert answers[key]["status"] == "answered" and answers[key]["label"] == float(truth)
        assert answers[key]["choice"] == ("right" if truth else "left")
    events = api(server, "GET", "/api/runs/run-r/events?since=0").json()["events"]
    assert sorted(e["key"] for e in events if e["kind"] == "answer") == sorted(keys)
    closed = api(server, "POST", "/api/runs/run-r/close", json={"keys": keys}).json()["labels"]
    assert all(closed[k]["answered"] for k in keys)


def test_ranking_undo_stale_answers_and_other_labelers(server):
    make_run(server, "run-u", 3)
    # in pairs mode the ranking routes change nothing
    r = api(server, "POST", "/api/runs/run-u/ranking/next", json={"client": "tab-1"})
    assert r.status_code == 200 and r.json()["mode"] == "pairs" and r.json()["comparison"] is None
    set_mode(server, "run-u", "ranking")
    first = rank_one(server, "run-u")  # q0-0:left placed at once; q0-0:right compared with it and placed
    assert first["placed"] and first["answered"]
    # undo re-asks that comparison and takes the query's answer back (the trainer's feed shows the undo)
    r = api(server, "POST", "/api/runs/run-u/ranking/undo", json={"client": "tab-1", "labeler": "ann"})
    assert r.status_code == 200, r.text
    again = r.json()["comparison"]
    assert (again["clip"]["id"], again["against"]["id"]) == (
        first["comparison"]["clip"]["id"],
        first["comparison"]["against"]["id"],
    )
    query = api(server, "GET", "/api/runs/run-u/queries").json()["queries"][0]
    assert query["status"] == "pending" and query["label"] is None
    kinds = [e["kind"] for e in api(server, "GET", "/api/runs/run-u/events?since=0").json()["events"]]
    assert kinds == ["answer", "undo"]
    # another tab cannot answer or undo the clip this tab is inserting, and is told so
    other = api(server, "POST", "/api/runs/run-u/ranking/next", json={"client": "tab-2"}).json()
    assert other["comparison"] is None and other["held_elsewhere"]
    body = {"client": "tab-2", "labeler": "bob", "clip": again["clip"]["id"], "against": again["against"]["id"]}
    r = api(server, "POST", "/api/runs/run-u/ranking/answer", json={**body, "answer": "better"})
    assert r.status_code == 409 and r.json()["reason"] == "leased"
    # a stale page (a clip that is not the one being inserted) gets a 409 that names it; a retried answer counts once
    body = {"client": "tab-1", "labeler": "ann", "clip": again["clip"]["id"], "against": again["against"]["id"]}
    wrong = api(server, "POST", "/api/runs/run-u/ranking/answer", json={**body, "clip": "1:left", "answer": "worse"})
    assert wrong.status_code == 409 and wrong.json()["reason"] == "stale"
    assert api(server, "POST", "/api/runs/run-u/ranking/answer", json={**body, "answer": "worse"}).json()["placed"]
    retry = api(server, "POST", "/api/runs/run-u/ranking/answer", json={**body, "answer": "worse"}).json()
    assert retry["duplicate"] is True
    assert api(server, "GET", "/api/runs/run-u/queries").json()["queries"][0]["label"] == 0.0
    r = api(server, "POST", "/api/runs/run-u/ranking/undo", json={"client": "tab-2", "labeler": "bob"})
    assert r.status_code == 409 and r.json()["reason"] == "other"
    # once the trainer has used the answer, undo is refused
    api(server, "POST", "/api/runs/run-u/close", json={"keys": ["q0-0"], "answered_only": True})
    r = api(server, "POST", "/api/runs/run-u/ranking/undo", json={"client": "tab-1", "labeler": "ann"})
    assert r.status_code == 409 and r.json()["reason"] == "used"
    # switching back to pairs gives the clip being inserted back to the pairs, which are leased as before
    assert rank_one(server, "run-u")["placed"] is False  # q0-1:left started and compared, not yet placed
    assert set_mode(server, "run-u", "pairs").status_code == 200
    assert api(server, "GET", "/api/runs/run-u/ranking").json()["pending"] is None
    leased = api(server, "POST", "/api/runs/run-u/lease", json={"client": "tab-3"}).json()
    assert leased["query"]["key"] == "q0-1" and leased["mode"] == "pairs"
    # bad input: one-line 4xx errors
    for path, bad, status in [
        ("/api/runs/run-u/mode", {"mode": "sorted"}, 400),
        ("/api/runs/run-u/ranking/answer", {"client": "t", "labeler": "a", "clip": "x", "against": "y"}, 400),
        ("/api/runs/run-u/ranking/answer", {**body, "answer": "best"}, 400),
        ("/api/runs/nope/ranking/next", {"client": "t"}, 404),
    ]:
        r = api(server, "PUT" if path.endswith("mode") else "POST", path, json=bad)
        assert r.status_code == status and "\n" not in r.json()["error"], (path, r.text)
    set_mode(server, "run-u", "ranking")
    r = api(server, "POST", "/api/runs/run-u/ranking/answer", json={**body, "answer": "better"})
    assert r.status_code == 409 and r.json()["reason"] == "stale"
