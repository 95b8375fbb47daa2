"""The feedback server: trainers post pairs of clips, people answer which clip is better on a web page.

    python humanFeedback/feedback_server.py                        # http://127.0.0.1:5001, data in humanFeedback/data
    prefrl-feedback-server                                         # installed from a wheel: data in ~/.prefrl/feedback
    python humanFeedback/feedback_server.py --host 0.0.0.0 --token s3cret   # reachable from other machines

Everything lives in one SQLite file (WAL, synchronous=FULL) and a media folder beside it, so killing the server at any
moment loses nothing that was answered: an answer is on disk before the page hears "ok". Trainers talk to it only over
HTTP (clips are uploaded with their query), so trainer and server need no shared disk and may run on different
machines. The server imports nothing from `framework/`: this HTTP API is the whole contract.

Trainer API (JSON unless noted):
    PUT  /api/runs/<run>                  {env_id, question}           create or update a run
    PUT  /api/runs/<run>/status           {state, sessions_done, sessions_total, next_in_s, labels_given, and while
                                          learning: pending, agent_step, reward_updates, reward_updated_step}: what
                                          the trainer is doing (waiting | training | learning | finished | ended),
                                          shown on the page; `learning`: it trains while people answer
    POST /api/runs/<run>/queries          multipart: `queries` = JSON [{key, session, left_valid, right_valid}] (at
                                          most 1000 queries), files `left:<key>`, `right:<key>` (mp4); *_valid is the
                                          fraction of the clip before the episode ended in it (default 1); keys
                                          already known are left as they are
    GET  /api/runs/<run>/queries          every query of the run: key, session, status, label
    GET  /api/runs/<run>/events?since=N   answers and undos after event N (id, key, kind, choice, label, labeler,
                                          client, response_ms, time), and the new cursor
    GET  /api/runs/<run>/answers          one row per query of the run, in query order: key, feedback_session,
                                          status, answer, label, labeler, labeler_session (the answering tab),
                                          asked_at, answered_at, response_time_s, undos (`export.py` writes the same
                                          rows to a file, straight from the SQLite file)
    POST /api/runs/<run>/close            {keys, answered_only}: answered -> used (final), pending -> withdrawn (left
                                          pending with answered_only: true); returns the labels
    GET  /api/runs/<run>                  the run's progress
Page API:
    GET  /api/runs                        runs, most recently active first, with what is waiting
    POST /api/runs/<run>/lease            {client, labeler, exclude}: hold the next pending query (short lease)
    POST /api/leases/renew                {client, ids}
    POST /api/queries/<id>/answer         {client, labeler, choice: left|right|equal|skip, response_ms}; a 409 names
                                          its `reason` (answered | withdrawn | leased); response_ms (optional, null:
                                          unknown): how long the pair was on screen before the answer, 0 to 86400000
    POST /api/runs/<run>/undo             {client, labeler}: take back this client's last answer not yet used
Ranking mode (humanFeedback/ranking.py): instead of answering pairs, a labeler inserts the clips of the run's pending
queries, one at a time, into the run's ordering of clips, by comparisons with clips already placed (binary insertion,
ties allowed). A query is answered, with the label the ordering gives, once both its clips are placed; the ordering
implies a label for every pair of placed clips, which a trainer reads from GET /ranking. Clips are named
"<query id>:<side>". Every event is a row (kill -9 loses no placement); the ordering is their replay.
    PUT  /api/runs/<run>/mode             {mode: pairs|ranking, client}: switching to pairs gives the clip being
                                          inserted back to the pairs
    POST /api/runs/<run>/ranking/next     {client, labeler}: the comparison to make ({clip, against, comparisons_left},
                                          starting the next clip when none is being inserted), the ordering (best tier
                                          first) and progress; comparison null with held_elsewhere: true while another
                                          labeler inserts a clip of this run
    POST /api/runs/<run>/ranking/answer   {client, labeler, clip, against, answer: better|worse|equal, response_ms}:
                                          the clip being inserted is better than / worse than / as good as `against`;
                                          409 `stale` when the page showed a comparison that is no longer asked, a
                                          retried request is stored once
    POST /api/runs/<run>/ranking/undo     {client, labeler}: take back the run's last comparison (if it was this
                                          client's and its answer is not yet used by the trainer); replies as /next
    GET  /api/runs/<run>/ranking          {mode, tiers: best first, lists of {key, side}, pending, comparisons}
Labels: the probability that the RIGHT clip is better: left 0.0, right 1.0, equal 0.5, skip (can't tell) null.

Security: binds the loopback interface by default and then answers only requests addressed to a loopback name (a
web page elsewhere cannot reach it through DNS rebinding). Binding any other address requires a token (`--token`
or the PREFRL_FEEDBACK_TOKEN environment variable) that every request must carry: header `X-Prefrl-Token`, or
`?token=` once when opening the page, which then keeps it in an HttpOnly, SameSite=Strict cookie (tokens are
redacted from the log). `--allowed-hosts` limits the Host names a server off loopback answers. Clips are served only
from the media folder, by server-made names, and only as regular files. No CORS headers are sent, the page may not be
framed by other sites, JSON endpoints accept only `application/json`, and uploads need an `X-Prefrl-Client` header,
so other web sites cannot post answers.

Served by waitress (a production WSGI server: a fixed pool of threads, slow clients buffered, no debugger); each
request is logged as one line to stderr, which a trainer that starts the server sends to a file.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from flask import Flask, Response, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

if __package__:  # humanFeedback.feedback_server (installed); else run as a script, or imported beside ranking.py
    from .ranking import FIELDS, Cancel, Comparison, Ranking, Start, event_from_dict
else:
    from ranking import FIELDS, Cancel, Comparison, Ranking, Start, event_from_dict

HERE = Path(__file__).resolve().parent
# beside this file in a checkout; in the user's home when installed from a wheel (never inside site-packages)
IN_CHECKOUT = (HERE.parent / "pyproject.toml").is_file()
DATA_DIR_HERE = HERE / "data" if IN_CHECKOUT else Path.home() / ".prefrl" / "feedback"
DEFAULT_DATA_DIR = Path(os.environ.get("PREFRL_FEEDBACK_DATA_DIR") or DATA_DIR_HERE)
DB_FILE = "feedback.sqlite3"  # in the data folder, beside media/
TOKEN_ENV = "PREFRL_FEEDBACK_TOKEN"
CHOICES = {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=@-]{0,199}$")  # run ids and query keys
CLIP_NAME = re.compile(r"^[0-9a-f]{32}\.mp4$")
ROW_ID = re.compile(r"^[0-9]{1,18}$")  # ASCII digits only, below SQLite's 2^63
MAX_QUERIES = 1000  # per upload: 2 files each, plus the `queries` field
INT_RANGE = (-(2**63), 2**63 - 1)  # SQLite's integers
TRAINER_STATES = ("waiting", "training", "learning", "finished", "ended")
LEARNING_FIELDS = ("pending", "agent_step", "reward_updates", "reward_updated_step")  # optional trainer status
MAX_RESPONSE_MS = 86_400_000  # a day: the longest time before an answer that is stored
log = logging.getLogger("prefrl.feedback")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, env_id TEXT NOT NULL, question TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, session INTEGER NOT NULL,
    left_clip TEXT NOT NULL, right_clip TEXT NOT NULL, created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered', 'used', 'withdrawn')),
    choice TEXT, label REAL, labeler TEXT, answered_at REAL,
    lease_client TEXT, lease_until REAL,
    UNIQUE (run_id, key));
CREATE INDEX IF NOT EXISTS queries_waiting ON queries (run_id, status, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, query_id INTEGER NOT NULL, key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('answer', 'undo')),
    choice TEXT, label REAL, labeler TEXT, client TEXT, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS ranking_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL CHECK (kind IN ('start', 'comparison', 'cancel')),
    clip TEXT NOT NULL, against TEXT, answer TEXT, labeler TEXT, client TEXT, response_ms REAL, time REAL NOT NULL,
    undone REAL);
CREATE INDEX IF NOT EXISTS ranking_events_run ON ranking_events (run_id, id);
"""
# columns added after the first release: (table, column, declaration), added to older files at start
MIGRATIONS = [
    ("queries", "left_valid", "REAL NOT NULL DEFAULT 1.0"),
    ("queries", "right_valid", "REAL NOT NULL DEFAULT 1.0"),
    ("runs", "trainer", "TEXT"),
    ("runs", "trainer_time", "REAL"),
    ("queries", "response_ms", "REAL"),
    ("events", "response_ms", "REAL"),
    ("runs", "mode", "TEXT NOT NULL DEFAULT 'pairs'"),
    ("queries", "ranked", "INTEGER NOT NULL DEFAULT 0"),
]
MODES = ("pairs", "ranking")
SIDES = ("left", "right")
RANKING_ANSWERS = ("better", "worse", "equal")
# one row per query of a run (GET /api/runs/<run>/answers and export.py); labeler_session is the `client` (page tab)
# of the standing answer, undos counts the undo events of the query
ANSWER_COLUMNS = (
    "key",
    "feedback_session",
    "status",
    "answer",
    "label",
    "labeler",
    "labeler_session",
    "asked_at",
    "answered_at",
    "response_time_s",
    "undos",
)


