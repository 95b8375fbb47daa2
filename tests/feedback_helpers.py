"""Helpers for the human-loop tests: a real feedback server in a subprocess and a scripted labeler over the API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "humanFeedback" / "feedback_server.py"
# the smallest thing the server accepts as an mp4 upload (an ftyp box); real clips are tested in test_clips.py
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python humanFeedback/feedback_server.py` on a free port over `data_dir`; `kill9()` and `start()` again."""

    def __init__(self, data_dir: Path, *extra: str, host: str = "127.0.0.1", token: str | None = None):
        self.data_dir, self.extra, self.host, self.token = data_dir, extra, host, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, wait: bool = True) -> Server:
        env = dict(os.environ)
        env.pop("PREFRL_FEEDBACK_TOKEN", None)
        cmd = [
            sys.executable,
            str(SERVER),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]
        if self.token:
            cmd += ["--token", self.token]
        # output to a file, never a pipe nobody reads: one log line per request would fill a pipe and stall the server
        self.log_path = Path(self.data_dir).parent / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if wait:
            deadline = time.monotonic() + 20
            headers = {"X-Prefrl-Token": self.token} if self.token else {}
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log_path.read_text()
                try:
                    if requests.get(self.url + "/api/health", headers=headers, timeout=1).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            raise AssertionError("feedback server did not start")
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def api(server: Server, method: str, path: str, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if server.token:
        headers.setdefault("X-Prefrl-Token", server.token)
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kwargs)


def make_run(server: Server, run_id: str = "run-1", n: int = 0, session: int = 0, prefix: str = "q") -> list[str]:
    assert api(server, "PUT", f"/api/runs/{run_id}", json={"env_id": "Hopper-v5", "question": "Which hops higher?"}).ok
    keys = [f"{prefix}{session}-{i}" for i in range(n)]
    if n:
        files = [(f"{side}:{k}", (f"{k}.mp4", FAKE_MP4, "video/mp4")) for k in keys for side in ("left", "right")]
        r = api(
            server,
            "POST",
            f"/api/runs/{run_id}/queries",
            headers={"X-Prefrl-Client": "test"},
            data={"queries": __import__("json").dumps([{"key": k, "session": session} for k in keys])},
            files=files,
        )
        assert r.status_code == 200, r.text
    return keys


class LabelerThread(threading.Thread):
    """A scripted person over the page's API: `label(run)` for every run the server lists, every 0.3 s, until
    stopped (network errors are waited out)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop_event = url, threading.Event()

    def label(self, run: dict) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                for run in requests.get(self.url + "/api/runs", timeout=5).json()["runs"]:
                    self.label(run)
            except requests.RequestException:
                pass
            self.stop_event.wait(0.3)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


class ApiLabeler(LabelerThread):
    """Answers every pending query of every run through the page's API, like a person would, until stopped.

    `choose(query) -> choice` picks the answer (default: always the left clip)."""

    def __init__(self, url: str, choose=None, client: str = "api-labeler", delay: float = 0.0):
        super().__init__(url)
        self.choose, self.client, self.delay = choose or (lambda q: "left"), client, delay
        self.answered: list[tuple[str, str]] = []

    def label(self, run: dict) -> None:
        while not self.stop_event.is_set():
            q = requests.post(
                self.url + f"/api/runs/{run['id']}/lease",
                timeout=5,
                json={"client": self.client, "labeler": self.client},
            ).json()["query"]
            if q is None:
                return
            time.sleep(self.delay)
            choice = self.choose(q)
            r = requests.post(
                self.url + f"/api/queries/{q['id']}/answer",
                timeout=5,
                json={"client": self.client, "labeler": self.client, "choice": choice},
            )
            if r.ok:
                self.answered.append((q["key"], choice))


def clip_value(key: str, side: str) -> float:
    """A simulated person's hidden opinion of a clip, the same every time the clip is shown."""
    import random

    return random.Random(f"{key}/{side}").random()


def rank_one(url: str, run: str, client: str = "tab-1", labeler: str = "ann", token: str | None = None) -> dict | None:
    """One comparison of ranking mode as the page makes it: ask for the next one and answer it from `clip_value`;
    None when nothing waits to be placed."""
    headers = {"X-Prefrl-Token": token} if token else {}
    r = requests.post(
        f"{url}/api/runs/{run}/ranking/next", json={"client": client, "labeler": labeler}, headers=headers, timeout=10
    )
    assert r.status_code == 200, r.text
    c = r.json()["comparison"]
    if c is None:
        return None
    better = clip_value(c["clip"]["key"], c["clip"]["side"]) > clip_value(c["against"]["key"], c["against"]["side"])
    body = {"client": client, "labeler": labeler, "clip": c["clip"]["id"], "against": c["against"]["id"]}
    body |= {"answer": "better" if better else "worse", "response_ms": 900}
    r = requests.post(f"{url}/api/runs/{run}/ranking/answer", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return {**r.json(), "comparison": c, "answer": body["answer"]}


class RankingLabeler(LabelerThread):
    """Switches every run to ranking and places every clip that waits (answers from `clip_value`), until stopped."""

    def __init__(self, url: str):
        super().__init__(url)
        self.comparisons = 0

    def label(self, run: dict) -> None:
        if run["mode"] != "ranking":
            body = {"mode": "ranking", "client": "ranker"}
            requests.put(self.url + f"/api/runs/{run['id']}/mode", json=body, timeout=5)
        while not self.stop_event.is_set() and rank_one(self.url, run["id"], "ranker") is not None:
            self.comparisons += 1
