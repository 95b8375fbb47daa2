"""The labeling page in a real browser (Debian's Chromium driven by Playwright) against a real feedback server.

The clips are real H.264 files (made once per module with `framework.clips.encode_mp4`), so the page plays, seeks and
preloads them as it does for a trainer. No trainer runs here: the tests speak the trainer's HTTP API themselves.
Screenshots go to each test's temporary folder; the README's come from benchmarks/feedback.py, with real clips.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from feedback_helpers import ROOT, Server, api

CHROMIUM = os.environ.get("PREFRL_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
]
KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "equal": "ArrowUp", "skip": "ArrowDown"}
CHOICES = ["left", "right", "equal", "skip"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (`make test` installs Debian's chromium)"
)


# ------------------------------------------------------------------------------------------------------ clips
def ball_frames(
    colour: tuple[int, int, int], laps: float, valid: float = 1.0, n: int = 40, size: int = 128
) -> np.ndarray:
    """(n, size, size, 3) frames of a ball crossing a gradient; after the `valid` fraction the last frame is repeated,
    darkened, the way a trainer pads a clip whose episode ended inside it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = np.stack([40 + 40 * y, 52 + 50 * y, 70 + 60 * y], axis=-1)
    end = max(1, round(valid * n))
    frames = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        s = min(t, end - 1) / n
        cx, cy = 0.15 + 0.7 * ((s * laps) % 1.0), 0.55 - 0.3 * np.sin(np.pi * ((s * laps) % 1.0))
        ball = ((x - cx) ** 2 + (y - cy) ** 2) < 0.012
        frame = np.where(ball[..., None], np.array(colour, np.float32), background)
        frame[y > 0.82] = (95, 105, 92)
        frames[t] = (frame * (0.45 if t >= end else 1.0)).astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT))
    from framework.clips import encode_mp4

    return {
        "a": encode_mp4(ball_frames((235, 120, 60), 1.0), 20),
        "b": encode_mp4(ball_frames((90, 200, 120), 1.6), 20),
        "ended": encode_mp4(ball_frames((220, 200, 80), 1.3, valid=0.5), 20),
    }


# ------------------------------------------------------------------------------------------------ the server
@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


def post_queries(
    server: Server,
    run: str,
    clips: dict,
    specs: list[dict],
    env_id: str = "Hopper-v5",
    question: str = "Which robot hops further forward?",
) -> list[str]:
    """Upload queries like a trainer: each spec has key and session, optionally left/right (clip names) and
    left_valid/right_valid."""
    assert api(server, "PUT", f"/api/runs/{run}", json={"env_id": env_id, "question": question}).ok
    files = [
        (
            f"{side}:{s['key']}",
            (f"{s['key']}-{side}.mp4", clips[s.get(side, "a" if side == "left" else "b")], "video/mp4"),
        )
        for s in specs
        for side in ("left", "right")
    ]
    meta = [{k: s[k] for k in ("key", "session", "left_valid", "right_valid") if k in s} for s in specs]
    r = api(
        server,
        "POST",
        f"/api/runs/{run}/queries",
        headers={"X-Prefrl-Client": "test"},
        data={"queries": json.dumps(meta)},
        files=files,
    )
    assert r.status_code == 200, r.text
    return [s["key"] for s in specs]


def simple_queries(server, run, clips, n, session=0, prefix="q") -> list[str]:
    return post_queries(server, run, clips, [{"key": f"{prefix}{session}-{i}", "session": session} for i in range(n)])


def put_status(
    server: Server,
    run: str,
    state: str,
    sessions_done: int,
    sessions_total: int | None = None,
    next_in_s: float | None = None,
    labels_given: int = 0,
) -> None:
    r = api(
        server,
        "PUT",
        f"/api/runs/{run}/status",
        headers={"X-Prefrl-Client": "test"},
        json={
            "state": state,
            "sessions_done": sessions_done,
            "sessions_total": sessions_total,
            "next_in_s": next_in_s,
            "labels_given": labels_given,
        },
    )
    assert r.status_code == 200, f"PUT /api/runs/{run}/status -> {r.status_code} {r.text}"


def lease_as(server, run, client, exclude=()):
    r = api(
        server, "POST", f"/api/runs/{run}/lease", json={"client": client, "labeler": client, "exclude": list(exclude)}
    )
    assert r.status_code == 200, r.text
    return r.json()["query"]


def stored_answers(data_dir: Path) -> tuple[dict, list]:
    """{query id: (status, choice, labeler)} and every answer event (query id, choice, client)."""
    con = sqlite3.connect(data_dir / "feedback.sqlite3")
    try:
        queries = {r[0]: r[1:] for r in con.execute("SELECT id, status, choice, labeler FROM queries")}
        events = con.execute("SELECT query_id, choice, client FROM events WHERE kind = 'answer' ORDER BY id").fetchall()
    finally:
        con.close()
    return queries, events


