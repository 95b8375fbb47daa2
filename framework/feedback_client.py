"""The trainer's side of the human loop: the HTTP client of the feedback server and the human teacher.

`HumanTeacher.answer(queries)` renders the two clips of every query from the stored physics states
(`framework.clips`), uploads them with the query to the feedback server (humanFeedback/feedback_server.py; no shared
disk is needed), then waits with a progress bar until a person has answered them all on the page (or
`--feedback-timeout` passes). Every answer is appended to `<run>/answers.jsonl` the moment it arrives. Network errors,
a server that is down and replies that are not the server's JSON (a proxy, a wrong URL) are retried with backoff and
never end the run; a refused token or a malformed request is a `UsageError` (one line, exit 2). The trainer tells the
page what it is doing (waiting for answers, training until the next session and for about how long, finished).

Queries have stable keys (session, step, index), uploads are idempotent, and the server keeps every answer, so a
trainer killed while waiting and resumed (`--resume`) finds the answers given while it was down. A session ends by
"closing" its queries on the server: answered ones become final (undo no longer possible) and the labels the trainer
learns from are the ones the server returns then; unanswered ones are withdrawn from the page. When the server cannot
be reached at a `--feedback-timeout` deadline, the trainer goes on with every answer the server acknowledged before
(they are in answers.jsonl) and closes the session on the server once it is back.

Asynchronous feedback (`submit` / `collect`, the default in human mode after the first session): an uploader thread
renders and uploads the queries handed to it while the agent trains, and a poller thread reads the event feed every
`poll_interval` seconds (every answer and undo goes to answers.jsonl). An answer is taken once it has stood
`--feedback-undo-grace` seconds: the poller closes it on the server (`answered_only`, so pairs still waiting stay on
the page), and from then on the page cannot undo it; an undo before that takes it out. The checkpoint holds the
queries still waited for, so a resumed trainer watches them again and finds the answers given while it was down.

Ranking (a person switches the run to it on the page): the server answers each query from its ordering of clips, so
nothing above changes; `implied` reads the ordering after each batch of answers and hands the trainer the further
pairs it implies between clips of queries already taken (`framework.teacher.ImpliedPairs`), whose placements the page
can no longer undo.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
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
from framework.teacher import ImpliedPairs, QueryBatch, query_keys

TOKEN_ENV = "PREFRL_FEEDBACK_TOKEN"


def server_script() -> Path:
    """humanFeedback/feedback_server.py beside `framework/` in a checkout, or the installed `humanFeedback`'s."""
    import importlib.util

    beside = Path(__file__).resolve().parent.parent / "humanFeedback" / "feedback_server.py"
    spec = None if beside.is_file() else importlib.util.find_spec("humanFeedback")
    return Path(spec.origin).parent / "feedback_server.py" if spec and spec.origin else beside


SERVER_SCRIPT = server_script()


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
    """seconds to wait for the answers of one session, or at the end of an asynchronous run for those still out (0: no
    limit); after it, training goes on with those received"""
    feedback_question: str = "Which clip is better?"
    """the question shown above the two clips"""
    feedback_undo_grace: float = 10.0
    """asynchronous feedback: seconds an answer stays open to undo on the page before the trainer takes it"""
    clip_size: int = 320
    """width and height of query clips, pixels"""
    clip_fps: float = 30.0
    """frame rate of query clips (0: real time, the env's own rate)"""
    ranking_pairs_per_clip: int = 10
    """ranking (a person switches the run to it on the page, or `--teacher-ranking`): each clip placed in the ordering
    adds pairs with up to this many clips placed before it, labelled by the ordering (0: with all of them)"""