class ApiError(Exception):
    """A request the server refuses: becomes `{"error": message}` with a 4xx status."""

    def __init__(self, status: int, message: str, reason: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.reason, self.extra = status, message, reason, extra


def connect(db_path: str) -> sqlite3.Connection:
    con = sqlite3.connect(db_path, timeout=30, isolation_level=None)  # autocommit; writes use BEGIN IMMEDIATE
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


class Transaction:
    """`with Transaction(con):` one serialised write transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error)."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ request checking
def parse_json(text: str | bytes, what: str):
    """JSON, or a 400 for anything Python's parser refuses: bad syntax, bad UTF-8, nesting too deep, integers of more
    than 4,300 digits."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, f"{what} is not valid JSON (or nested too deeply)") from None


def json_body() -> dict:
    if not request.is_json:
        raise ApiError(415, "send a JSON object with Content-Type: application/json")
    body = parse_json(request.get_data(cache=True), "the request body")
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def valid_text(value: str) -> bool:
    """Encodable as UTF-8 (no lone surrogates such as "\\ud800", which JSON allows and SQLite cannot store)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def field(body: dict, name: str, kind: type, required: bool = True, default=None):
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"missing field {name!r}")
        return default
    value = body[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"field {name!r} must be an integer, got {type(value).__name__}")
    if kind is int and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ApiError(400, f"field {name!r} must be an integer below 2^63")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"field {name!r} must be a finite number")
        try:
            value = float(value)  # an integer past 1.8e308 overflows
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ApiError(400, f"field {name!r} must be a finite number")
        return value
    if kind not in (int, float) and not isinstance(value, kind):
        raise ApiError(400, f"field {name!r} must be of type {kind.__name__}, got {type(value).__name__}")
    if kind is str and not valid_text(value):
        raise ApiError(400, f"field {name!r} is not valid text (lone surrogate)")
    return value


def short_text(body: dict, name: str, limit: int = 100, required: bool = True) -> str | None:
    value = field(body, name, str, required)
    if value is not None and not 0 < len(value) <= limit:
        raise ApiError(400, f"field {name!r} must have 1 to {limit} characters")
    return value


def checked_name(value, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ApiError(400, f"{what} {value!r} is not allowed (letters, digits and _.:+=@- , at most 200 characters)")
    return value


def id_list(body: dict, name: str, kind: type) -> list:
    values = field(body, name, list, required=False, default=[])
    if len(values) > 10_000 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise ApiError(400, f"field {name!r} must be a list of at most 10000 {kind.__name__} values")
    if kind is int and not all(INT_RANGE[0] <= v <= INT_RANGE[1] for v in values):
        raise ApiError(400, f"field {name!r} holds an integer beyond 2^63")
    return values


def host_name(host_header: str) -> str:
    """'127.0.0.1:5001' -> '127.0.0.1', '[::1]:5001' -> '::1', 'Example.org' -> 'example.org'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def redacted(path: str, query: str) -> str:
    """The request target for the log, with the token's value replaced."""
    if not query:
        return path
    pairs = [(k, "REDACTED" if k == "token" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{path}?{urlencode(pairs)}"


def answer_rows(con: sqlite3.Connection, run_id: str) -> list[dict]:
    """Every query of the run as a dict of ANSWER_COLUMNS, by query id, read in one statement (one snapshot).

    A file whose `response_ms` column is missing (written before it existed, opened read-only) gives None there."""
    has_time = "response_ms" in {r[1] for r in con.execute("PRAGMA table_info(queries)")}
    cur = con.execute(
        "WITH latest AS (SELECT query_id, MAX(id) AS id FROM events WHERE run_id = ? AND kind = 'answer' "
        "GROUP BY query_id), "
        "undos AS (SELECT query_id, COUNT(*) AS n FROM events WHERE run_id = ? AND kind = 'undo' GROUP BY query_id) "
        "SELECT q.key, q.session AS feedback_session, q.status, q.choice AS answer, q.label, q.labeler, "
        "CASE WHEN q.status IN ('answered', 'used') THEN e.client END AS labeler_session, q.created AS asked_at, "
        f"q.answered_at, {'q.response_ms / 1000.0' if has_time else 'NULL'} AS response_time_s, "
        "COALESCE(u.n, 0) AS undos "
        "FROM queries q LEFT JOIN latest ON latest.query_id = q.id LEFT JOIN events e ON e.id = latest.id "
        "LEFT JOIN undos u ON u.query_id = q.id WHERE q.run_id = ? ORDER BY q.id",
        (run_id, run_id, run_id),
    )
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, row)) for row in cur]