# ------------------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 640})
    yield ctx
    ctx.close()


# the answers waiting in this browser's storage (one key each), and "none is waiting"
QUEUED = (
    "Object.keys(localStorage).filter((k) => k.startsWith('prefrl-answer:')).map((k) => JSON.parse(localStorage[k]))"
)
ALL_SENT = f"() => {QUEUED}.length === 0"

PAIR_READY = """(prev) => {
    const q = document.getElementById('pair').dataset.query;
    const v = [document.getElementById('video-left'), document.getElementById('video-right')];
    return !!q && q !== prev && document.getElementById('buttons').dataset.ready === 'true'
        && v.every(x => x && x.readyState >= 2 && x.videoWidth > 0); }"""


def wait_pair(page, previous: int | None = None, timeout: float = 30_000) -> int:
    """Wait until a pair other than `previous` shows, both clips decoded, answers accepted; return its query id."""
    page.wait_for_function(PAIR_READY, arg=None if previous is None else str(previous), timeout=timeout)
    return int(page.get_attribute("#pair", "data-query"))


def answer_with_key(page, choice: str, previous: int | None = None) -> int:
    """Wait for a pair, answer it with the keyboard, wait until it left the screen; return its query id."""
    qid = wait_pair(page, previous)
    page.keyboard.press(KEYS[choice])
    page.wait_for_function("(q) => document.getElementById('pair').dataset.query !== q", arg=str(qid))
    return qid


def wait_state(page, state: str, timeout: float = 20_000) -> str:
    page.wait_for_function("(s) => document.getElementById('app').dataset.state === s", arg=state, timeout=timeout)
    return page.inner_text("#app")


def client_of(page) -> str:
    return page.evaluate("sessionStorage.getItem('prefrl-client')")


def outbox_size(page) -> int:
    return page.evaluate(f"() => {QUEUED}.length")


def box(page, selector: str) -> dict:
    b = page.locator(selector).bounding_box()
    assert b is not None, f"{selector} is not rendered"
    return b


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """A screenshot in the test's folder (the README's come from benchmarks/feedback.py, with real clips)."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    return path


def open_tabs(context, url: str, run: str, n: int = 2) -> list:
    """`n` tabs of one browser (shared localStorage, one client id each) on the run's labeling view."""
    tabs = [context.new_page() for _ in range(n)]
    for page in tabs:
        page.goto(f"{url}/?run={run}")
    return tabs


# ----------------------------------------------------------------------------------------------------- tests
def test_two_tabs_answer_through_server_restarts_and_every_answer_lands_once_under_its_tab(tmp_path, context, clips):
    server = Server(tmp_path / "data").start()
    try:
        simple_queries(server, "tabs", clips, 30)
        tabs = open_tabs(context, server.url, "tabs")
        for page in tabs:
            wait_pair(page)
        clients = [client_of(page) for page in tabs]
        assert clients[0] and clients[1] and clients[0] != clients[1]  # one id per tab, shared localStorage
        labeler = tabs[0].evaluate("localStorage.getItem('prefrl-labeler')")
        given: list[tuple[int, str, str]] = []  # (query id, choice, client of the tab that answered)
        last = [None, None]
        preloaded = """() => { const v = [...document.querySelectorAll('#preload video')];
                               return v.length === 2 && v.every(x => x.readyState >= 3); }"""

        def answer(i: int) -> None:
            choice = CHOICES[len(given) % 4]
            last[i] = answer_with_key(tabs[i], choice, last[i])
            given.append((last[i], choice, clients[i]))

        for _ in range(3):
            answer(0), answer(1)  # the server is up
            for page in tabs:
                page.wait_for_function(preloaded)
                page.wait_for_function(ALL_SENT)  # those answers landed: the 4 below are the only ones waiting
            server.kill9()
            answer(0), answer(1)  # the preloaded pair shows although the server is gone
            answer(0), answer(1)  # and that one is answered too: nothing is left to show
            for page in tabs:
                text = wait_state(page, "unreachable")
                assert "Cannot reach the feedback server; your answers are safe in this browser" in text
                page.wait_for_function(
                    "() => document.getElementById('banners').innerText.includes('4 answers saved in this browser')"
                )
            assert outbox_size(tabs[0]) == 4
            server.start()
            for page in tabs:  # everything is sent, and labeling goes on
                page.wait_for_function(ALL_SENT, timeout=20_000)
                wait_state(page, "labeling")
                assert page.locator("#offline").is_hidden() and page.locator("#outbox-note").is_hidden()
        queries, events = stored_answers(tmp_path / "data")
    finally:
        server.stop()
    assert len(given) == 18 and len({qid for qid, _, _ in given}) == 18
    for qid, choice, client in given:
        assert queries[qid] == ("answered", choice, labeler), (qid, choice, queries[qid])
        assert [(c, cl) for q, c, cl in events if q == qid] == [(choice, client)]  # once, under the tab that answered
    assert len(events) == 18  # nothing else was stored


