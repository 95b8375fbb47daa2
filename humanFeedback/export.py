"""A run's answers as a table, read straight from the feedback server's SQLite file (no server needed).

    python humanFeedback/export.py --run <run> --out answers.parquet     # or .csv, .jsonl
    python humanFeedback/export.py --data-dir /elsewhere/data --list     # the runs, with their answer counts

One row per query of the run, in query order, with the columns of GET /api/runs/<run>/answers: key,
feedback_session, status (pending | answered | used | withdrawn), answer (left | right | equal | skip, empty when
unanswered), label (P(right clip better): left 0.0, right 1.0, equal 0.5, empty for skip), labeler, labeler_session
(the page tab that answered), asked_at and answered_at (unix seconds), response_time_s (how long the pair was on
screen before the answer) and undos. `--run` may be left out when the file holds one run. The file is opened
read-only, so exporting while the server runs is safe. Parquet needs pyarrow.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from feedback_server import ANSWER_COLUMNS, DB_FILE, DEFAULT_DATA_DIR, answer_rows  # noqa: E402

FORMATS = (".parquet", ".csv", ".jsonl")
PARQUET_TYPES = {  # the columns' types, also for a run whose column is empty (all null)
    "feedback_session": "int64",
    "label": "float64",
    "asked_at": "float64",
    "answered_at": "float64",
    "response_time_s": "float64",
    "undos": "int64",
}


class Refused(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other refusal here
        self.exit(2, f"error: {message}\n")


def open_database(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / DB_FILE
    if not data_dir.is_dir():
        raise Refused(f"no data folder {str(data_dir)!r} (give the server's --data-dir)")
    if not path.is_file():
        raise Refused(f"no {DB_FILE} in {str(data_dir)!r}: the feedback server has not used this folder")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def runs(con: sqlite3.Connection) -> list[tuple]:
    """(run id, env id, answered, queries) for every run, by id."""
    return con.execute(
        "SELECT r.id, r.env_id, COALESCE(SUM(q.status IN ('answered', 'used')), 0), COUNT(q.id) "
        "FROM runs r LEFT JOIN queries q ON q.run_id = r.id GROUP BY r.id ORDER BY r.id"
    ).fetchall()


def pick_run(con: sqlite3.Connection, run_id: str | None) -> str:
    known = [r[0] for r in runs(con)]
    if run_id is not None:
        if run_id not in known:
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise Refused(f"no run {run_id!r} in the database (runs: {shown or 'none'})")
        return run_id
    if len(known) != 1:
        raise Refused(
            "the database holds no run" if not known else f"the database holds {len(known)} runs: choose one with --run"
        )
    return known[0]


def write_parquet(rows: list[dict], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise Refused("writing parquet needs pyarrow: `pip install pyarrow`, or use .csv or .jsonl") from None
    schema = pa.schema([(c, getattr(pa, PARQUET_TYPES.get(c, "string"))()) for c in ANSWER_COLUMNS])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ANSWER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)  # None is written as an empty field


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


WRITERS = {".parquet": write_parquet, ".csv": write_csv, ".jsonl": write_jsonl}


def export(data_dir: Path, run_id: str | None, out: Path) -> tuple[str, int]:
    """Write the run's rows to `out` (its suffix names the format); returns (run id, rows)."""
    if out.suffix.lower() not in WRITERS:
        raise Refused(f"--out {str(out)!r} must end in {', '.join(FORMATS)}")
    if not out.parent.is_dir():
        raise Refused(f"no folder {str(out.parent)!r} to write {out.name!r} into")
    con = open_database(data_dir)
    try:
        run_id = pick_run(con, run_id)
        rows = answer_rows(con, run_id)
    finally:
        con.close()
    partial = out.with_name(f".{out.name}.tmp")  # a reader of `out` never sees half a file
    try:
        WRITERS[out.suffix.lower()](rows, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return run_id, len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description="Export a run's answers from the feedback server's data folder.")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="the feedback server's data folder (default: $PREFRL_FEEDBACK_DATA_DIR or humanFeedback/data)",
    )
    parser.add_argument("--run", default=None, help="the run to export (default: the only run in the database)")
    parser.add_argument("--out", default=None, help=f"the file to write; its suffix picks the format: {FORMATS}")
    parser.add_argument("--list", action="store_true", help="print the runs with their answer counts and stop")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    try:
        if args.list:
            con = open_database(data_dir)
            try:
                for run_id, env_id, answered, total in runs(con):
                    print(f"{run_id}\t{env_id}\t{answered} of {total} answered")
            finally:
                con.close()
            return 0
        if args.out is None:
            raise Refused("give --out <file>.parquet|.csv|.jsonl (or --list)")
        run_id, n = export(data_dir, args.run, Path(args.out))
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as e:
        print(f"error: cannot export from {str(data_dir)!r}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(f"{n} rows of run {run_id} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
