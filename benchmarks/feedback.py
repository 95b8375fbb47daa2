"""Speed of the human loop: how soon a feedback session's queries can be answered, and how fast the page turns.

1. Session start -> answerable: a `HumanTeacher` renders (headless MuJoCo), encodes (H.264) and uploads the clips of
   20 queries of 50-frame Hopper-v5 segments to a real feedback server; measured are the time until the first query
   and until all of them are waiting on the page, per clip size.
2. Page latency: headless Chromium (Playwright) answers every query with the keyboard; measured is the time from the
   key press to the next pair on screen (the page preloads the next pair while the current one is shown).
3. Server: the labeling page's request (lease the next pair) one after another, and from several clients at once,
   against the real server (waitress); measured are the latency of each request and the requests served per second.

Prints a table, saves benchmarks/results/feedback.md with a plot, and screenshots of the page to
media/feedback_page.png and media/feedback_page_phone.png.

    python benchmarks/feedback.py
    python benchmarks/feedback.py --queries 20 --segment-length 50 --clip-sizes 256 320 480
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import requests
import tyro

from common import RESULTS, ROOT, machine_description, markdown_table, save_markdown

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from framework.runtime import setup_headless_rendering  # noqa: E402

setup_headless_rendering()  # before MuJoCo is first imported
from feedback_helpers import Server  # noqa: E402
from framework.envs import make_env  # noqa: E402
from framework.feedback_client import FeedbackClient, HumanTeacher  # noqa: E402
from framework.teacher import QueryBatch  # noqa: E402


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """environment whose clips are rendered"""
    queries: int = 20
    """queries in the feedback session"""
    segment_length: int = 50
    """frames per clip"""
    clip_sizes: tuple[int, ...] = (256, 320, 480)
    """clip sizes to measure (pixels, square); the page part uses the trainer's default, 320"""
    clip_fps: float = 30.0
    """frame rate of the clips"""
    chromium: str = "/usr/bin/chromium"
    """the browser"""
    screenshot: str = str(ROOT / "media" / "feedback_page.png")
    """where the page's screenshot goes"""
    server_requests: int = 3000
    """requests of the server measurement, one after another (and as many again from `server_clients` clients)"""
    server_clients: int = 8
    """clients at once in the concurrent part of the server measurement"""


def segments(env_id: str, n: int, seg_len: int, seed: int = 0) -> QueryBatch:
    """2n segments of a policy that pushes with a random constant action per segment (varied, upright for a while)."""
    env = make_env(env_id, seed)
    rng = np.random.default_rng(seed)
    states = []
    for _ in range(2 * n):
        _, info = env.reset(seed=int(rng.integers(1 << 30)))
        push = rng.uniform(-0.6, 0.6, env.action_space.shape)
        seg = []
        for _ in range(seg_len):
            _, _, terminated, truncated, info = env.step(push + rng.normal(0, 0.2, push.shape))
            seg.append(info["physics_state"])
            if terminated or truncated:
                seg += [seg[-1]] * (seg_len - len(seg))
                break
        states.append(seg)
    states = np.array(states).reshape(2, n, seg_len, -1)
    zeros, ones = np.zeros((n, seg_len)), np.ones((n, seg_len))
    return QueryBatch(env_id, 0, zeros, zeros, ones, ones, states[0], states[1])


def time_session(server: Server, run_id: str, batch: QueryBatch, size: int, fps: float) -> tuple[float, float]:
    """Seconds from the start of the session to the first query and to all queries waiting on the server."""
    client = FeedbackClient(server.url)
    teacher = HumanTeacher(
        client, run_id, batch.env_id, tempfile.mkdtemp(), clip_size=size, clip_fps=fps, progress=False
    )
    first = []
    done = threading.Event()

    def watch(start: float) -> None:
        while not done.is_set():
            if requests.get(server.url + f"/api/runs/{run_id}", timeout=5).json()["progress"]["pending"] > 0:
                first.append(time.perf_counter() - start)
                return
            time.sleep(0.01)

    start = time.perf_counter()
    watcher = threading.Thread(target=watch, args=(start,), daemon=True)
    watcher.start()
    teacher.upload(batch)
    total = time.perf_counter() - start
    done.set()
    watcher.join()
    assert requests.get(server.url + f"/api/runs/{run_id}", timeout=5).json()["progress"]["pending"] == len(batch)
    return (first[0] if first else total), total