def test_the_page_says_what_is_going_on_at_each_stage_of_a_run(tmp_path, context, clips):
    server = Server(tmp_path / "data").start()
    run = "stages"
    page = context.new_page()
    try:
        # e) labeling: a session's pairs are on the page
        keys = simple_queries(server, run, clips, 2, session=0)
        put_status(server, run, "waiting", 0, 2)
        page.goto(f"{server.url}/?run={run}")
        wait_state(page, "labeling")
        assert page.locator("#buttons").is_visible() and page.locator("#nothing").is_hidden()
        assert page.title() == "(2) prefrl feedback"
        first = answer_with_key(page, "left")
        answer_with_key(page, "right", first)
        assert "Every pair of this session is answered" in wait_state(page, "empty")
        assert page.title() == "prefrl feedback"
        # b) the trainer closed the session and trains until the next one
        api(server, "POST", f"/api/runs/{run}/close", json={"keys": keys})
        put_status(server, run, "training", 1, 2, next_in_s=300, labels_given=2)
        text = wait_state(page, "training")
        assert "Session 1 of 2 done; next pairs in about 5 min" in text
        assert page.locator("#nothing").is_visible()
        put_status(server, run, "training", 1, 2, next_in_s=None, labels_given=2)
        page.wait_for_function(
            "() => document.getElementById('nothing').innerText.includes('the trainer is training') "
            "|| document.getElementById('nothing').innerText.includes('The trainer is training')"
        )
        # d) the next session's pairs are held by another labeler
        page.goto(f"{server.url}/")
        keys = simple_queries(server, run, clips, 2, session=1)
        put_status(server, run, "waiting", 1, 2, labels_given=2)
        held = [lease_as(server, run, "someone-else")]
        held.append(lease_as(server, run, "someone-else", exclude=[held[0]["id"]]))
        assert held[1] and held[1]["id"] != held[0]["id"]
        page.goto(f"{server.url}/?run={run}")
        text = wait_state(page, "elsewhere")
        assert "The remaining 2 pairs are open in another tab or with another labeler" in text
        assert page.title() == "(2) prefrl feedback"
        # c) the trainer asks for no more answers
        for q in held:
            assert api(
                server,
                "POST",
                f"/api/queries/{q['id']}/answer",
                json={"client": "someone-else", "labeler": "bob", "choice": "equal"},
            ).ok
        api(server, "POST", f"/api/runs/{run}/close", json={"keys": keys})
        put_status(server, run, "finished", 2, 2, labels_given=4)
        text = wait_state(page, "finished")
        assert (
            "This run asks for no more answers" in text and "4 labels in 2 sessions for run stages. Thank you!" in text
        )
        # a) the server is gone
        server.kill9()
        text = wait_state(page, "unreachable")
        assert "Cannot reach the feedback server; your answers are safe in this browser and will be sent" in text
        assert page.locator("#offline").is_visible()
    finally:
        server.stop()
    # what the page says for reports a test server cannot produce on demand: old, or before the first session
    idle = "(t) => window.prefrlIdleMessage('r', {pending: 0, held_elsewhere: 0}, t, true)"
    state, title, text = page.evaluate(
        idle,
        {
            "state": "training",
            "sessions_done": 2,
            "sessions_total": None,
            "next_in_s": 60,
            "labels_given": 9,
            "age_s": 1500,
        },
    )
    assert (
        state == "training"
        and title == "Session 2 done; next pairs any moment now"
        and "last heard from 25 min ago" in text
    )
    state, title, _ = page.evaluate(
        idle,
        {"state": "ended", "sessions_done": 1, "sessions_total": 3, "next_in_s": None, "labels_given": 1, "age_s": 3},
    )
    assert state == "finished" and "has exited" in title
    assert page.evaluate(idle, None)[0] == "empty"
    # asynchronous feedback: the agent learns while people label
    learning = {"state": "learning", "sessions_done": 3, "labels_given": 47, "pending": 8, "agent_step": 13500}
    learning |= {"reward_updates": 3, "reward_updated_step": 12000, "age_s": 2}
    state, title, text = page.evaluate(idle, learning)
    assert state == "learning" and title == "The agent is learning; new pairs are on their way"
    words = "47 labels so far, 8 pairs out, reward model updated 3 times (last at step 12,000), agent at step 13,500"
    assert words in text
    state, _, text = page.evaluate(idle, {**learning, "state": "ended"})
    assert state == "finished" and text == "47 labels for run r. Thank you!"


