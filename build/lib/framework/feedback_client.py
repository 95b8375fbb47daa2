"""The trainer's side of the human loop: the HTTP client of the feedback server and the human teacher.

`HumanTeacher.answer(queries)` renders the two clips of every query from the stored physics states
(`framework.clips`), uploads them with the query to the feedback server (humanFeedback/feedback_server.py; no shared
disk is needed), then waits with a progress bar until a person has answered them all on the page (or
`--feedback-timeout` passes). Every answer is appended to `<run>/answers.jsonl` the moment it arrives. Network errors
and a server that is down are retried with backoff and never end the run; a refused token or a malformed request is a
`UsageError` (one line, exit 2).

Queries have stable keys (session, step, index), uploads are idempotent, and the server keeps every answer, so a
trainer killed while waiting and resumed (`--resume`) finds the answers given while it was down. A session ends by
"closing" its queries on the server: answered ones become final (undo no longer possible) and the labels the trainer
learns from are the ones the server returns then; unanswered ones are withdrawn from the page.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import requests

from framework.runtime import UsageError
from framework.teacher import QueryBatch

TOKEN_ENV = "PREFRL_FEEDBACK_TOKEN"
SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "humanFeedback" / "feedback_server.py"


@dataclass
class HumanFeedbackArgs:
    """The flags of the human teacher, shared by every preference-based script."""

    teacher_feedback_mode: Literal["simulated", "human"] = "simulated"
    """who labels: `simulated` (the B-Pref teacher, `--teacher-*` flags) or `human` (a person on the feedback page)"""
    feedback_server_url: str = "http://127.0.0.1:5001"
    """the feedback server (human mode); a token, when the server needs one, comes from $PREFRL_FEEDBACK_TOKEN"""
    feedback_server_autostart: bool = False
    """start a local feedback server as a child process (stopped at exit), unless one already answers at the URL"""
    feedback_timeout: float = 0.0
    """seconds to wait for the answers of one session (0: no limit); after it, training goes on with those received"""
    feedback_question: str = "Which clip is better?"
    """the question shown above the two clips"""
    clip_size: int = 320
    """width and height of query clips, pixels"""
    clip_fps: float = 30.0
    """frame rate of query clips (0: real time, the env's own rate)"""


RESUME_OVERRIDABLE = ("feedback_server_url", "feedback_server_autostart", "feedback_timeout")
"""Flags that a `--resume` may change (the server can move while a run is stopped); all others come from the run."""


def validate_feedback_args(args: HumanFeedbackArgs) -> None:
    """One-line errors for the human teacher's flags (and a simulated teacher's reward given with a human one)."""
    if args.teacher_feedback_mode == "human" and getattr(args, "teacher_reward", None) is not None:
        raise UsageError("--teacher-reward sets the simulated teacher's reward; with --teacher-feedback-mode human "
                         "the person on the feedback page judges")
    if args.teacher_feedback_mode == "human":
        parsed = urlparse(args.feedback_server_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--feedback-server-url {args.feedback_server_url!r} is not an http(s) URL "
                             "(for example http://127.0.0.1:5001)")
    if args.feedback_timeout < 0 or not math.isfinite(args.feedback_timeout):
        raise UsageError(f"--feedback-timeout must be >= 0 seconds (0: no limit), got {args.feedback_timeout}")
    if args.clip_size < 16 or args.clip_size % 2:
        raise UsageError(f"--clip-size must be an even number of pixels >= 16, got {args.clip_size}")
    if args.clip_fps < 0:
        raise UsageError(f"--clip-fps must be >= 0 (0: real time), got {args.clip_fps}")


class FeedbackServerError(UsageError):
    """The server refused a request (4xx): a setup mistake (token, URL) rather than a network hiccup."""


class FeedbackTimeout(Exception):
    """The deadline passed while the server was unreachable."""


class FeedbackClient:
    """JSON over HTTP to the feedback server. Connection errors and 5xx answers are retried with backoff (printed
    once per outage); a 4xx is a `FeedbackServerError` with the server's message."""

    def __init__(self, url: str, token: str | None = None, request_timeout: float = 30.0, max_backoff: float = 10.0,
                 log=None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["X-Prefrl-Client"] = "prefrl-trainer"
        if token:
            self.session.headers["X-Prefrl-Token"] = token
        self.request_timeout, self.max_backoff = request_timeout, max_backoff
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock = threading.Lock()

    def page_url(self, run_id: str | None = None) -> str:
        return self.url + "/" + (f"?run={run_id}" if run_id else "")

    def request(self, method: str, path: str, deadline: float | None = None, **kwargs) -> dict:
        delay, down_since = 0.5, None
        while True:
            try:
                response = self.session.request(method, self.url + path, timeout=self.request_timeout, **kwargs)
                if response.status_code < 500:
                    if down_since is not None:
                        self.log(f"feedback server at {self.url} is back after {time.monotonic() - down_since:.0f} s")
                    break
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except requests.RequestException as e:
                problem = f"{type(e).__name__}: {str(e)[:200]}"
            if down_since is None:
                down_since = time.monotonic()
                self.log(f"feedback server at {self.url} unreachable ({problem}); retrying with backoff "
                         "(nothing is lost: start the server and the run goes on)")
            if deadline is not None and time.monotonic() + delay > deadline:
                raise FeedbackTimeout(problem)
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code == 401:
            raise FeedbackServerError(f"the feedback server at {self.url} refused the token: set ${TOKEN_ENV} to the "
                                      "token the server was started with")
        if response.status_code >= 400:
            raise FeedbackServerError(f"the feedback server at {self.url} refused {method} {path}: "
                                      f"{body.get('error', response.status_code)}")
        return body

    # the trainer API
    def health(self, timeout: float = 2.0) -> bool:
        try:
            return self.session.get(self.url + "/api/health", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def put_run(self, run_id: str, env_id: str, question: str, deadline: float | None = None) -> dict:
        return self.request("PUT", f"/api/runs/{run_id}", deadline, json={"env_id": env_id, "question": question})

    def upload(self, run_id: str, specs: list[dict], clips: dict[str, tuple[bytes, bytes]],
               deadline: float | None = None) -> dict:
        files = []
        for key, (left, right) in clips.items():
            files += [(f"left:{key}", (f"{key}-left.mp4", left, "video/mp4")),
                      (f"right:{key}", (f"{key}-right.mp4", right, "video/mp4"))]
        return self.request("POST", f"/api/runs/{run_id}/queries", deadline, data={"queries": json.dumps(specs)},
                            files=files)

    def queries(self, run_id: str, deadline: float | None = None) -> list[dict]:
        return self.request("GET", f"/api/runs/{run_id}/queries", deadline)["queries"]

    def events(self, run_id: str, since: int, deadline: float | None = None) -> tuple[list[dict], int]:
        body = self.request("GET", f"/api/runs/{run_id}/events", deadline, params={"since": since})
        return body["events"], body["cursor"]

    def close(self, run_id: str, keys: list[str], deadline: float | None = None) -> dict[str, dict]:
        return self.request("POST", f"/api/runs/{run_id}/close", deadline, json={"keys": keys})["labels"]


# ---------------------------------------------------------------------------------------------------- local server
def start_local_server(url: str, token: str | None = None, data_dir: str | None = None,
                       wait_s: float = 30.0) -> subprocess.Popen | None:
    """Start humanFeedback/feedback_server.py on the URL's loopback port as a child process, stopped at exit.

    Returns None when a server already answers at `url` (it is used as it is)."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1") or parsed.scheme != "http":
        raise UsageError(f"--feedback-server-autostart starts a server on this machine; --feedback-server-url must be "
                         f"http://127.0.0.1:<port>, got {url!r}")
    client = FeedbackClient(url, token)
    if client.health():
        print(f"feedback server already running at {url}; using it", flush=True)
        return None
    cmd = [sys.executable, str(SERVER_SCRIPT), "--host", parsed.hostname, "--port", str(parsed.port or 80)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    env = dict(os.environ)
    if token:
        env[TOKEN_ENV] = token
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"the feedback server did not start: {proc.stderr.read().strip()[-500:]}")
        if client.health(timeout=1.0):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise UsageError(f"the feedback server did not answer at {url} within {wait_s:.0f} s")

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)
    print(f"started a feedback server at {url} (pid {proc.pid}); it stops when training ends", flush=True)
    return proc


# ---------------------------------------------------------------------------------------------------- the teacher
class HumanTeacher:
    """A `framework.teacher.Teacher` whose answers come from people on the feedback page."""

    def __init__(self, client: FeedbackClient, run_id: str, env_id: str, run_dir: str, clip_size: int = 320,
                 clip_fps: float = 30.0, timeout: float = 0.0, question: str = "Which clip is better?",
                 poll_interval: float = 0.5, progress: bool = True, close_grace: float = 30.0):
        self.client, self.run_id, self.env_id = client, run_id, env_id
        self.clip_size, self.clip_fps, self.timeout = clip_size, clip_fps, timeout
        self.poll_interval, self.progress, self.close_grace = poll_interval, progress, close_grace
        self.answers_path = os.path.join(run_dir, "answers.jsonl")
        self.recorded: set[int] = set()
        if os.path.exists(self.answers_path):  # a resumed run: these events are already in the file
            with open(self.answers_path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill
                        continue
                    if "event" in record:
                        self.recorded.add(record["event"])
        client.put_run(run_id, env_id, question)
        self.return_scale = 1.0  # the simulated teacher's interface; a person needs no scale
        self.rng = np.random.default_rng(0)

    def set_return_scale(self, scale: float) -> None:
        self.return_scale = scale

    def _append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.answers_path, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keys(self, queries: QueryBatch) -> list[str]:
        return [f"s{queries.session}-t{queries.step}-q{i}" for i in range(len(queries))]

    def upload(self, queries: QueryBatch) -> float:
        """Render and upload the clips the server does not have yet; returns the seconds it took."""
        from framework.clips import get_clip_renderer, render_pair

        start = time.perf_counter()
        keys = self.keys(queries)
        known = {q["key"] for q in self.client.queries(self.run_id)}
        todo = [i for i, k in enumerate(keys) if k not in known]
        if not todo:
            return 0.0
        renderer = get_clip_renderer(self.env_id, self.clip_size)
        fps = self.clip_fps or renderer.fps
        # render on this thread, upload on another: the first pairs are answerable while later ones still render
        with ThreadPoolExecutor(max_workers=1) as uploader:
            pending = []
            chunk: dict[str, tuple[bytes, bytes]] = {}
            for n, i in enumerate(todo):
                chunk[keys[i]] = render_pair(renderer, queries.physics_a[i], queries.mask_a[i], queries.physics_b[i],
                                             queries.mask_b[i], fps)
                if len(chunk) >= (2 if n < 4 else 5) or n == len(todo) - 1:
                    specs = [{"key": k, "session": queries.session} for k in chunk]
                    pending.append(uploader.submit(self.client.upload, self.run_id, specs, chunk))
                    chunk = {}
            for future in pending:
                future.result()
        return time.perf_counter() - start

    def answer(self, queries: QueryBatch) -> np.ndarray:
        """Upload the queries, wait for their answers (or the timeout), and return P(right better) per query (NaN:
        skipped, or not answered in time)."""
        from tqdm import tqdm

        keys = self.keys(queries)
        seconds = self.upload(queries)
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        print(f"feedback session {queries.session + 1}: {len(keys)} pairs of clips wait for answers "
              f"(uploaded in {seconds:.1f} s). Open {self.client.page_url(self.run_id)} to label them.", flush=True)
        wanted = set(keys)
        current: dict[str, dict] = {}
        cursor = 0
        bar = tqdm(total=len(keys), desc="answers", unit="pair", disable=not self.progress, file=sys.stderr)
        timed_out = False
        try:
            while True:
                try:
                    while True:  # drain the event feed
                        events, cursor = self.client.events(self.run_id, cursor, deadline)
                        new = [e for e in events if e["key"] in wanted]
                        self._append([{"event": e["id"], "key": e["key"], "kind": e["kind"], "choice": e["choice"],
                                       "label": e["label"], "labeler": e["labeler"], "time": e["time"]}
                                      for e in new if e["id"] not in self.recorded])
                        for e in new:
                            self.recorded.add(e["id"])
                            if e["kind"] == "answer":
                                current[e["key"]] = e
                            else:
                                current.pop(e["key"], None)
                        if len(events) < 1000:
                            break
                except FeedbackTimeout:
                    timed_out = True
                bar.n = len(current)
                bar.refresh()
                if len(current) == len(keys):
                    break
                if timed_out or (deadline is not None and time.monotonic() >= deadline):
                    timed_out = True
                    break
                time.sleep(self.poll_interval)
        finally:
            bar.close()
        # close the session: what the server holds now is final (the page can no longer undo it)
        try:
            final = self.client.close(self.run_id, keys, time.monotonic() + self.close_grace if timed_out else None)
        except FeedbackTimeout:  # the server went away after the deadline: keep what arrived before
            final = {k: {"answered": k in current, "label": current[k]["label"] if k in current else None} for k in keys}
            print(f"feedback session {queries.session + 1}: the server is unreachable; using the {len(current)} "
                  "answers received before it went away", flush=True)
        labels = np.array([final[k]["label"] if final[k]["answered"] and final[k]["label"] is not None else np.nan
                           for k in keys], dtype=np.float64)
        answered = sum(final[k]["answered"] for k in keys)
        self._append([{"closed": queries.session, "step": queries.step, "keys": keys,
                       "labels": [None if np.isnan(x) else float(x) for x in labels], "time": time.time()}])
        if timed_out:
            print(f"feedback session {queries.session + 1}: --feedback-timeout {self.timeout:g} s passed with "
                  f"{answered} of {len(keys)} pairs answered; training goes on with those, the rest are withdrawn",
                  flush=True)
        return labels


def make_human_teacher(args: HumanFeedbackArgs, run_id: str, env_id: str, run_dir: str) -> HumanTeacher:
    """The human teacher of a run, starting a local server first with `--feedback-server-autostart`."""
    token = os.environ.get(TOKEN_ENV) or None
    if args.feedback_server_autostart:
        start_local_server(args.feedback_server_url, token)
    client = FeedbackClient(args.feedback_server_url, token)
    print(f"human feedback: queries go to {args.feedback_server_url}; answers are kept in {run_dir}/answers.jsonl",
          flush=True)
    return HumanTeacher(client, run_id, env_id, run_dir, args.clip_size, args.clip_fps, args.feedback_timeout,
                        args.feedback_question)