def page_latency(server: Server, run_id: str, n: int, chromium: str, screenshot: str) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 560})
        page.goto(f"{server.url}/?run={run_id}")
        playing = """() => ['video-left', 'video-right'].every(id => { const v = document.getElementById(id);
                     return v && v.readyState >= 3 && !v.paused; })"""
        page.wait_for_function(playing, timeout=60_000)
        page.wait_for_timeout(900)
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=screenshot)
        page.set_viewport_size({"width": 390, "height": 844})  # the same pair on a phone
        page.wait_for_timeout(600)
        page.screenshot(path=screenshot.replace(".png", "_phone.png"))
        page.set_viewport_size({"width": 1100, "height": 560})
        for i in range(n):
            page.wait_for_function(playing, timeout=60_000)
            # a person looks before answering: the page takes answers 300 ms after a pair appeared
            page.wait_for_function("() => document.getElementById('buttons').dataset.ready === 'true'", timeout=60_000)
            page.keyboard.press(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"][i % 4])
        page.wait_for_function("() => document.getElementById('nothing').offsetParent !== null", timeout=60_000)
        latencies = page.evaluate("() => window.prefrlLatencies")
        browser.close()
    return latencies


def server_speed(server: Server, run_id: str, n: int, clients: int) -> list[list]:
    """Leases (the page's most frequent write) one after another, then from `clients` threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    def lease_many(count: int, client: str) -> list[float]:
        s = requests.Session()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            r = s.post(f"{server.url}/api/runs/{run_id}/lease", json={"client": client}, timeout=10)
            assert r.status_code == 200, r.text
            times.append(time.perf_counter() - start)
        return times

    rows = []
    for label, k in [("one client", 1), (f"{clients} clients at once", clients)]:
        start = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            times = [t for ts in pool.map(lease_many, [n // k] * k, [f"bench-{i}" for i in range(k)]) for t in ts]
        wall = time.perf_counter() - start
        ms = np.array(times) * 1000
        rows.append(
            [
                label,
                len(times),
                round(float(np.median(ms)), 1),
                round(float(np.percentile(ms, 99)), 1),
                round(float(ms.max()), 1),
                round(len(times) / wall, 1),
            ]
        )
        print(f"server, {label}: {len(times)} leases, median {np.median(ms):.1f} ms, max {ms.max():.1f} ms")
    return rows


def main(args: Args) -> None:
    batch = segments(args.env_id, args.queries, args.segment_length)
    rows, sessions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data").start()
        try:
            for size in args.clip_sizes:
                first, total = time_session(server, f"bench-{size}", batch, size, args.clip_fps)
                sessions[size] = total
                frames = 2 * args.queries * args.segment_length
                rows.append([f"{size}x{size}", round(first, 2), round(total, 2), round(frames / total, 1)])
                print(
                    f"clips {size}px: first query answerable after {first:.2f} s, "
                    f"all {args.queries} after {total:.2f} s"
                )
            page_run = "bench-320" if 320 in args.clip_sizes else f"bench-{args.clip_sizes[0]}"
            latencies = page_latency(server, page_run, args.queries, args.chromium, args.screenshot)
            server_rows = server_speed(server, page_run, args.server_requests, args.server_clients)
        finally:
            server.stop()
    lat = np.array(latencies)
    table = markdown_table(
        [
            "clip size",
            "first query answerable (s)",
            f"all {args.queries} answerable (s)",
            "frames rendered+encoded+uploaded per s",
        ],
        rows,
    )
    page_table = markdown_table(
        ["answers", "median (ms)", "95th percentile (ms)", "max (ms)"],
        [
            [
                len(lat),
                round(float(np.median(lat)), 1),
                round(float(np.percentile(lat, 95)), 1),
                round(float(lat.max()), 1),
            ]
        ],
    )
    server_table = markdown_table(
        ["clients", "requests", "median (ms)", "99th percentile (ms)", "max (ms)", "requests per s"], server_rows
    )
    body = (
        f"{args.queries} queries of {args.segment_length}-frame {args.env_id} clips ({args.clip_fps:g} fps, H.264), "
        f"real feedback server on this machine; {machine_description()}.\n\n"
        f"Command: `python benchmarks/feedback.py`\n\n"
        f"## From the start of a feedback session to its queries being answerable on the page\n\n{table}\n\n"
        f"## Page latency: from an answer (key press) to the next pair on screen (Chromium, headless)\n\n"
        f"{page_table}\n\n"
        f"## Server: leasing the next pair (the page's request), waitress with 8 threads, one log line per request\n\n"
        f"{server_table}\n\n"
        f"![session time](feedback.png)\n"
    )
    print(table)
    print(page_table)
    print(server_table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar([r[0] for r in rows], [sessions[s] for s in args.clip_sizes], color="#2d6cdf")
    axes[0].set_ylabel(f"seconds until all {args.queries} queries are answerable")
    axes[1].hist(lat, bins=15, color="#d9822b")
    axes[1].set_xlabel("ms from answer to next pair on screen")
    axes[1].set_ylabel("answers")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "feedback.png", dpi=120)
    print(f"saved {save_markdown('feedback', 'Human loop speed', body)} and {args.screenshot}")


if __name__ == "__main__":
    main(tyro.cli(Args))