def test_refused_answers_are_shown_and_an_answer_to_a_pair_held_elsewhere_is_kept_until_it_lands(
    tmp_path, context, clips
):
    server = Server(tmp_path / "data", "--lease-seconds", "2").start()
    run = "refusals"
    page = context.new_page()
    held = []
    try:
        keys = simple_queries(server, run, clips, 6)
        page.goto(f"{server.url}/?run={run}")
        client = (wait_pair(page), client_of(page))[1]
        page.route("**/api/queries/*/answer", lambda route: held.append(route))

        def answer_held(choice: str, previous: int | None = None) -> int:
            """Answer with the keyboard while the request waits in the browser (pairs come in upload order)."""
            qid = answer_with_key(page, choice, previous)
            while not held:
                page.wait_for_timeout(20)
            return qid

        # the trainer closes the session while the answer is on its way
        q1 = answer_held("left")
        api(server, "POST", f"/api/runs/{run}/close", json={"keys": [keys[0]]})
        held.pop().continue_()
        page.wait_for_function("() => document.getElementById('notices').innerText.includes('not stored')")
        assert f"Your answer to pair {q1}" in page.inner_text("#notices")
        assert "the trainer closed that session" in page.inner_text("#notices")
        # the same tab's answer reached the server first with another choice (another device of the same tab id)
        q2 = answer_held("left", q1)
        assert api(
            server, "POST", f"/api/queries/{q2}/answer", json={"client": client, "labeler": "x", "choice": "right"}
        ).ok
        held.pop().continue_()
        page.wait_for_function("() => document.getElementById('notices').innerText.includes('already answered')")
        assert '"right is better"' in page.inner_text("#notices")
        assert page.locator("#notices li").count() == 2
        assert outbox_size(page) == 0
        page.locator("#notices button").first.click()
        assert page.locator("#notices li").count() == 1
        # another labeler takes the pair after this tab's lease ran out: the answer waits in the outbox and lands later
        q3 = answer_held("equal", q2)
        page.wait_for_timeout(2300)  # the lease of the answered pair runs out (2 s)
        other = lease_as(server, run, "other-labeler")
        assert other["id"] == q3
        held.pop().continue_()
        page.unroute("**/api/queries/*/answer")
        page.wait_for_function("() => document.getElementById('outbox-note').offsetParent !== null")
        assert "1 answer saved in this browser, sending" in page.inner_text("#outbox-note")
        assert outbox_size(page) == 1  # refused for now, not dropped
        page.wait_for_function(ALL_SENT, timeout=20_000)
        queries, events = stored_answers(tmp_path / "data")
    finally:
        server.stop()
    assert queries[q3][:2] == ("answered", "equal")
    assert [(e[1], e[2]) for e in events if e[0] == q3] == [("equal", client)]
    assert page.locator("#notices li").count() == 1  # only the two real refusals were ever shown


def test_a_phone_shows_everything_inside_the_screen_and_a_tap_answers(tmp_path, browser, server, clips):
    post_queries(
        server,
        "phone",
        clips,
        [{"key": f"k{i}", "session": 0, "left": "a", "right": "ended", "right_valid": 0.5} for i in range(3)],
    )
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=2
    )
    try:
        page = ctx.new_page()
        page.goto(f"{server.url}/?run=phone")
        qid = wait_pair(page)
        page.wait_for_timeout(500)
        screenshot(page, "feedback_page_phone.png", tmp_path)
        name = box(page, "#labeler")
        assert name["x"] >= 0 and name["x"] + name["width"] <= 390 and name["y"] >= 0 and name["width"] >= 120
        clips_bottom = 0.0
        for side in ("left", "right"):
            b = box(page, f'.clip[data-side="{side}"]')
            assert b["x"] >= 0 and b["x"] + b["width"] <= 390 and b["width"] >= 150
            clips_bottom = max(clips_bottom, b["y"] + b["height"])
        buttons = page.locator("#buttons button, #controls button").all()
        assert len(buttons) == 9
        for b in buttons:
            r = b.bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= 390, (b.inner_text(), r)
            assert r["y"] >= clips_bottom, (b.inner_text(), r)  # below the clips, not over them
            assert r["height"] >= 44 and r["y"] + r["height"] <= 844, (b.inner_text(), r)
        page.tap('#buttons [data-choice="right"]')
        page.wait_for_function("(q) => document.getElementById('pair').dataset.query !== q", arg=str(qid))
        page.wait_for_function(ALL_SENT)
        queries, _ = stored_answers(server.data_dir)
        assert queries[qid][:2] == ("answered", "right")
        # the server goes away: the note about it must not move the buttons under the labeler's finger
        second = wait_pair(page, qid)
        page.wait_for_function("() => document.querySelectorAll('#preload video').length === 2")
        before = box(page, '#buttons [data-choice="left"]')
        server.kill9()
        page.tap('#buttons [data-choice="left"]')
        wait_pair(page, second)
        page.wait_for_function("() => document.getElementById('offline').innerText.includes('1 answer saved')")
        page.wait_for_timeout(100)
        after = box(page, '#buttons [data-choice="left"]')
        assert abs(after["y"] - before["y"]) <= 2 and after["y"] + after["height"] <= 844, (before, after)
    finally:
        ctx.close()


