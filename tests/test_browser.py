"""End to end in a real browser: Debian's Chromium, driven by Playwright, labels a sac_rlhf run with the keyboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from feedback_helpers import Server, api
from test_human_feedback import HUMAN_RUN

CHROMIUM = os.environ.get("PREFRL_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (`make test` installs Debian's chromium)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)


def videos_playing(page) -> bool:
    """Both clips decoded (H.264 in Chromium) at the same size."""
    return page.evaluate("""() => {
        const v = [document.getElementById('video-left'), document.getElementById('video-right')];
        return v.every(x => x && x.readyState >= 2 && x.videoWidth > 0) && v[0].videoWidth === v[1].videoWidth
            && v[0].getBoundingClientRect().width === v[1].getBoundingClientRect().width; }""")


def test_a_person_labels_a_whole_run_with_the_keyboard(tmp_path, runs_dir):
    from playwright.sync_api import sync_playwright

    server = Server(tmp_path / "data").start()
    run = "browser-run"
    log = open(tmp_path / "trainer.log", "w")
    trainer = subprocess.Popen([sys.executable, str(ROOT / "framework" / "sac_rlhf.py"), *HUMAN_RUN,
                                "--feedback-server-url", server.url, "--runs-dir", str(runs_dir), "--run-name", run],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"]
    pressed: list[str] = []
    undone = False
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(server.url + "/")
            page.get_by_role("button", name="Label").click(timeout=120_000)  # the run shows up in the list
            deadline = time.monotonic() + 240
            while trainer.poll() is None and time.monotonic() < deadline:
                if not page.locator("#buttons").is_visible() or not videos_playing(page):
                    time.sleep(0.1)
                    continue
                if not pressed:
                    page.screenshot(path=str(tmp_path / "page.png"))
                    assert "Which clip is better?" in page.inner_text("#question")
                    assert "InvertedPendulum-v5" in page.inner_text("#meta")
                key = keys[len(pressed) % 4]
                shown = page.evaluate("() => document.getElementById('video-left').src")
                page.keyboard.press(key)
                pressed.append(key)
                if len(pressed) == 1 and not undone:  # take the first answer back and give it again
                    page.wait_for_function("(src) => document.getElementById('video-left').src !== src", arg=shown)
                    page.keyboard.press("u")
                    page.wait_for_function("(src) => document.getElementById('video-left').src === src", arg=shown)
                    undone = True
                    pressed.pop()
                    continue
                time.sleep(0.05)
            assert "of" in page.inner_text("#progress")
            browser.close()
        trainer.wait(120)
        out = (tmp_path / "trainer.log").read_text()
    finally:
        if trainer.poll() is None:
            trainer.kill()
        server.stop()
    assert trainer.returncode == 0, out
    assert (tmp_path / "page.png").stat().st_size > 10_000
    records = [json.loads(line) for line in open(runs_dir / run / "answers.jsonl")]
    events = [r for r in records if "event" in r]
    assert [e["kind"] for e in events].count("undo") == 1
    assert {e["labeler"] for e in events if e["kind"] == "answer"} == {events[0]["labeler"]}  # the page's labeler
    closed = [r for r in records if "closed" in r]
    final = [x for c in closed for x in c["labels"]]
    assert len(final) == 18
    expected = {"ArrowLeft": 0.0, "ArrowRight": 1.0, "ArrowUp": 0.5, "ArrowDown": None}
    assert sorted(final, key=str) == sorted([expected[k] for k in pressed[:18]], key=str)
    summary = json.loads((runs_dir / run / "summary.json").read_text())
    assert summary["labels_used"] == 18
    assert summary["labels_stored"] == sum(x is not None for x in final)  # the person's labels trained the model
    assert "session=3 labels=18" in out
