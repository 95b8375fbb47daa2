"""Tracking: TensorBoard scalars and hyperparameters read back; a W&B offline run written and readable."""

from __future__ import annotations

import glob
import json
import struct

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from framework.tracking import Tracker


def read_wandb_records(path: str) -> list:
    """Parse a `.wandb` transaction log: a 7-byte header, then LevelDB-log records of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    records, chunk, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
        elif kind == 0:
            break
    return records


def test_tensorboard_scalars_and_hyperparameters_read_back(tmp_path):
    tracker = Tracker("tb-run", {"learning_rate": 0.003, "env_id": "Hopper-v5"}, runs_dir=str(tmp_path))
    for step in range(10):
        tracker.scalar("charts/episodic_return", step * 1.5, step)
    tracker.steps_per_second(100)
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tb-run"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/episodic_return")
    assert [e.step for e in events] == list(range(10))
    assert [e.value for e in events] == [s * 1.5 for s in range(10)]
    assert acc.Scalars("charts/SPS")[0].value > 0
    text = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|learning_rate|0.003|" in text and "|env_id|Hopper-v5|" in text


def test_wandb_offline_run_is_written_and_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(
        "wb-run", {"learning_rate": 0.003, "seed": 7}, runs_dir=str(tmp_path), track=True, wandb_project="prefrl-test"
    )
    for step in range(5):
        tracker.scalar("charts/episodic_return", 10.0 + step, step)
    tracker.close()

    files = glob.glob(str(tmp_path / "wb-run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    assert any(r.HasField("exit") for r in records), "the run's log is complete when close() returns"
    run_info = [r.run for r in records if r.HasField("run")]
    assert run_info and run_info[0].project == "prefrl-test" and run_info[0].display_name == "wb-run"
    updates = [u for r in records if r.HasField("config") for u in r.config.update] + list(run_info[0].config.update)
    config = {u.key: json.loads(u.value_json) for u in updates}
    assert config["learning_rate"] == 0.003 and config["seed"] == 7
    returns = [
        json.loads(item.value_json)
        for r in records
        if r.HasField("history")
        for item in r.history.item
        if (item.key or "/".join(item.nested_key)) == "charts/episodic_return"
    ]
    assert returns == [10.0, 11.0, 12.0, 13.0, 14.0]


def test_compare_runs_tabulates_and_plots(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    for name, slope in (("Hopper-v5__sac__1__1", 1.0), ("Hopper-v5__sac__2__1", 3.0), ("Hopper-v5__ppo__1__1", 0.5)):
        tracker = Tracker(name, {}, runs_dir=str(tmp_path))
        for step in (1000, 2000, 3000):
            tracker.scalar("eval/episodic_return", slope * step, step)
        tracker.close()
    out = tmp_path / "curve.png"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "toolbox" / "compare_runs.py"),
            *map(str, sorted(tmp_path.glob("Hopper*"))),
            "--group-by",
            "exp",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "| Hopper-v5 | sac | 2 | 3000 | 6000.0 | 3000.0 | 9000.0 | 6000.0 | - |" in result.stdout
    assert "| Hopper-v5 | ppo | 1 | 3000 | 1500.0 | n/a | n/a | 1500.0 | - |" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Hopper-v5 | sac | 2 |" in (tmp_path / "curve.md").read_text()
    missing = subprocess.run(
        [sys.executable, str(ROOT / "toolbox" / "compare_runs.py"), str(tmp_path / "nope"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "nope: not a folder" in missing.stdout
    assert missing.stderr.startswith("error: nothing to compare") and "Traceback" not in missing.stderr