def test_status_and_buttons_are_above_the_fold_on_small_and_laptop_screens(tmp_path, browser, server, clips):
    post_queries(
        server,
        "fold",
        clips,
        [{"key": f"k{i}", "session": 0, "left": "a", "right": "ended", "right_valid": 0.5} for i in range(4)],
    )

    def above_the_fold(page, width: int, height: int) -> None:
        for selector in ("#buttons", "#status", "#controls", "#question"):
            b = box(page, selector)
            assert b["y"] >= 0 and b["y"] + b["height"] <= height, (width, height, selector, b)
        assert page.evaluate("document.documentElement.scrollWidth") <= width

    for width, height in [(1100, 640), (800, 600)]:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        try:
            page = ctx.new_page()
            page.goto(f"{server.url}/?run=fold")
            qid = wait_pair(page)
            above_the_fold(page, width, height)
            for side in ("left", "right"):  # square frames, the clip fitted inside without stretching
                frame = box(page, f'.clip[data-side="{side}"] .frame')
                assert abs(frame["width"] - frame["height"]) <= 1 and frame["width"] >= 220
                assert page.eval_on_selector(f"#video-{side}", "v => getComputedStyle(v).objectFit") == "contain"
            assert (
                min(page.eval_on_selector_all("kbd", "ks => ks.map(k => parseFloat(getComputedStyle(k).fontSize))"))
                >= 14
            )
            if width == 1100:
                page.wait_for_timeout(700)
                path = screenshot(page, "feedback_page.png", tmp_path)
                assert path.stat().st_size > 20_000
            else:  # with the server gone the notes above the clips take room: the clips shrink, the buttons stay
                page.wait_for_function("() => document.querySelectorAll('#preload video').length === 2")
                server.kill9()
                page.keyboard.press("ArrowLeft")
                wait_pair(page, qid)
                buttons = box(page, "#buttons")
                page.wait_for_function("() => document.getElementById('offline').innerText.includes('1 answer saved')")
                page.wait_for_timeout(100)
                above_the_fold(page, width, height)
                assert abs(box(page, "#buttons")["y"] - buttons["y"]) <= 2  # the note did not move the buttons
        finally:
            ctx.close()


def test_a_double_press_counts_once_and_the_chosen_button_flashes(context, server, clips):
    simple_queries(server, "double", clips, 3)
    page = context.new_page()
    page.goto(f"{server.url}/?run=double")
    qid = wait_pair(page)
    page.wait_for_function("() => document.querySelectorAll('#preload video').length === 2")
    page.evaluate("""() => { window.flashes = [];
        new MutationObserver((ms) => flashes.push(...new Set(ms.filter((m) => m.target.classList.contains('flash'))
                                                                  .map((m) => m.target.dataset.choice))))
            .observe(document.getElementById('buttons'),
                     {subtree: true, attributes: true, attributeFilter: ['class']}); }""")
    page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(60)
    page.keyboard.press("ArrowLeft")
    second = int(page.get_attribute("#pair", "data-query"))
    assert second != qid
    page.wait_for_timeout(500)
    assert int(page.get_attribute("#pair", "data-query")) == second  # the second press did not answer the next pair
    assert page.evaluate("window.flashes") == ["left"]
    assert page.locator("#buttons .flash").count() == 0  # the flash is brief
    page.wait_for_function(ALL_SENT)
    queries, events = stored_answers(server.data_dir)
    assert [e[0] for e in events] == [qid] and queries[second][0] == "pending"
    fed = api(server, "GET", "/api/runs/double/events").json()["events"]
    assert 300 <= fed[0]["response_ms"] < 60_000 and fed[0]["client"] == client_of(page)  # on screen until the press
    assert len(page.evaluate("window.prefrlLatencies")) == 1
    page.click('#buttons [data-choice="skip"]')  # a click, once the pair has been on screen long enough
    page.wait_for_function("(q) => document.getElementById('pair').dataset.query !== q", arg=str(second))
    assert page.evaluate("window.flashes") == ["left", "skip"]