def validate_feedback_args(args: HumanFeedbackArgs) -> None:
    """One-line errors for the human teacher's flags."""
    if args.teacher_feedback_mode == "human":
        parsed = urlparse(args.feedback_server_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(
                f"--feedback-server-url {args.feedback_server_url!r} is not an http(s) URL "
                "(for example http://127.0.0.1:5001)"
            )
    if args.feedback_timeout < 0 or not math.isfinite(args.feedback_timeout):
        raise UsageError(f"--feedback-timeout must be >= 0 seconds (0: no limit), got {args.feedback_timeout}")
    if args.feedback_undo_grace < 0 or not math.isfinite(args.feedback_undo_grace):
        raise UsageError(f"--feedback-undo-grace must be >= 0 seconds, got {args.feedback_undo_grace}")
    if args.clip_size < 16 or args.clip_size % 2:
        raise UsageError(f"--clip-size must be an even number of pixels >= 16, got {args.clip_size}")
    if args.ranking_pairs_per_clip < 0:
        raise UsageError(f"--ranking-pairs-per-clip must be >= 0 (0: every pair), got {args.ranking_pairs_per_clip}")
    if args.clip_fps < 0:
        raise UsageError(f"--clip-fps must be >= 0 (0: real time), got {args.clip_fps}")


class FeedbackServerError(UsageError):
    """The server refused a request (4xx): a setup mistake (token, URL) rather than a network hiccup."""


class FeedbackTimeout(Exception):
    """The deadline passed while the server was unreachable."""


class NotTheServer(Exception):
    """A reply that is not the feedback server's JSON (a proxy's page, a wrong URL): retried like an outage."""


class FeedbackClient:
    """JSON over HTTP to the feedback server. Connection errors and 5xx answers are retried with backoff (printed
    once per outage); a 4xx is a `FeedbackServerError` with the server's message."""

    def __init__(
        self, url: str, token: str | None = None, request_timeout: float = 30.0, max_backoff: float = 10.0, log=None
    ):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["X-Prefrl-Client"] = "prefrl-trainer"
        if token:
            self.session.headers["X-Prefrl-Token"] = token
        self.request_timeout, self.max_backoff = request_timeout, max_backoff
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def page_url(self, run_id: str | None = None) -> str:
        return self.url + "/" + (f"?run={run_id}" if run_id else "")

    def request(
        self, method: str, path: str, deadline: float | None = None, expect: tuple[str, ...] = (), **kwargs
    ) -> dict:
        """One API call. Retried with backoff through outages, 5xx and replies without the `expect`ed JSON keys; with
        a `deadline` (time.monotonic()), every attempt is bounded by the time left and `FeedbackTimeout` is raised
        when it has passed."""
        delay, down_since = 0.5, None
        while True:
            timeout = self.request_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise FeedbackTimeout("the deadline passed")
            try:
                response = self.session.request(method, self.url + path, timeout=timeout, **kwargs)
                if response.status_code >= 500:
                    raise NotTheServer(f"HTTP {response.status_code}: {one_line(response.text)}")
                body = parse_reply(response, expect)
                if down_since is not None:
                    self.log(f"feedback server at {self.url} is back after {time.monotonic() - down_since:.0f} s")
                break
            except (requests.RequestException, NotTheServer) as e:
                problem = describe(e)
            if down_since is None:
                down_since = time.monotonic()
                self.log(
                    f"feedback server at {self.url} unreachable ({problem}); retrying with backoff "
                    "(nothing is lost: start the server and the run goes on)"
                )
            if deadline is not None and time.monotonic() + delay > deadline:
                raise FeedbackTimeout(problem)
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        if response.status_code == 401:
            raise FeedbackServerError(
                f"the feedback server at {self.url} refused the token: set ${TOKEN_ENV} to the "
                "token the server was started with"
            )
        if response.status_code >= 400:
            raise FeedbackServerError(
                f"the feedback server at {self.url} refused {method} {path}: {body.get('error', response.status_code)}"
            )
        return body

    # the trainer API
    def health(self, timeout: float = 2.0) -> bool:
        try:
            response = self.session.get(self.url + "/api/health", timeout=timeout)
            return response.status_code == 200 and "ok" in parse_reply(response, ("ok",))
        except (requests.RequestException, NotTheServer):
            return False

    def put_status(self, run_id: str, status: dict, timeout: float = 5.0) -> bool:
        """Tell the page what the trainer is doing; best effort (one try, short), since it only informs people."""
        try:
            return self.session.put(self.url + f"/api/runs/{run_id}/status", json=status, timeout=timeout).ok
        except requests.RequestException:
            return False

    def put_run(self, run_id: str, env_id: str, question: str, deadline: float | None = None) -> dict:
        return self.request(
            "PUT", f"/api/runs/{run_id}", deadline, ("run_id",), json={"env_id": env_id, "question": question}
        )

    def upload(
        self, run_id: str, specs: list[dict], clips: dict[str, tuple[bytes, bytes]], deadline: float | None = None
    ) -> dict:
        files = []
        for key, (left, right) in clips.items():
            files += [
                (f"left:{key}", (f"{key}-left.mp4", left, "video/mp4")),
                (f"right:{key}", (f"{key}-right.mp4", right, "video/mp4")),
            ]
        return self.request(
            "POST",
            f"/api/runs/{run_id}/queries",
            deadline,
            ("added",),
            data={"queries": json.dumps(specs)},
            files=files,
        )

    def queries(self, run_id: str, deadline: float | None = None) -> list[dict]:
        return self.request("GET", f"/api/runs/{run_id}/queries", deadline, ("queries",))["queries"]

    def events(self, run_id: str, since: int, deadline: float | None = None) -> tuple[list[dict], int]:
        body = self.request(
            "GET", f"/api/runs/{run_id}/events", deadline, ("events", "cursor"), params={"since": since}
        )
        return body["events"], body["cursor"]

    def close(
        self, run_id: str, keys: list[str], deadline: float | None = None, answered_only: bool = False
    ) -> dict[str, dict]:
        body = {"keys": keys, "answered_only": answered_only}
        return self.request("POST", f"/api/runs/{run_id}/close", deadline, ("labels",), json=body)["labels"]

    def ranking(self, run_id: str, deadline: float | None = None) -> dict:
        return self.request("GET", f"/api/runs/{run_id}/ranking", deadline, ("tiers", "comparisons"))

    def copy(self) -> FeedbackClient:
        """A client of the same server with its own connections, for another thread."""
        return FeedbackClient(
            self.url, self.session.headers.get("X-Prefrl-Token"), self.request_timeout, self.max_backoff, self.log
        )


def describe(e: Exception) -> str:
    """A short reason for an outage, for one line of the console."""
    if isinstance(e, requests.ConnectTimeout) or isinstance(e, requests.ReadTimeout):
        return "no reply in time"
    if isinstance(e, requests.ConnectionError):
        return "connection refused or dropped"
    return str(e) if isinstance(e, NotTheServer) else f"{type(e).__name__}: {one_line(str(e))}"


def one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def parse_reply(response: requests.Response, expect: tuple[str, ...]) -> dict:
    """The JSON object of a reply; `NotTheServer` for a 2xx that is not the feedback server's (HTML from a proxy or a
    wrong URL, cut-off JSON, missing fields). A 4xx without JSON becomes {"error": its text}."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        return body if isinstance(body, dict) else {"error": one_line(response.text)}
    if not isinstance(body, dict) or any(k not in body for k in expect):
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise NotTheServer(
            f"HTTP {response.status_code} with {kind} that is not the feedback server's reply "
            f"(a proxy or a wrong URL?): {one_line(response.text, 80)!r}"
        )
    return body


# ---------------------------------------------------------------------------------------------------- local server
def start_local_server(
    url: str, token: str | None = None, data_dir: str | None = None, log_path: str | None = None, wait_s: float = 30.0
) -> subprocess.Popen | None:
    """Start humanFeedback/feedback_server.py on the URL's loopback port as a child process, stopped at exit.

    Its output goes to `log_path` (appended; never a pipe, which would fill with the server's one line per request
    and stall it); the token goes by environment, never on the command line. Returns None when a server already
    answers at `url` (it is used as it is)."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1") or parsed.scheme != "http":
        raise UsageError(
            f"--feedback-server-autostart starts a server on this machine; --feedback-server-url must be "
            f"http://127.0.0.1:<port>, got {url!r}"
        )
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
    if log_path is None:
        log_path = os.path.join(tempfile.gettempdir(), f"prefrl-feedback-server-{parsed.port or 80}.log")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                f.seek(offset)
                said = f.read().decode(errors="replace").strip().splitlines()
            raise UsageError(
                f"the feedback server did not start: {said[-1] if said else 'no output'} (log: {log_path})"
            )
        if client.health(timeout=1.0):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise UsageError(f"the feedback server did not answer at {url} within {wait_s:.0f} s (log: {log_path})")

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)
    print(
        f"started a feedback server at {url} (pid {proc.pid}, log {log_path}); it stops when training ends", flush=True
    )
    return proc


