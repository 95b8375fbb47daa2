"""Ranking mode on the labeling page, in Chromium, with real Hopper clips: comparisons per clip and how long the
next comparison takes to appear after an answer.

A trainer's session of `--queries` pairs (rendered and uploaded as in human mode) is switched to ranking on the page
and every clip is placed with the keyboard (the answers come from a hidden value per clip: a person would look). The
table gives the comparisons each clip took against the binary-insertion bound (ceil(log2(tiers + 1))), and the time
from a key press to the next comparison on screen (the answer is stored before the next one is asked, so this is a
round trip to the server, not a preloaded pair as in pairs mode). Saves benchmarks/results/ranking_page.md and the
screenshot media/feedback_ranking.png.

    python benchmarks/ranking_page.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import tyro

from common import ROOT, machine_description, markdown_table, save_markdown
from feedback import segments

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from feedback_helpers import Server  # noqa: E402
from framework.feedback_client import FeedbackClient, HumanTeacher  # noqa: E402


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """the environment whose clips are ranked"""
    queries: int = 12
    """pairs uploaded (twice as many clips are placed)"""
    chromium: str = "/usr/bin/chromium"
    """the browser"""
    screenshot: str = str(ROOT / "media" / "feedback_ranking.png")
    """where the page's screenshot goes (taken with half of the clips placed)"""


def main(args: Args) -> None:
    from playwright.sync_api import sync_playwright

    batch = segments(args.env_id, args.queries, 50)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", "--quiet").start()
        try:
            HumanTeacher(FeedbackClient(server.url), "hopper-ranking", args.env_id, tmp, progress=False).upload(batch)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                  "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(f"{server.url}/?run=hopper-ranking")
                page.wait_for_selector('button[data-mode="ranking"]', state="visible", timeout=60_000)
                page.click('button[data-mode="ranking"]')
                ready = """(prev) => { const q = document.getElementById('pair').dataset.query;
                    const v = ['video-left', 'video-right'].map(id => document.getElementById(id));
                    return document.getElementById('app').dataset.state === 'empty' || (!!q && q.includes('|')
                        && q !== prev && document.getElementById('buttons').dataset.ready === 'true'
                        && v.every(x => x && x.readyState >= 3)); }"""
                shown, answers, shot = None, 0, False
                page.evaluate("() => { window.prefrlLatencies = []; }")
                while True:
                    page.wait_for_function(ready, arg=shown, timeout=60_000)
                    if page.evaluate("() => document.getElementById('app').dataset.state === 'empty'"):
                        break
                    shown = page.get_attribute("#pair", "data-query")
                    new, against = shown.split("|")
                    placed = requests.get(f"{server.url}/api/runs/hopper-ranking/ranking", timeout=5).json()
                    if not shot and sum(len(t) for t in placed["tiers"]) >= args.queries:
                        page.wait_for_timeout(900)
                        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=args.screenshot, full_page=True)
                        shot = True
                    better = random.Random(new).random() > random.Random(against).random()
                    page.keyboard.press("ArrowLeft" if better else "ArrowRight")
                    answers += 1
                latencies = np.array(page.evaluate("() => window.prefrlLatencies"))
                browser.close()
            state = requests.get(f"{server.url}/api/runs/hopper-ranking/ranking", timeout=5).json()
        finally:
            server.stop()
    clips = 2 * args.queries
    bound = sum(int(placed).bit_length() for placed in range(clips))
    table = markdown_table(
        ["clips placed", "comparisons", "per clip", "binary-insertion bound", "next comparison on screen, median (ms)",
         "95th percentile (ms)"],
        [[clips, state["comparisons"], round(state["comparisons"] / clips, 2), bound,
          round(float(np.median(latencies)), 1), round(float(np.percentile(latencies, 95)), 1)]],
    )  # fmt: skip
    print(table)
    body = (
        f"{__doc__.split(chr(10) + chr(10) + '    python')[0]}\n\n{args.queries} {args.env_id} queries, 320x320 "
        f"clips; {machine_description()}.\n\n{table}\n\n![ranking mode](../../media/feedback_ranking.png)\n"
    )
    print(f"saved {save_markdown('ranking_page', 'Ranking mode on the page', body)} and {args.screenshot}")
    assert answers == state["comparisons"]


if __name__ == "__main__":
    started = time.time()
    main(tyro.cli(Args))
    print(f"{time.time() - started:.0f} s")