def test_time_bars_mark_the_episode_end_and_the_controls_drive_both_clips(context, server, clips):
    post_queries(
        server,
        "aids",
        clips,
        [{"key": "k0", "session": 0, "left": "ended", "right": "b", "left_valid": 0.5}, {"key": "k1", "session": 0}],
    )
    page = context.new_page()
    page.goto(f"{server.url}/?run=aids")
    wait_pair(page)
    bar, mark = box(page, '.timebar[data-side="left"]'), box(page, '.timebar[data-side="left"] .end-mark')
    assert abs((mark["x"] + mark["width"] / 2 - bar["x"]) / bar["width"] - 0.5) <= 0.03
    grey = box(page, '.timebar[data-side="left"] .after-end')
    assert (
        abs(grey["x"] + grey["width"] - (bar["x"] + bar["width"])) <= 1
        and abs(grey["width"] / bar["width"] - 0.5) <= 0.03
    )
    assert page.locator('.timebar[data-side="right"] .end-mark').is_hidden()
    assert "episode ends at 50%" in page.inner_text('.clip[data-side="left"] figcaption')
    both = "(p) => ['video-left', 'video-right'].map((id) => document.getElementById(id)[p])"
    page.wait_for_function(
        "() => !document.getElementById('video-left').paused && !document.getElementById('video-right').paused"
    )
    page.click("#play")
    assert page.evaluate(both, "paused") == [True, True] and page.inner_text("#play-label") == "Play"
    page.keyboard.press(" ")
    assert page.evaluate(both, "paused") == [False, False]
    page.keyboard.press(" ")
    assert page.evaluate(both, "paused") == [True, True]
    page.click('[data-speed="0.5"]')
    assert page.evaluate(both, "playbackRate") == [0.5, 0.5]
    duration = page.evaluate("document.getElementById('video-left').duration")
    page.locator("#scrub").fill("750")  # the scrubber moves both clips
    page.wait_for_function("() => ['video-left', 'video-right'].every((id) => !document.getElementById(id).seeking)")
    assert [round(t / duration, 2) for t in page.evaluate(both, "currentTime")] == [0.75, 0.75]
    page.mouse.click(bar["x"] + 0.25 * bar["width"], bar["y"] + bar["height"] / 2)  # so does a click on a time bar
    page.wait_for_function("() => ['video-left', 'video-right'].every((id) => !document.getElementById(id).seeking)")
    assert [abs(t / duration - 0.25) < 0.03 for t in page.evaluate(both, "currentTime")] == [True, True]
    page.reload()  # the speed is remembered, and applies to the next pairs
    wait_pair(page)
    assert page.evaluate(both, "playbackRate") == [0.5, 0.5]
    assert page.get_attribute('[data-speed="0.5"]', "aria-pressed") == "true"


def test_an_answer_left_behind_by_a_closed_tab_is_sent_by_another_under_the_closed_tabs_id(tmp_path, context, clips):
    server = Server(tmp_path / "data").start()
    try:
        simple_queries(server, "orphan", clips, 4)
        a, b = open_tabs(context, server.url, "orphan")
        qa, client_a = wait_pair(a), client_of(a)
        wait_pair(b)
        server.kill9()
        a.keyboard.press("ArrowRight")
        a.wait_for_function(f"() => {QUEUED}.length === 1")
        looked = a.evaluate(QUEUED)[0]["response_ms"]  # measured at the press, sent later with the answer
        a.close()  # the answer stays in this browser, under tab a's id
        b.wait_for_function("() => document.getElementById('offline').innerText.includes('1 answer saved')")
        server.start()
        b.wait_for_function(ALL_SENT, timeout=20_000)
        queries, events = stored_answers(tmp_path / "data")
        fed = api(server, "GET", "/api/runs/orphan/events").json()["events"]
    finally:
        server.stop()
    assert queries[qa][:2] == ("answered", "right") and [(e[1], e[2]) for e in events] == [("right", client_a)]
    assert (
        isinstance(looked, int)
        and looked >= 300
        and [(e["client"], e["response_ms"]) for e in fed] == [(client_a, looked)]
    )


def test_clips_that_failed_to_load_are_loaded_again(context, server, clips):
    """A pair leased just before the server went down has clips that never arrived: they load once they can."""
    simple_queries(server, "retry", clips, 3)
    page = context.new_page()
    page.route("**/media/**", lambda route: route.abort())
    page.goto(f"{server.url}/?run=retry")
    page.wait_for_function(
        "() => document.getElementById('pair').dataset.query && document.getElementById('video-left').error"
    )
    page.wait_for_function("() => document.querySelectorAll('#preload video').length === 2")
    shown = page.get_attribute("#pair", "data-query")
    page.unroute("**/media/**")
    assert wait_pair(page) == int(shown)  # the same pair, now playing
    page.wait_for_function("""() => { const v = [...document.querySelectorAll('#preload video')];
                                      return v.length === 2 && v.every((x) => x.readyState >= 3); }""")
    answer_with_key(page, "left")
    assert wait_pair(page) != int(shown)