# ---------------------------------------------------------------------------------------------------- the teacher
class HumanTeacher:
    """A `framework.teacher.Teacher` whose answers come from people on the feedback page."""

    def __init__(
        self,
        client: FeedbackClient,
        run_id: str,
        env_id: str,
        run_dir: str,
        clip_size: int = 320,
        clip_fps: float = 30.0,
        timeout: float = 0.0,
        question: str = "Which clip is better?",
        poll_interval: float = 0.5,
        progress: bool = True,
        close_grace: float = 30.0,
        undo_grace: float = 10.0,
        ranking_pairs_per_clip: int = 10,
        seed: int = 0,
    ):
        self.client, self.run_id, self.env_id = client, run_id, env_id
        self.clip_size, self.clip_fps, self.timeout = clip_size, clip_fps, timeout
        self.poll_interval, self.progress, self.close_grace = poll_interval, progress, close_grace
        self.answers_path = os.path.join(run_dir, "answers.jsonl")
        self.recorded: set[int] = set()  # event ids already in answers.jsonl
        self.history: list[dict] = []  # answer and undo events in answers.jsonl, in order
        self.unclosed: dict[int, list[str]] = {}  # sessions that ended while the server was unreachable
        self.closed: set[int] = set()  # sessions that ended, on the server or not
        self.answers_given = 0  # answered pairs of the closed sessions (can't-tell included)
        self.finalized: set[str] = set()  # asynchronous queries whose answers were taken
        self.schedule: list[tuple[int, int]] = []
        self.started = time.monotonic()
        self.last_closed: tuple[float, int] | None = None  # (time, env step) of the last session's close
        # asynchronous feedback: an uploader thread renders and uploads submitted queries, a poller thread reads the
        # event feed and takes answers once they are `undo_grace` seconds old (closing them on the server)
        self.undo_grace = undo_grace
        self.lock = threading.Lock()
        self.watching: dict[str, QueryBatch] = {}  # submitted, not yet final: key -> its batch
        self.standing: dict[str, tuple[dict, float]] = {}  # key -> (its answer event, when the trainer saw it)
        self.ready: list[tuple[str, float]] = []  # final answers not yet collected
        self.cursor = 0  # of the event feed
        self.rescan = False  # read the feed from its start again at the next poll
        self.uploads: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.thread_error: BaseException | None = None
        self.training = {"agent_step": 0, "reward_updates": 0, "reward_updated_step": None, "labels": 0}
        self.status_posted = 0.0
        self.announced = False
        self.pairs = ImpliedPairs(ranking_pairs_per_clip, seed)  # ranking mode on the page: the ordering's pairs
        self.comparisons = 0
        if os.path.exists(self.answers_path):  # a resumed run: these events are already in the file
            with open(self.answers_path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill
                        continue
                    if "event" in record:
                        self.recorded.add(record["event"])
                        self.history.append(record)
                    elif "closed" in record:
                        self.closed.add(record["closed"])
                        self.answers_given += record.get("answered", sum(x is not None for x in record["labels"]))
                        if not record.get("on_server", True):
                            self.unclosed[record["closed"]] = record["keys"]
                    elif "final" in record:  # asynchronous answers taken
                        self.finalized.update(record["final"])
                    elif "closed_on_server" in record:
                        self.unclosed.pop(record["closed_on_server"], None)
        self.answers_given += len(self.finalized)
        client.put_run(run_id, env_id, question)

    def state_dict(self) -> dict:
        """The asynchronous queries not answered for good yet (their clips are uploaded again where the server lacks
        them); the rest of what a resumed run needs (answers, sessions closed) is in answers.jsonl and on the
        server."""
        with self.lock:  # (answers taken on the server but not yet collected are kept with them)
            batches = {id(b): b for b in self.watching.values()}
            watching = {k: id(b) for k, b in self.watching.items()}
            return {
                "watching": watching,
                "batches": batches,
                "ready": list(self.ready),
                "pairs": self.pairs.state_dict(),
            }

    def load_state_dict(self, state: dict) -> None:
        """Watch the queries a checkpoint was waiting for again; answers given meanwhile are in the event feed."""
        with self.lock:
            self.ready += [tuple(answer) for answer in state.get("ready", [])]
        if "pairs" in state:
            self.pairs.load_state_dict(state["pairs"])
        batches, by_batch = state.get("batches", {}), {}
        for key, batch_id in state.get("watching", {}).items():
            by_batch.setdefault(batch_id, []).append(key)
        for batch_id, keys in by_batch.items():
            self._watch(batches[batch_id], keys)

    def plan(self, sessions: list[tuple[int, int]]) -> None:
        self.schedule = list(sessions)

    @property
    def ranks(self) -> bool:
        """A person may switch the run to ranking on the page at any time."""
        return True

    def implied(self, known) -> list[tuple[str, str, str, str, float]]:
        """The pairs the run's ordering on the server implies between clips of `known` queries (answers the trainer
        has taken: the server no longer lets anyone move their clips); none while the server cannot be reached (the
        next session asks again) or the run was never ranked."""
        try:
            state = self.client.ranking(self.run_id, deadline=time.monotonic() + 10)
        except (FeedbackTimeout, FeedbackServerError):  # (a server too old to rank: nothing to add)
            return []
        self.comparisons = state["comparisons"]
        best_first = state["tiers"]
        tiers = {(c["key"], c["side"]): len(best_first) - i for i, tier in enumerate(best_first) for c in tier}
        return self.pairs.new_pairs(tiers, set(known))

    # ------------------------------------------------------------------------------------- asynchronous feedback
    def submit(self, queries: QueryBatch) -> list[str]:
        """Hand the queries to the uploader thread (it renders and uploads them while the agent trains) and watch for
        their answers; returns their keys at once."""
        keys = query_keys(queries)
        self._watch(queries, keys)
        return keys

    def _watch(self, queries: QueryBatch, keys: list[str]) -> None:
        with self.lock:
            self.watching.update({k: queries for k in keys})
        if not self.threads:
            self.threads = [
                threading.Thread(target=work, args=(self.client.copy(),), name=f"prefrl-{name}", daemon=True)
                for name, work in (("uploader", self._uploader), ("poller", self._poller))
            ]
            for thread in self.threads:
                thread.start()
        self.uploads.put((queries, keys))

    def collect(self, final: bool = False) -> list[tuple[str, float]]:
        """The answers that became final since the last call. `final`: stop the threads, take every answer given so
        far as it stands (closing it on the server) and withdraw the queries nobody answered from the page."""
        if final and self.threads:
            self.stop.set()
            self.uploads.put(None)
            for thread in self.threads:  # (a thread retrying through an outage is left behind; it is a daemon)
                thread.join(self.close_grace)
            if self.thread_error is None:
                try:
                    self._poll_once(self.client, final=True, deadline=time.monotonic() + self.close_grace)
                except FeedbackTimeout:
                    print(
                        f"the feedback server is unreachable at the end of the run; {len(self.watching)} queries stay "
                        f"on the page (the answers it acknowledged are in {self.answers_path})",
                        flush=True,
                    )
        with self.lock:
            if self.thread_error is not None:
                raise self.thread_error
            ready, self.ready = self.ready, []
        return ready

    def report(self, step: int, labels: int, reward_updates: int) -> None:
        with self.lock:
            if reward_updates != self.training["reward_updates"]:
                self.training["reward_updated_step"] = step
            self.training.update(agent_step=step, labels=labels, reward_updates=reward_updates)

    def _uploader(self, client: FeedbackClient) -> None:
        from framework.clips import close_clip_renderers

        try:
            while (item := self.uploads.get()) is not None and not self.stop.is_set():
                queries, keys = item
                with self.lock:
                    keys = [k for k in keys if k in self.watching]
                if keys:
                    known = {q["key"] for q in client.queries(self.run_id)}
                    if set(keys) & known:  # asked again after a resume: their answers may be behind the feed's cursor
                        with self.lock:
                            self.rescan = True
                    self.upload(queries, keys=keys, client=client, known=known)
                    if not self.announced:
                        self.announced = True
                        print(
                            f"asynchronous feedback: the agent learns while you label at {client.page_url(self.run_id)}"
                            "; new pairs appear there as it asks for them",
                            flush=True,
                        )
        except BaseException as e:  # the main thread raises it at its next collect()
            self.thread_error = e
        finally:
            close_clip_renderers(this_thread=True)

    def _poller(self, client: FeedbackClient) -> None:
        try:
            while not self.stop.is_set():
                self._poll_once(client)
                self.stop.wait(self.poll_interval)
        except BaseException as e:
            self.thread_error = e

    def _poll_once(self, client: FeedbackClient, final: bool = False, deadline: float | None = None) -> None:
        """Read the event feed (every answer and undo goes to answers.jsonl), then close on the server the answers
        that stood for `undo_grace` seconds (all watched queries when `final`) and hand them to `collect`."""
        with self.lock:
            if self.rescan:
                self.cursor, self.rescan = 0, False
        while True:
            events, cursor = client.events(self.run_id, self.cursor, deadline)
            now = time.monotonic()
            with self.lock:
                mine = [e for e in events if e["key"] in self.watching]
            new = [self._record(e) for e in mine if e["id"] not in self.recorded]
            self._append(new)
            self.recorded.update(r["event"] for r in new)
            self.history += new
            with self.lock:
                for e in mine:
                    if e["kind"] == "answer":
                        self.standing[e["key"]] = (e, now)
                    else:
                        self.standing.pop(e["key"], None)
            self.cursor = cursor
            if len(events) < 1000:
                break
        if final:  # every query the server has; the others never reached the page
            known = {q["key"] for q in client.queries(self.run_id, deadline)}
        with self.lock:
            if final:
                for key in [k for k in self.watching if k not in known]:
                    del self.watching[key]
            due = (
                list(self.watching)
                if final
                else [k for k, (_, seen) in self.standing.items() if now - seen >= self.undo_grace]
            )
        if due:
            final_labels = client.close(self.run_id, due, deadline, answered_only=not final)
            done = [k for k in due if final_labels[k]["answered"]]
            labels = [final_labels[k]["label"] for k in done]
            self._append([{"final": done, "labels": labels, "withdrawn": len(due) - len(done), "time": time.time()}])
            with self.lock:
                self.ready += [(k, math.nan if x is None else float(x)) for k, x in zip(done, labels)]
                for key in done if not final else due:
                    self.watching.pop(key, None)
                    self.standing.pop(key, None)
                self.answers_given += len(set(done) - self.finalized)
                self.finalized.update(done)
        if final or time.monotonic() - self.status_posted > 5.0:
            with self.lock:
                status = {**self.training, "pending": len(self.watching), "labels_given": self.answers_given}
            del status["labels"]
            status |= {"state": "finished" if final else "learning", "sessions_done": status["reward_updates"]}
            client.put_status(self.run_id, status)
            self.status_posted = time.monotonic()

    @staticmethod
    def _record(e: dict) -> dict:
        """An event of the server's feed as answers.jsonl keeps it."""
        return {
            "event": e["id"],
            "key": e["key"],
            "kind": e["kind"],
            "choice": e["choice"],
            "label": e["label"],
            "labeler": e["labeler"],
            "time": e["time"],
            "client": e.get("client"),
            "response_ms": e.get("response_ms"),
        }

    # ------------------------------------------------------------------------------------------------ bookkeeping
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

    def label_info(self, keys: list[str]) -> list[dict]:
        """Who answered each query, when and how fast (its standing answer in answers.jsonl); `none` if nobody did."""
        wanted = set(keys)
        standing = self._replay({}, [r for r in list(self.history) if r["key"] in wanted])
        info = []
        for key in keys:
            e = standing.get(key)
            if e is None:
                info.append({"answer": "none"})
                continue
            ms = e.get("response_ms")
            info.append(
                {
                    "answer": e["choice"],
                    "labeler": e["labeler"] or "",
                    "labeler_session": e.get("client") or "",
                    "answered_at": e["time"],
                    "response_time_s": math.nan if ms is None else ms / 1000.0,
                }
            )
        return info

    def session_name(self, session: int) -> str:
        return f"feedback session {session + 1}" + (f" of {len(self.schedule)}" if self.schedule else "")

    def post_status(self, state: str, sessions_done: int, next_in_s: float | None = None) -> None:
        self.client.put_status(
            self.run_id,
            {
                "state": state,
                "sessions_done": sessions_done,
                "sessions_total": len(self.schedule) or None,
                "next_in_s": next_in_s,
                "labels_given": self.answers_given,
            },
        )

    def next_session_in(self, session: int, step: int) -> float | None:
        """Seconds until the session after `session` (which ran at env `step`), at the pace training kept since the
        previous session (or since this process started): None when unknown or there is none."""
        if session + 1 >= len(self.schedule):
            return None
        if self.last_closed is not None and step > self.last_closed[1]:
            seconds_per_step = (self.session_started - self.last_closed[0]) / (step - self.last_closed[1])
        elif session == 0 and step > 0:  # a new run's first session: the pace of pre-exploration
            seconds_per_step = (self.session_started - self.started) / step
        else:
            return None
        return max(self.schedule[session + 1][0] - step, 0) * seconds_per_step

    def close_unclosed(self, deadline: float | None = None) -> None:
        """Close on the server the sessions that ended while it was unreachable (their pairs leave the page)."""
        for session, keys in list(self.unclosed.items()):
            try:
                final = self.client.close(self.run_id, keys, deadline)
            except FeedbackTimeout:
                return
            used = {r["key"] for r in self.history if r["kind"] == "answer"}
            late = [k for k in keys if final[k]["answered"] and k not in used]
            self._append([{"closed_on_server": session, "late_answers": late, "time": time.time()}])
            del self.unclosed[session]
            if late:
                print(
                    f"{self.session_name(session)}: {len(late)} answers reached the server after the session ended "
                    "and were not used",
                    flush=True,
                )

    # ------------------------------------------------------------------------------------------------- the session
    def upload(
        self,
        queries: QueryBatch,
        on_first=None,
        keys: list[str] | None = None,
        client: FeedbackClient | None = None,
        known: set[str] | None = None,
    ) -> float:
        """Render and upload the clips the server does not have yet (`known`: the keys it has, asked for when not
        given) of the `keys` given, by default all of a session's; returns the seconds it took. `on_first()` is called
        as soon as the first pairs are on the server (rendering the rest goes on meanwhile)."""
        from framework.clips import get_clip_renderer, render_pair

        start = time.perf_counter()
        client = client or self.client
        all_keys = self.keys(queries) if keys is None else query_keys(queries)
        wanted = set(all_keys if keys is None else keys)
        keys = all_keys
        known = {q["key"] for q in client.queries(self.run_id)} if known is None else known
        todo = [i for i, k in enumerate(keys) if k in wanted and k not in known]
        if not todo:
            if on_first:
                on_first()
            return 0.0
        renderer = get_clip_renderer(self.env_id, self.clip_size)
        fps = self.clip_fps or renderer.fps
        seg_len = queries.mask_a.shape[1]
        # render on this thread, upload on another: the first pairs are answerable while later ones still render
        with ThreadPoolExecutor(max_workers=1) as uploader:
            pending = []
            chunk: dict[str, tuple[bytes, bytes]] = {}
            specs: list[dict] = []
            for n, i in enumerate(todo):
                chunk[keys[i]] = render_pair(
                    renderer, queries.physics_a[i], queries.mask_a[i], queries.physics_b[i], queries.mask_b[i], fps
                )
                # where the episode ended inside each clip (the frames after it are padding)
                specs.append(
                    {
                        "key": keys[i],
                        "session": queries.session,
                        "left_valid": max(float((queries.mask_a[i] > 0).sum()), 1.0) / seg_len,
                        "right_valid": max(float((queries.mask_b[i] > 0).sum()), 1.0) / seg_len,
                    }
                )
                if len(chunk) >= (2 if n < 4 else 5) or n == len(todo) - 1:
                    pending.append(uploader.submit(client.upload, self.run_id, specs, chunk))
                    if len(pending) == 1 and on_first:
                        pending[0].add_done_callback(lambda f: f.exception() is None and on_first())
                    chunk, specs = {}, []
            for future in pending:
                future.result()
        return time.perf_counter() - start

    def answer(self, queries: QueryBatch) -> np.ndarray:
        """Upload the queries, wait for their answers (or the timeout), and return P(right better) per query (NaN:
        skipped, or not answered in time)."""
        from tqdm import tqdm

        self.session_started = time.monotonic()
        keys = self.keys(queries)
        name = self.session_name(queries.session)
        self.close_unclosed(time.monotonic() + 5.0)
        self.post_status("waiting", queries.session)
        url = self.client.page_url(self.run_id)
        self.upload(
            queries,
            on_first=lambda: print(
                f"{name}: {len(keys)} pairs of clips; the first are ready to label at {url}", flush=True
            ),
        )
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        print(
            f"{name}: all {len(keys)} pairs are on the page; waiting for answers"
            + (f" (at most {self.timeout:g} s)" if deadline else ""),
            flush=True,
        )
        wanted = set(keys)
        # what people answered: first from answers.jsonl (a resumed run), then from the server's event feed
        current = self._replay({}, [r for r in self.history if r["key"] in wanted])
        cursor = 0
        bar = tqdm(
            total=len(keys),
            desc=f"{name}: answered",
            unit="pair",
            disable=not self.progress,
            file=sys.stderr,
            bar_format="{desc} {n}/{total} pairs |{bar:20}| {elapsed} waiting",
        )
        log = self.client.log
        self.client.log = lambda msg: tqdm.write(msg, file=sys.stderr) if self.progress else log(msg)
        timed_out = False
        try:
            while True:
                try:
                    while True:  # drain the event feed
                        events, cursor = self.client.events(self.run_id, cursor, deadline)
                        new = [self._record(e) for e in events if e["key"] in wanted and e["id"] not in self.recorded]
                        self._append(new)
                        self.recorded.update(r["event"] for r in new)
                        self.history += new
                        self._replay(current, new)
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
            self.client.log = log
        labels, answered, on_server = self._close(queries.session, keys, current, timed_out)
        self._append(
            [
                {
                    "closed": queries.session,
                    "step": queries.step,
                    "keys": keys,
                    "answered": answered,
                    "labels": [None if np.isnan(x) else float(x) for x in labels],
                    "on_server": on_server,
                    "time": time.time(),
                }
            ]
        )
        self.answers_given += answered
        self.closed.add(queries.session)
        if timed_out and on_server:
            print(
                f"{name}: --feedback-timeout {self.timeout:g} s passed with {answered} of {len(keys)} pairs "
                f"answered; training goes on with those, and the other {len(keys) - answered} left the page",
                flush=True,
            )
        elif not on_server:
            print(
                f"{name}: the feedback server is unreachable at the deadline; training goes on with the {answered} "
                f"answers it acknowledged (kept in {self.answers_path}); the session is closed on the server when "
                "it is back, until then its other pairs may still show on the page",
                flush=True,
            )
        finished = len(self.schedule) > 0 and queries.session + 1 >= len(self.schedule)
        self.post_status(
            "finished" if finished else "training",
            queries.session + 1,
            None if finished else self.next_session_in(queries.session, queries.step),
        )
        self.last_closed = (time.monotonic(), queries.step)
        return labels

    @staticmethod
    def _replay(current: dict[str, dict], events: list[dict]) -> dict[str, dict]:
        """Apply answer and undo events in order: `current` maps a key to its standing answer."""
        for e in events:
            if e["kind"] == "answer":
                current[e["key"]] = e
            else:
                current.pop(e["key"], None)
        return current

    def _close(
        self, session: int, keys: list[str], current: dict[str, dict], timed_out: bool
    ) -> tuple[np.ndarray, int, bool]:
        """Close the session on the server: what it holds now is final (the page can no longer undo it). Returns
        the labels, how many pairs were answered, and whether the server closed it. When the server cannot be reached
        (only after a deadline), every answer it acknowledged before counts and the close is retried later."""
        try:
            final = self.client.close(self.run_id, keys, time.monotonic() + self.close_grace if timed_out else None)
            on_server = True
        except FeedbackTimeout:
            final = {
                k: {"answered": k in current, "label": current[k]["label"] if k in current else None} for k in keys
            }
            self.unclosed[session] = keys
            on_server = False
        labels = np.array(
            [final[k]["label"] if final[k]["answered"] and final[k]["label"] is not None else np.nan for k in keys],
            dtype=np.float64,
        )
        return labels, sum(bool(final[k]["answered"]) for k in keys), on_server

    def finish(self) -> None:
        """At exit: close what could not be closed, and tell the page that this trainer asks for nothing more."""
        self.close_unclosed(time.monotonic() + 5.0)
        if self.threads:  # asynchronous feedback: what the page showed while it learned, and the end
            self.client.put_status(self.run_id, {**self.training, "state": "ended", "labels_given": self.answers_given})
        else:
            self.post_status("ended", len(self.closed))


def make_human_teacher(args: HumanFeedbackArgs, run_id: str, env_id: str, run_dir: str) -> HumanTeacher:
    """The human teacher of a run, starting a local server first with `--feedback-server-autostart` (its log is
    `<run>/feedback_server.log`). At exit the page is told that the run asks for nothing more."""
    token = os.environ.get(TOKEN_ENV) or None
    if args.feedback_server_autostart:
        start_local_server(args.feedback_server_url, token, log_path=os.path.join(run_dir, "feedback_server.log"))
    client = FeedbackClient(args.feedback_server_url, token)
    print(
        f"human feedback: queries go to {args.feedback_server_url}; answers are kept in {run_dir}/answers.jsonl",
        flush=True,
    )
    teacher = HumanTeacher(
        client,
        run_id,
        env_id,
        run_dir,
        args.clip_size,
        args.clip_fps,
        args.feedback_timeout,
        args.feedback_question,
        undo_grace=args.feedback_undo_grace,
        ranking_pairs_per_clip=args.ranking_pairs_per_clip,
        seed=getattr(args, "seed", 0) + 2,
    )
    atexit.register(teacher.finish)
    return teacher