def sweep_media(media_dir: Path, con: sqlite3.Connection) -> tuple[int, int]:
    """Make the media folder agree with the database after a crash: a clip whose row was committed but whose file
    was not yet renamed into place is completed; files no row points at are removed. Returns (completed, removed)."""
    known = set()
    for left, right in con.execute("SELECT left_clip, right_clip FROM queries"):
        known.update((left, right))
    completed = removed = 0
    for path in media_dir.iterdir():
        name = path.name
        if (
            name.startswith(".")
            and name.endswith(".tmp")
            and name[1:-4] in known
            and not (media_dir / name[1:-4]).exists()
        ):
            os.replace(path, media_dir / name[1:-4])
            completed += 1
        elif name not in known and path.is_file():
            path.unlink()
            removed += 1
    return completed, removed


# ------------------------------------------------------------------------------------------------------ the app
def create_app(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    token: str | None = None,
    lease_seconds: float = 30.0,
    max_request_mb: float = 64.0,
    allowed_hosts: list[str] | None = None,
) -> Flask:
    """The Flask app over `<data_dir>/feedback.sqlite3` (DB_FILE) and `<data_dir>/media/` (both created when missing).

    `allowed_hosts`: the Host names requests may be addressed to; None: loopback names only; ["*"]: any."""
    data_dir = Path(data_dir).resolve()
    media_dir = data_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    db_path = str(data_dir / DB_FILE)
    con = connect(db_path)
    try:
        con.executescript(SCHEMA)
        for table, column, declaration in MIGRATIONS:
            if column not in {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        completed, removed = sweep_media(media_dir, con)
    finally:
        con.close()
    if completed or removed:
        log.info("media folder: %d clips completed, %d orphaned files removed", completed, removed)
    hosts = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}

    def host_allowed(name: str) -> bool:
        if allowed_hosts is None:  # a loopback server: loopback names only (no DNS rebinding)
            return is_loopback(name)
        return hosts is None or name in hosts

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(max_request_mb * 2**20)
    app.json.sort_keys = False
    app.request_class.max_form_parts = 2 * MAX_QUERIES + 10

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = connect(db_path)
        return g.db

    @app.teardown_appcontext
    def close_db(_exc) -> None:
        con = g.pop("db", None)
        if con is not None:
            con.close()

    def cookie_name() -> str:  # one per port: browsers share cookies between the ports of a host
        port = request.host.rsplit(":", 1)[-1] if request.host.rsplit(":", 1)[-1].isdigit() else "80"
        return f"prefrl_token_{port}"

    @app.before_request
    def check_host_and_token():
        g.started = time.perf_counter()
        name = host_name(request.host or "")
        if not host_allowed(name):
            return jsonify(error=f"requests to host {name[:100]!r} are not answered here"), 400
        if token is None:
            return None
        from_url = request.args.get("token")
        given = request.headers.get("X-Prefrl-Token") or request.cookies.get(cookie_name()) or from_url or ""
        if not valid_text(given) or not hmac.compare_digest(given.encode(), token.encode()):
            if request.path.startswith("/api/") or request.path.startswith("/media/"):
                return jsonify(error="missing or wrong token (send the X-Prefrl-Token header or ?token=)"), 401
            return Response("This feedback server needs its token: open /?token=<token>.", 401, mimetype="text/plain")
        g.set_cookie = from_url is not None and request.path == "/"
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        if g.get("set_cookie"):  # the page keeps the token out of its address bar and its clip URLs
            response.set_cookie(cookie_name(), token, httponly=True, samesite="Strict", path="/")
        # the access log: every response passes here, errors included (they become responses in the handlers below)
        ms = (time.perf_counter() - g.started) * 1000 if "started" in g else 0.0
        log.info(
            '%s "%s %s" %s %.1fms',
            request.remote_addr,
            request.method,
            redacted(request.path, request.query_string.decode("latin-1")),
            response.status_code,
            ms,
        )
        return response

    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return jsonify(error=e.message, **({"reason": e.reason} if e.reason else {}), **e.extra), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def server_error(e: Exception):
        app.logger.exception("unhandled error")
        return jsonify(error="internal server error (see the server's log)"), 500

    # -------------------------------------------------------------------------------------------------- helpers
    def get_run(con: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        checked_name(run_id, "run id")
        row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ApiError(404, f"no run {run_id!r}")
        return row

    def trainer_json(row: sqlite3.Row) -> dict | None:
        if row["trainer"] is None:
            return None
        return {**json.loads(row["trainer"]), "age_s": round(max(time.time() - row["trainer_time"], 0.0), 1)}

    def progress(con: sqlite3.Connection, run_id: str, session: int | None = None, client: str | None = None) -> dict:
        run = con.execute(
            "SELECT COUNT(*) AS total, SUM(status IN ('answered', 'used')) AS answered, "
            "SUM(status = 'pending') AS pending, "
            "SUM(status = 'pending' AND lease_client IS NOT NULL AND lease_client IS NOT ? AND lease_until >= ?) "
            "AS held FROM queries WHERE run_id = ?",
            (client, time.time(), run_id),
        ).fetchone()
        if session is None:
            session = con.execute("SELECT MAX(session) FROM queries WHERE run_id = ?", (run_id,)).fetchone()[0]
        ses = con.execute(
            "SELECT COUNT(*) AS total, SUM(status IN ('answered', 'used')) AS answered FROM queries "
            "WHERE run_id = ? AND session = ? AND status != 'withdrawn'",
            (run_id, session),
        ).fetchone()
        return {
            "session": session,
            "session_answered": ses["answered"] or 0,
            "session_total": ses["total"],
            "run_answered": run["answered"] or 0,
            "run_total": run["total"],
            "pending": run["pending"] or 0,
            "held_elsewhere": run["held"] or 0,
        }

    def query_json(con: sqlite3.Connection, row: sqlite3.Row) -> dict:
        run = con.execute("SELECT env_id, question FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
        return {
            "id": row["id"],
            "run_id": row["run_id"],
            "key": row["key"],
            "session": row["session"],
            "env_id": run["env_id"],
            "question": run["question"],
            "left": f"/media/{row['left_clip']}",
            "right": f"/media/{row['right_clip']}",
            "left_valid": row["left_valid"],
            "right_valid": row["right_valid"],
            "lease_seconds": lease_seconds,
        }

    def store_answer(con, row, choice: str, labeler, client, response_ms, now: float, ranked: bool = False) -> None:
        """Answer the query `row` (a pair's answer, or the label its ranked clips give) and add its answer event. A
        ranked answer keeps the time of the comparison that completed it in the event only."""
        label = CHOICES[choice]
        con.execute(
            "UPDATE queries SET status = 'answered', choice = ?, label = ?, labeler = ?, answered_at = ?, "
            "response_ms = ?, ranked = ?, lease_client = NULL, lease_until = NULL WHERE id = ?",
            (choice, label, labeler, now, None if ranked else response_ms, int(ranked), row["id"]),
        )
        con.execute(
            "INSERT INTO events (run_id, query_id, key, kind, choice, label, labeler, client, response_ms, time) "
            "VALUES (?, ?, ?, 'answer', ?, ?, ?, ?, ?, ?)",
            (row["run_id"], row["id"], row["key"], choice, label, labeler, client, response_ms, now),
        )
        con.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, row["run_id"]))

    def take_back_answer(con, row, labeler, client, now: float) -> None:
        """The query `row` is pending again, leased to `client` (who undid it), with an undo event."""
        con.execute(
            "UPDATE queries SET status = 'pending', choice = NULL, label = NULL, labeler = NULL, answered_at = NULL, "
            "response_ms = NULL, ranked = 0, lease_client = ?, lease_until = ? WHERE id = ?",
            (client, now + lease_seconds, row["id"]),
        )
        con.execute(
            "INSERT INTO events (run_id, query_id, key, kind, labeler, client, time) VALUES (?, ?, ?, 'undo', ?, ?, ?)",
            (row["run_id"], row["id"], row["key"], labeler, client, now),
        )

    # ------------------------------------------------------------------------------------------------- the page
    @app.get("/")
    def page():
        return send_from_directory(HERE / "static", "index.html", max_age=0)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.get("/media/<name>")
    def media(name: str):
        try:
            regular = CLIP_NAME.match(name) and stat.S_ISREG(os.lstat(media_dir / name).st_mode)
        except OSError:
            regular = False
        if not regular:  # server-made names only, and never a link out of the folder
            raise ApiError(404, "no such clip")
        return send_from_directory(media_dir, name, mimetype="video/mp4", max_age=3600, conditional=True)

    @app.get("/api/health")
    def health():
        return jsonify(ok=True, time=time.time())

    # ------------------------------------------------------------------------------------------ trainer API
    @app.put("/api/runs/<run_id>")
    def put_run(run_id: str):
        checked_name(run_id, "run id")
        body = json_body()
        env_id = short_text(body, "env_id", 200)
        question = short_text(body, "question", 500, required=False) or "Which clip is better?"
        now = time.time()
        with Transaction(db()) as con:
            con.execute(
                "INSERT INTO runs (id, env_id, question, created, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET env_id = excluded.env_id, question = excluded.question, "
                "updated = excluded.updated",
                (run_id, env_id, question, now, now),
            )
        return jsonify(run_id=run_id, env_id=env_id, question=question)

    @app.get("/api/runs/<run_id>")
    def run_status(run_id: str):
        con = db()
        run = get_run(con, run_id)
        return jsonify(
            run_id=run_id,
            env_id=run["env_id"],
            question=run["question"],
            progress=progress(con, run_id),
            trainer=trainer_json(run),
            mode=run["mode"],
        )

    @app.put("/api/runs/<run_id>/status")
    def put_trainer_status(run_id: str):
        if not request.headers.get("X-Prefrl-Client"):
            raise ApiError(403, "trainer status needs the X-Prefrl-Client header")
        body = json_body()
        state = field(body, "state", str)
        if state not in TRAINER_STATES:
            raise ApiError(400, f"state {state[:50]!r} is not one of {list(TRAINER_STATES)}")
        status = {
            "state": state,
            "sessions_done": field(body, "sessions_done", int, False, 0),
            "sessions_total": field(body, "sessions_total", int, False),
            "next_in_s": field(body, "next_in_s", float, False),
            "labels_given": field(body, "labels_given", int, False, 0),
        }
        for name in LEARNING_FIELDS:
            if name in body:
                status[name] = field(body, name, int, False)
        if any((v or 0) < 0 for k, v in status.items() if k != "state"):
            raise ApiError(400, f"{', '.join(k for k in status if k != 'state')} must be >= 0")
        with Transaction(db()) as con:
            get_run(con, run_id)
            con.execute(
                "UPDATE runs SET trainer = ?, trainer_time = ? WHERE id = ?", (json.dumps(status), time.time(), run_id)
            )
        return jsonify(trainer=status)

    @app.post("/api/runs/<run_id>/queries")
    def post_queries(run_id: str):
        if not request.headers.get("X-Prefrl-Client"):
            raise ApiError(403, "uploads need the X-Prefrl-Client header")
        con = db()
        get_run(con, run_id)
        specs = parse_json(request.form.get("queries", ""), "form field 'queries'")
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs) or len(specs) > MAX_QUERIES:
            raise ApiError(
                400, f"form field 'queries' must be a JSON list of at most {MAX_QUERIES} {{key, session}} objects"
            )
        keys = [checked_name(s.get("key"), "query key") for s in specs]
        if len(set(keys)) != len(keys):
            raise ApiError(400, "query keys repeat within the upload")
        sessions = [field(s, "session", int) for s in specs]
        if any(s < 0 for s in sessions):
            raise ApiError(400, "field 'session' must be >= 0")
        valid = [(field(s, "left_valid", float, False, 1.0), field(s, "right_valid", float, False, 1.0)) for s in specs]
        if not all(0.0 < v <= 1.0 for pair in valid for v in pair):
            raise ApiError(400, "fields 'left_valid' and 'right_valid' must be in (0, 1]")
        known = {
            r["key"]
            for r in con.execute(
                f"SELECT key FROM queries WHERE run_id = ? AND key IN ({','.join('?' * len(keys))})", (run_id, *keys)
            )
        }
        new = [(k, s, v) for k, s, v in zip(keys, sessions, valid) if k not in known]
        clips = {}
        for key, _, _ in new:  # check every file before writing any
            for side in ("left", "right"):
                upload = request.files.get(f"{side}:{key}")
                if upload is None:
                    raise ApiError(400, f"missing file '{side}:{key}'")
                data = upload.read()
                if len(data) < 12 or data[4:8] != b"ftyp":
                    raise ApiError(415, f"file '{side}:{key}' is not an mp4 video")
                clips[(key, side)] = data
        # write the clips under temporary names, commit the rows, then give the clips their names: a crash leaves
        # either temporary files no row points at or committed rows whose files the next start completes
        names = {(key, side): f"{uuid.uuid4().hex}.mp4" for key, side in clips}
        temporary = {name: media_dir / f".{name}.tmp" for name in names.values()}
        try:
            for (key, side), data in clips.items():
                with open(temporary[names[(key, side)]], "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            now = time.time()
            with Transaction(con):
                for key, session, (left_valid, right_valid) in new:
                    con.execute(
                        "INSERT INTO queries (run_id, key, session, left_clip, right_clip, created, left_valid, "
                        "right_valid) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
                        (
                            run_id,
                            key,
                            session,
                            names[(key, "left")],
                            names[(key, "right")],
                            now,
                            left_valid,
                            right_valid,
                        ),
                    )
                con.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))
        except BaseException:
            for path in temporary.values():
                path.unlink(missing_ok=True)
            raise
        stored = (
            {
                r[0]
                for r in con.execute(  # a concurrent upload of the same key won: its clips are the ones used
                    f"SELECT left_clip FROM queries WHERE left_clip IN ({','.join('?' * len(names))}) "
                    f"UNION SELECT right_clip FROM queries WHERE right_clip IN ({','.join('?' * len(names))})",
                    (*names.values(), *names.values()),
                )
            }
            if names
            else set()
        )
        for name, path in temporary.items():
            if name in stored:
                os.replace(path, media_dir / name)
            else:
                path.unlink(missing_ok=True)
        return jsonify(added=[k for k, _, _ in new], existing=sorted(known))

    @app.get("/api/runs/<run_id>/queries")
    def list_queries(run_id: str):
        con = db()
        get_run(con, run_id)
        rows = con.execute(
            "SELECT key, session, status, choice, label FROM queries WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return jsonify(queries=[dict(r) for r in rows])

    @app.get("/api/runs/<run_id>/events")
    def events(run_id: str):
        con = db()
        get_run(con, run_id)
        since = request.args.get("since", "0")
        if not ROW_ID.match(since):
            raise ApiError(400, f"'since' must be a non-negative integer below 2^63, got {since[:40]!r}")
        rows = con.execute(
            "SELECT id, key, kind, choice, label, labeler, client, response_ms, time FROM events "
            "WHERE run_id = ? AND id > ? "
            "ORDER BY id LIMIT 1000",
            (run_id, int(since)),
        ).fetchall()
        cursor = rows[-1]["id"] if rows else int(since)
        return jsonify(events=[dict(r) for r in rows], cursor=cursor)

    @app.get("/api/runs/<run_id>/answers")
    def answers(run_id: str):
        con = db()
        get_run(con, run_id)
        return jsonify(answers=answer_rows(con, run_id))

    @app.post("/api/runs/<run_id>/close")
    def close(run_id: str):
        body = json_body()
        keys = [checked_name(k, "query key") for k in id_list(body, "keys", str)]
        answered_only = field(body, "answered_only", bool, False, False)
        with Transaction(db()) as con:
            get_run(con, run_id)
            labels = {}
            for key in keys:
                row = con.execute(
                    "SELECT id, status, label FROM queries WHERE run_id = ? AND key = ?", (run_id, key)
                ).fetchone()
                if row is None:
                    raise ApiError(404, f"run {run_id!r} has no query {key!r}")
                if row["status"] == "answered":
                    con.execute("UPDATE queries SET status = 'used' WHERE id = ?", (row["id"],))
                elif row["status"] == "pending" and not answered_only:
                    con.execute(
                        "UPDATE queries SET status = 'withdrawn', lease_client = NULL WHERE id = ?", (row["id"],)
                    )
                answered = row["status"] in ("answered", "used")
                labels[key] = {"answered": answered, "label": row["label"] if answered else None}
        return jsonify(labels=labels)

    # --------------------------------------------------------------------------------------------- page API
    @app.get("/api/runs")
    def list_runs():
        con = db()
        rows = con.execute(
            "SELECT r.id, r.env_id, r.question, r.mode, r.updated, r.trainer, r.trainer_time, COUNT(q.id) AS total, "
            "SUM(q.status = 'pending') AS pending, SUM(q.status IN ('answered', 'used')) AS answered, "
            "MAX(q.created) AS last_query FROM runs r LEFT JOIN queries q ON q.run_id = r.id "
            "GROUP BY r.id ORDER BY (SUM(q.status = 'pending') > 0) DESC, COALESCE(MAX(q.created), r.updated) DESC"
        ).fetchall()
        return jsonify(
            runs=[
                {
                    **{
                        k: (r[k] or 0) if k in ("total", "pending", "answered") else r[k]
                        for k in r.keys()
                        if k not in ("trainer", "trainer_time")
                    },
                    "trainer": trainer_json(r),
                }
                for r in rows
            ]
        )

    @app.post("/api/runs/<run_id>/lease")
    def lease(run_id: str):
        body = json_body()
        client = short_text(body, "client")
        short_text(body, "labeler", required=False)
        exclude = id_list(body, "exclude", int)
        now = time.time()
        with Transaction(db()) as con:
            ranked = get_run(con, run_id)["mode"] == "ranking"  # its clips are placed through ranking/next instead
            not_in = f"AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
            row = (
                None
                if ranked
                else con.execute(
                    f"SELECT * FROM queries WHERE run_id = ? AND status = 'pending' "
                    f"AND (lease_client IS NULL OR lease_until < ? OR lease_client = ?) {not_in} "
                    f"ORDER BY (lease_client IS ? AND lease_until >= ?) DESC, id LIMIT 1",
                    (run_id, now, client, *exclude, client, now),
                ).fetchone()
            )
            if row is not None:
                con.execute(
                    "UPDATE queries SET lease_client = ?, lease_until = ? WHERE id = ?",
                    (client, now + lease_seconds, row["id"]),
                )
            run = con.execute("SELECT trainer, trainer_time, mode FROM runs WHERE id = ?", (run_id,)).fetchone()
            return jsonify(
                query=query_json(con, row) if row is not None else None,
                progress=progress(con, run_id, client=client),
                trainer=trainer_json(run),
                mode=run["mode"],
            )

    @app.post("/api/leases/renew")
    def renew():
        body = json_body()
        client = short_text(body, "client")
        ids = id_list(body, "ids", int)
        now = time.time()
        with Transaction(db()) as con:
            renewed = []
            for qid in ids:
                cur = con.execute(
                    "UPDATE queries SET lease_until = ? WHERE id = ? AND status = 'pending' AND "
                    "(lease_client = ? OR lease_client IS NULL OR lease_until < ?)",
                    (now + lease_seconds, qid, client, now),
                )
                if cur.rowcount:
                    con.execute("UPDATE queries SET lease_client = ? WHERE id = ?", (client, qid))
                    renewed.append(qid)
        return jsonify(renewed=renewed)

    @app.post("/api/queries/<query_id>/answer")
    def answer(query_id: str):
        if not ROW_ID.match(query_id):
            raise ApiError(404, f"no query {query_id[:40]!r}")
        query_id = int(query_id)
        body = json_body()
        client = short_text(body, "client")
        labeler = short_text(body, "labeler")
        choice = field(body, "choice", str)
        if choice not in CHOICES:
            raise ApiError(400, f"choice {choice!r} is not one of {sorted(CHOICES)}")
        response_ms = field(body, "response_ms", float, required=False)
        if response_ms is not None and not 0 <= response_ms <= MAX_RESPONSE_MS:
            raise ApiError(400, f"field 'response_ms' must be from 0 to {MAX_RESPONSE_MS} (milliseconds)")
        now = time.time()
        with Transaction(db()) as con:
            row = con.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
            if row is None:
                raise ApiError(404, f"no query {query_id}")
            if row["status"] in ("answered", "used"):
                if row["choice"] == choice:  # the same answer again (a retried request): stored once
                    return jsonify(ok=True, duplicate=True, progress=progress(con, row["run_id"], row["session"]))
                raise ApiError(
                    409,
                    f"query {query_id} is already answered ({row['choice']}); undo it first",
                    "answered",
                    choice=row["choice"],
                )
            if row["status"] == "withdrawn":
                raise ApiError(409, f"query {query_id} was withdrawn by the trainer", "withdrawn")
            if row["lease_client"] not in (None, client) and row["lease_until"] >= now:
                raise ApiError(409, f"query {query_id} is being answered by another labeler", "leased")
            store_answer(con, row, choice, labeler, client, response_ms, now)
            return jsonify(ok=True, duplicate=False, progress=progress(con, row["run_id"], row["session"]))

    @app.post("/api/runs/<run_id>/undo")
    def undo(run_id: str):
        body = json_body()
        client = short_text(body, "client")
        labeler = short_text(body, "labeler")
        now = time.time()
        with Transaction(db()) as con:
            get_run(con, run_id)
            row = con.execute(
                "SELECT q.* FROM events e JOIN queries q ON q.id = e.query_id WHERE e.run_id = ? AND e.kind = 'answer' "
                "AND e.client = ? AND q.status IN ('answered', 'used') "
                "AND e.id = (SELECT MAX(id) FROM events WHERE query_id = e.query_id) ORDER BY e.id DESC LIMIT 1",
                (run_id, client),
            ).fetchone()
            if row is None:
                raise ApiError(409, "nothing to undo")
            if row["status"] == "used":
                raise ApiError(409, "that answer was already used by the trainer and cannot be undone")
            take_back_answer(con, row, labeler, client, now)
            return jsonify(query=query_json(con, row), progress=progress(con, run_id, row["session"]))

    # ------------------------------------------------------------------------------------------ ranking mode
    # Clips of pending queries are inserted one at a time into the run's ordering (humanFeedback/ranking.py) by
    # comparisons with clips already placed; a query is answered once both its clips are placed, with the label the
    # ordering gives. The ordering is the replay of the run's ranking events (undone ones left out), kept in memory
    # per run and rebuilt whenever the events on disk differ from the ones it was built from.
    rankings: dict[str, tuple[tuple[int, int], Ranking]] = {}
    rankings_lock = threading.Lock()

    def ranking_stamp(con: sqlite3.Connection, run_id: str) -> tuple[int, int]:
        row = con.execute(
            "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM ranking_events WHERE run_id = ? AND undone IS NULL", (run_id,)
        ).fetchone()
        return (row[0], row[1])

    def ranking_of(con: sqlite3.Connection, run_id: str) -> Ranking:
        """The run's ordering, inside a transaction (the caller changes it only together with the events)."""
        stamp = ranking_stamp(con, run_id)
        with rankings_lock:
            cached = rankings.get(run_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        rows = con.execute(
            "SELECT kind, clip, against, answer FROM ranking_events WHERE run_id = ? AND undone IS NULL ORDER BY id",
            (run_id,),
        )
        ranking = Ranking.replay(event_from_dict({"kind": r[0], **{f: r[f] for f in FIELDS[r[0]]}}) for r in rows)
        with rankings_lock:
            rankings[run_id] = (stamp, ranking)
        return ranking

    def forget_ranking(run_id: str) -> None:
        with rankings_lock:
            rankings.pop(run_id, None)

    def add_ranking_event(con, run_id, ranking, event, client, labeler=None, response_ms=None) -> None:
        """Apply `event` to the cached ordering and store it (the caller's transaction commits both or neither)."""
        ranking.apply(event)
        con.execute(
            "INSERT INTO ranking_events (run_id, kind, clip, against, answer, labeler, client, response_ms, time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                type(event).__name__.lower(),
                event.clip,
                getattr(event, "against", None),
                getattr(event, "answer", None),
                labeler,
                client,
                response_ms,
                time.time(),
            ),
        )
        with rankings_lock:
            rankings[run_id] = (ranking_stamp(con, run_id), ranking)

    def clip_query(con: sqlite3.Connection, clip: str) -> tuple[sqlite3.Row | None, str]:
        """The query row and side of a clip id "<query id>:<side>"."""
        qid, side = clip.split(":")
        return con.execute("SELECT * FROM queries WHERE id = ?", (int(qid),)).fetchone(), side

    def clip_json(ranking: Ranking, clip: str, row: sqlite3.Row) -> dict:
        """A placed or pending clip "<query id>:<side>" of the query `row`, as the page and trainers see it."""
        side = clip.split(":")[1]
        return {
            "id": clip,
            "key": row["key"],
            "side": side,
            "url": f"/media/{row[side + '_clip']}",
            "valid": row[side + "_valid"],
            "tier": ranking.tier_of(clip),
        }

    def answer_if_ranked(con, run_id, ranking, row, client, labeler, response_ms) -> bool:
        """Answer a pending query whose two clips are both placed, with the ordering's label."""
        if row is None or row["status"] != "pending":
            return False
        label = ranking.label(f"{row['id']}:left", f"{row['id']}:right")
        if label is None:
            return False
        choice = {0.0: "left", 1.0: "right", 0.5: "equal"}[label]
        store_answer(con, row, choice, labeler, client, response_ms, time.time(), ranked=True)
        return True

    def next_comparison(con, run_id: str, ranking: Ranking, client: str, labeler: str | None) -> str | None:
        """Start inserting the next clip of a pending query (placing the first one at once) unless one is being
        inserted; keep its query leased to `client`. Returns None when another labeler holds the insertion."""
        now = time.time()
        if ranking.pending is not None:
            row, _ = clip_query(con, ranking.pending)
            if row is None or row["status"] != "pending":  # withdrawn or answered as a pair meanwhile
                add_ranking_event(con, run_id, ranking, Cancel(ranking.pending), client, labeler)
            elif row["lease_client"] not in (None, client) and row["lease_until"] >= now:
                return "held"
        while ranking.pending is None:
            placed = ranking.placed
            rows = con.execute(
                "SELECT * FROM queries WHERE run_id = ? AND status = 'pending' "
                "AND (lease_client IS NULL OR lease_until < ? OR lease_client = ?) ORDER BY id",
                (run_id, now, client),
            )
            clip = next((f"{r['id']}:{s}" for r in rows for s in SIDES if f"{r['id']}:{s}" not in placed), None)
            if clip is None:
                return None
            add_ranking_event(con, run_id, ranking, Start(clip), client, labeler)
            answer_if_ranked(con, run_id, ranking, clip_query(con, clip)[0], client, labeler, None)
        hold(con, clip_query(con, ranking.pending)[0]["id"], client, now)
        return ranking.pending

    def hold(con: sqlite3.Connection, query_id: int, client: str, now: float) -> None:
        """Lease the query whose clip is being inserted to the labeler inserting it."""
        con.execute(
            "UPDATE queries SET lease_client = ?, lease_until = ? WHERE id = ?", (client, now + lease_seconds, query_id)
        )

    def ordering_json(con, run_id: str, ranking: Ranking) -> list[list[dict]]:
        """The ordering, best tier first, each clip with its key, side and clip URL (the run's queries read once)."""
        rows = {str(r["id"]): r for r in con.execute("SELECT * FROM queries WHERE run_id = ?", (run_id,))}
        tiers = ranking.tiers
        return [[clip_json(ranking, c, rows[c.split(":")[0]]) for c in tier] for tier in reversed(tiers)]

    def comparison_json(con, run_id: str, ranking: Ranking, client: str, state: str | None) -> dict:
        run = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        reply = {
            "mode": run["mode"],
            "comparison": None,
            "held_elsewhere": state == "held",
            "ordering": ordering_json(con, run_id, ranking),
            "progress": progress(con, run_id, client=client),
            "trainer": trainer_json(run),
        }
        if state not in (None, "held"):
            reply["comparison"] = {
                "run_id": run_id,
                "env_id": run["env_id"],
                "question": run["question"],
                **{
                    name: clip_json(ranking, clip, clip_query(con, clip)[0])
                    for name, clip in (("clip", ranking.pending), ("against", ranking.next_comparison()))
                },
                "comparisons_left": ranking.comparisons_left,
                "lease_seconds": lease_seconds,
            }
        return reply

    def ranking_call(run_id: str, body_fn):
        """Run `body_fn(con, run, ranking)` in one write transaction; the cached ordering is dropped on any error."""
        try:
            with Transaction(db()) as con:
                run = get_run(con, run_id)
                return body_fn(con, run, ranking_of(con, run_id))
        except BaseException:
            forget_ranking(run_id)
            raise

    @app.put("/api/runs/<run_id>/mode")
    def set_mode(run_id: str):
        body = json_body()
        mode = field(body, "mode", str)
        if mode not in MODES:
            raise ApiError(400, f"mode {mode[:50]!r} is not one of {list(MODES)}")
        client = short_text(body, "client", required=False)

        def change(con, run, ranking):
            if mode == "pairs" and ranking.pending is not None:  # the clip being inserted goes back to the pairs
                row, _ = clip_query(con, ranking.pending)
                add_ranking_event(con, run_id, ranking, Cancel(ranking.pending), client)
                con.execute("UPDATE queries SET lease_client = NULL, lease_until = NULL WHERE id = ?", (row["id"],))
            con.execute("UPDATE runs SET mode = ? WHERE id = ?", (mode, run_id))
            return jsonify(mode=mode)

        return ranking_call(run_id, change)

    @app.post("/api/runs/<run_id>/ranking/next")
    def ranking_next(run_id: str):
        body = json_body()
        client = short_text(body, "client")
        labeler = short_text(body, "labeler", required=False)

        def step(con, run, ranking):
            if run["mode"] != "ranking":
                return jsonify(comparison_json(con, run_id, ranking, client, None))
            state = next_comparison(con, run_id, ranking, client, labeler)
            return jsonify(comparison_json(con, run_id, ranking, client, state))

        return ranking_call(run_id, step)

    @app.post("/api/runs/<run_id>/ranking/answer")
    def ranking_answer(run_id: str):
        body = json_body()
        client = short_text(body, "client")
        labeler = short_text(body, "labeler")
        clip, against = short_text(body, "clip"), short_text(body, "against")
        answer = field(body, "answer", str)
        if answer not in RANKING_ANSWERS:
            raise ApiError(400, f"answer {answer[:50]!r} is not one of {list(RANKING_ANSWERS)}")
        response_ms = field(body, "response_ms", float, required=False)
        if response_ms is not None and not 0 <= response_ms <= MAX_RESPONSE_MS:
            raise ApiError(400, f"field 'response_ms' must be from 0 to {MAX_RESPONSE_MS} (milliseconds)")

        def record(con, run, ranking):
            last = con.execute(
                "SELECT clip, against, answer FROM ranking_events WHERE run_id = ? AND kind = 'comparison' "
                "AND undone IS NULL AND client = ? ORDER BY id DESC LIMIT 1",
                (run_id, client),
            ).fetchone()
            if last is not None and tuple(last) == (clip, against, answer) and ranking.pending != clip:
                return jsonify(ok=True, duplicate=True, progress=progress(con, run_id, client=client))
            if run["mode"] != "ranking":
                raise ApiError(409, f"run {run_id!r} is labeled by pairs now", "mode")
            if ranking.pending != clip:
                raise ApiError(409, f"clip {clip[:40]!r} is not the one being inserted any more", "stale")
            row, _ = clip_query(con, clip)
            if row["lease_client"] not in (None, client) and row["lease_until"] >= time.time():
                raise ApiError(409, "another labeler is inserting this clip", "leased")
            try:
                event = Comparison(clip, against, answer)
                add_ranking_event(con, run_id, ranking, event, client, labeler, response_ms)
            except ValueError as e:
                raise ApiError(409, f"that comparison no longer fits the ordering: {e}", "stale") from None
            placed = ranking.pending is None
            answered = placed and answer_if_ranked(con, run_id, ranking, row, client, labeler, response_ms)
            reply = {"ok": True, "duplicate": False, "placed": placed, "answered": answered}
            return jsonify(**reply, progress=progress(con, run_id, client=client))

        return ranking_call(run_id, record)

    @app.post("/api/runs/<run_id>/ranking/undo")
    def ranking_undo(run_id: str):
        body = json_body()
        client = short_text(body, "client")
        labeler = short_text(body, "labeler", required=False)

        def take_back(con, run, ranking):
            last = con.execute(
                "SELECT * FROM ranking_events WHERE run_id = ? AND kind = 'comparison' AND undone IS NULL "
                "ORDER BY id DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            if last is None:
                raise ApiError(409, "nothing to undo")
            if last["client"] != client:
                raise ApiError(409, "the last comparison of this run was made by another labeler", "other")
            row, _ = clip_query(con, last["clip"])
            if row["ranked"] and row["status"] == "used":
                raise ApiError(409, "that answer was already used by the trainer and cannot be undone", "used")
            now = time.time()
            # the comparison and what followed it on its own (the next clip started, a cancel) are taken back
            con.execute(
                "UPDATE ranking_events SET undone = ? WHERE run_id = ? AND id >= ? AND undone IS NULL",
                (now, run_id, last["id"]),
            )
            forget_ranking(run_id)
            if row["ranked"] and row["status"] == "answered":
                take_back_answer(con, row, labeler, client, now)
            else:
                hold(con, row["id"], client, now)
            ranking = ranking_of(con, run_id)
            return jsonify(comparison_json(con, run_id, ranking, client, ranking.pending))

        return ranking_call(run_id, take_back)

    @app.get("/api/runs/<run_id>/ranking")
    def ranking_state(run_id: str):
        def read(con, run, ranking):
            return jsonify(
                mode=run["mode"],
                tiers=[
                    [{"key": c["key"], "side": c["side"]} for c in tier] for tier in ordering_json(con, run_id, ranking)
                ],
                pending=None if ranking.pending is None else clip_query(con, ranking.pending)[0]["key"],
                comparisons=sum(isinstance(e, Comparison) for e in ranking.events),
            )

        return ranking_call(run_id, read)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The prefrl feedback server (labeling page + trainer API).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=5001, help="port (default: 5001)")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="folder for the SQLite file and the clips (default: $PREFRL_FEEDBACK_DATA_DIR or humanFeedback/data)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"token every request must carry; required off loopback (default: ${TOKEN_ENV}, which keeps "
        "it out of the process list)",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names answered when bound off loopback (default: any; on loopback "
        "only loopback names are answered)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="how long a page holds a query without renewing it (a closed tab frees it after this)",
    )
    parser.add_argument("--max-request-mb", type=float, default=64.0, help="largest request accepted (uploads)")
    parser.add_argument("--threads", type=int, default=8, help="requests served at once (waitress worker threads)")
    parser.add_argument("--quiet", action="store_true", help="no line per request in the log")
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.token:
        print(
            f"error: --host {args.host} is reachable from other machines; give a token with ${TOKEN_ENV} or "
            f"--token (for example: {TOKEN_ENV}={secrets.token_urlsafe(16)})",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.port < 65536 or not 1 <= args.threads <= 256:
        print(
            f"error: --port must be 1-65535 (got {args.port}) and --threads 1-256 (got {args.threads})", file=sys.stderr
        )
        return 2
    if not (0 < args.lease_seconds < 1e6 and 0 < args.max_request_mb < 1e6):
        print(
            f"error: --lease-seconds and --max-request-mb must be positive, got {args.lease_seconds} and "
            f"{args.max_request_mb}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.getLogger("waitress").setLevel(logging.INFO)
    allowed = (
        None
        if is_loopback(args.host) and args.allowed_hosts is None
        else ([h.strip() for h in (args.allowed_hosts or "*").split(",") if h.strip()])
    )
    if allowed is not None and is_loopback(args.host):
        allowed += ["localhost", "127.0.0.1", "::1"]
    try:
        app = create_app(args.data_dir, args.token or None, args.lease_seconds, args.max_request_mb, allowed)
    except (OSError, sqlite3.Error) as e:
        print(f"error: cannot use --data-dir {args.data_dir!r}: {e}", file=sys.stderr)
        return 2
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    suffix = "/?token=<token>" if args.token else "/"
    print(f"feedback server: http://{shown}:{args.port}{suffix} (data in {Path(args.data_dir).resolve()})", flush=True)
    from waitress import serve

    try:
        serve(
            app,
            host=args.host,
            port=args.port,
            threads=args.threads,
            channel_timeout=60,
            connection_limit=200,
            ident="prefrl",
            clear_untrusted_proxy_headers=True,
            max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 2**20,
        )
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