def test_undo_takes_back_only_this_tabs_answers_even_before_they_reach_the_server(tmp_path, context, clips):
    server = Server(tmp_path / "data").start()
    try:
        simple_queries(server, "undo", clips, 6)
        a, b = open_tabs(context, server.url, "undo")
        wait_pair(b)
        qa = answer_with_key(a, "left")
        a.wait_for_function(ALL_SENT)
        b.keyboard.press("u")  # tab b has answered nothing: same labeler name, but not its answer to take back
        b.wait_for_function("() => document.getElementById('status').innerText.includes('Nothing of yours to undo')")
        a.keyboard.press("u")
        a.wait_for_function("(q) => document.getElementById('pair').dataset.query === q", arg=str(qa))
        assert a.inner_text("#status") == "Undone: answer this pair again."
        colour = a.eval_on_selector("#status", "s => getComputedStyle(s).color")
        red, green, blue = [int(c) for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]
        assert not (red > 140 and green < 80 and blue < 80), colour  # information, not an error
        assert answer_with_key(a, "right", None) == qa
        # while the server is gone, undo takes the answer out of this browser's outbox
        q_next = wait_pair(a)
        server.kill9()
        a.keyboard.press("ArrowUp")
        a.wait_for_function("(q) => document.getElementById('pair').dataset.query !== q", arg=str(q_next))
        assert outbox_size(a) >= 1
        a.keyboard.press("u")
        a.wait_for_function("(q) => document.getElementById('pair').dataset.query === q", arg=str(q_next))
        a.wait_for_function(f"() => !{QUEUED}.some((e) => e.choice === 'equal')")
        server.start()
        a.wait_for_function(ALL_SENT, timeout=20_000)
        queries, events = stored_answers(tmp_path / "data")
    finally:
        server.stop()
    assert queries[qa][:2] == ("answered", "right") and queries[q_next][0] == "pending"
    assert [e[1] for e in events if e[0] == qa] == ["left", "right"] and all(e[2] == client_of(a) for e in events)


def test_the_runs_list_links_each_run_and_says_what_its_trainer_does(context, server, clips):
    simple_queries(server, "busy-run", clips, 2)
    put_status(server, "busy-run", "waiting", 0, 3)
    simple_queries(server, "done-run", clips, 1)
    q = lease_as(server, "done-run", "someone")
    api(
        server, "POST", f"/api/queries/{q['id']}/answer", json={"client": "someone", "labeler": "bob", "choice": "left"}
    )
    put_status(server, "done-run", "finished", 3, 3, labels_given=60)
    page = context.new_page()
    page.goto(server.url + "/")
    wait_state(page, "runs")
    page.wait_for_function("() => document.querySelectorAll('#runs-list .run').length === 2")
    runs = page.locator("#runs-list .run")
    assert runs.nth(0).get_attribute("data-run") == "busy-run"  # pending first
    busy, done = runs.nth(0).inner_text(), runs.nth(1).inner_text()
    assert "Hopper-v5" in busy and "2 waiting" in busy and "0 of 2 answered" in busy and "waiting for answers" in busy
    assert "0 waiting" in done and "1 of 1 answered" in done and "finished" in done and "60 labels" in done
    assert page.title() == "(2) prefrl feedback"
    link = runs.nth(0).locator("a.name")
    assert link.get_attribute("href") == "?run=busy-run" and link.get_attribute("target") == "_blank"
    with context.expect_page() as opened:
        link.click()
    tab = opened.value
    wait_pair(tab)
    assert tab.url.endswith("/?run=busy-run") and client_of(tab) != client_of(page)
    page.get_by_role("button", name="Label").click()  # the other tab holds both pairs (one shown, one preloaded)
    assert "The remaining 2 pairs are open in another tab" in wait_state(page, "elsewhere")


def test_a_token_link_sets_the_cookie_and_leaves_the_address_bar(tmp_path, context, clips):
    server = Server(tmp_path / "data", token="s3cret-token").start()
    try:
        simple_queries(server, "secure", clips, 2)
        page = context.new_page()
        clip_requests = []
        page.on("response", lambda r: clip_requests.append((r.url, r.status)) if "/media/" in r.url else None)
        page.goto(f"{server.url}/?token=s3cret-token&run=secure")
        qid = wait_pair(page)
        assert page.url == f"{server.url}/?run=secure"
        assert clip_requests and all("token" not in url and status in (200, 206, 304) for url, status in clip_requests)
        cookie = next(c for c in context.cookies() if c["name"].startswith("prefrl_token"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.keyboard.press("ArrowRight")
        page.wait_for_function(ALL_SENT)
        queries, _ = stored_answers(tmp_path / "data")
        assert queries[qid][:2] == ("answered", "right")
        page.reload()  # the cookie alone opens the page again
        assert wait_pair(page) != qid
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ ranking mode
COMPARISON_READY = """(prev) => {
    const q = document.getElementById('pair').dataset.query;
    const v = [document.getElementById('video-left'), document.getElementById('video-right')];
    return document.getElementById('app').dataset.mode === 'ranking' && !!q && q.includes('|') && q !== prev
        && document.getElementById('buttons').dataset.ready === 'true'
        && v.every(x => x && x.readyState >= 2 && x.videoWidth > 0); }"""


def clip_value(clip: str) -> float:
    """What the simulated person thinks of a clip (by its server name "<query id>:<side>")."""
    import random

    return random.Random(clip).random()


def wait_comparison(page, previous: str | None = None) -> tuple[str, str] | None:
    """The (new clip, placed clip) shown once both play, or None when nothing is left to place."""
    done = "document.getElementById('app').dataset.state === 'empty'"
    page.wait_for_function(f"(prev) => {done} || ({COMPARISON_READY})(prev)", arg=previous, timeout=30_000)
    if page.evaluate(f"() => {done}"):
        return None
    new, against = page.get_attribute("#pair", "data-query").split("|")
    return new, against


def test_ranking_in_the_browser_places_every_clip_with_undo_and_a_server_kill(tmp_path, context, clips):
    """A person switches a run to ranking and places 16 clips (8 queries) with the keyboard: one undo re-asks the
    comparison, an answer given while the server is killed (-9) waits in the browser and lands once it is back, and
    the ordering, the strip of thumbnails and the queries' labels all follow the person's values."""
    server = Server(tmp_path / "data", "--quiet").start()
    try:
        specs = [{"key": f"q{i}", "session": 0, "left": "a" if i % 2 else "ended", "right": "b"} for i in range(8)]
        keys = post_queries(server, "rank", clips, specs)
        page = context.new_page()
        page.goto(f"{server.url}/?run=rank")
        wait_pair(page)  # pairs mode first
        page.click('button[data-mode="ranking"]')
        shown, last, answered, undone, killed = None, None, 0, False, False
        while (shown_now := wait_comparison(page, shown)) is not None:
            new, against = shown_now
            if answered == 5 and not undone:  # take the last comparison back: it is asked again
                page.keyboard.press("u")
                again = wait_comparison(page, f"{new}|{against}")
                assert again == last and "Undone" in page.inner_text("#status")
                new, against, undone, answered = *again, True, answered - 1
            shown = f"{new}|{against}"
            key = "ArrowLeft" if clip_value(new) > clip_value(against) else "ArrowRight"
            if answered == 12 and not killed:  # the server dies; the answer waits in the browser
                server.kill9()
                page.keyboard.press(key)
                page.wait_for_function("() => !!localStorage.getItem('prefrl-rank:rank')")
                page.wait_for_selector("#offline:not(.hidden)")
                server.start()
                page.wait_for_function("() => !localStorage.getItem('prefrl-rank:rank')", timeout=30_000)
                killed = True
            else:
                page.keyboard.press(key)
            last, answered = (new, against), answered + 1
        assert killed and undone
        wait_state(page, "empty")
        state = api(server, "GET", "/api/runs/rank/ranking").json()
        assert state["comparisons"] == answered and state["pending"] is None
        order = [f"{c['key']}:{c['side']}" for tier in state["tiers"] for c in tier]
        ids = {k: i + 1 for i, k in enumerate(keys)}  # query ids in upload order
        values = [clip_value(f"{ids[c.split(':')[0]]}:{c.split(':')[1]}") for c in order]
        assert len(order) == 16 and values == sorted(values, reverse=True)
        for q in api(server, "GET", "/api/runs/rank/queries").json()["queries"]:
            better_right = clip_value(f"{ids[q['key']]}:right") > clip_value(f"{ids[q['key']]}:left")
            assert q["status"] == "answered" and q["label"] == float(better_right)
        # the strip shows the ordering, best first, one thumbnail per tier
        strip = page.eval_on_selector_all("#ordering-list li", "els => els.map(e => e.dataset.clip)")
        assert strip == [f"{ids[key]}:{side}" for key, side in (c.split(":") for c in order)]
        assert "16 clips placed in 16 tiers" in page.inner_text("#ordering")
        page.keyboard.press("u")  # the last comparison again, with its clip's place open
        page.wait_for_function(COMPARISON_READY, arg=None, timeout=30_000)
        assert tuple(page.get_attribute("#pair", "data-query").split("|")) == last
        assert page.eval_on_selector_all("#ordering-list li", "els => els.length") == 15
        assert page.is_visible("#ordering-list li.against")  # the placed clip it is compared with, outlined
        screenshot(page, "ranking.png", tmp_path)
    finally:
        server.stop()
