"""The benchmarks' run driver (`benchmarks/learning.py`'s `run_all`, which `teachers.py` uses too): an interrupted
benchmark continues with `--reuse-finished`, but a run made with other flags is never read as if it matched."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import learning  # noqa: E402


def fake_job(runs_dir, value: str) -> tuple[str, int, list[str]]:
    """A job that writes a summary.json, as a training script does, and takes a flag whose value may change."""
    code = f"import json, os; os.makedirs({str(runs_dir / 'fake_1')!r}, exist_ok=True); "
    code += f"json.dump({{'final_eval_return': {value}}}, open({str(runs_dir / 'fake_1' / 'summary.json')!r}, 'w'))"
    return ("fake", 1, [sys.executable, "-c", code, "--labels", value])


def test_finished_runs_are_reused_with_their_commit_and_refused_under_other_flags(tmp_path, capsys):
    first = learning.run_all([fake_job(tmp_path, "300")], 1, str(tmp_path))
    assert first[("fake", 1)]["final_eval_return"] == 300
    record = json.loads((tmp_path / "fake_1.json").read_text())
    assert record["command"][-2:] == ["--labels", "300"] and record["code"].startswith(("commit", "unknown"))

    again = learning.run_all([fake_job(tmp_path, "300")], 1, str(tmp_path), reuse_finished=True)
    assert again[("fake", 1)]["reused"] and again[("fake", 1)]["reused_from"] == record["code"]
    assert "fake seed 1 (" + record["code"] in learning.reuse_note(again)

    with pytest.raises(SystemExit, match=r"fake seed 1 in .* ran with other flags \(differing: .*500"):
        learning.run_all([fake_job(tmp_path, "500")], 1, str(tmp_path), reuse_finished=True)
    assert json.loads((tmp_path / "fake_1" / "summary.json").read_text())["final_eval_return"] == 300  # untouched

    (tmp_path / "fake_1.json").unlink()  # a run from before commands were recorded: read, said to be unchecked
    old = learning.run_all([fake_job(tmp_path, "500")], 1, str(tmp_path), reuse_finished=True)
    assert old[("fake", 1)]["reused_from"] == "unrecorded code"


def test_a_moved_runs_folder_is_still_reused_and_a_bad_tag_is_refused_in_one_line(tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    code = "import json, os, sys; d = os.path.join(sys.argv[sys.argv.index('--runs-dir') + 1], 'fake_1'); "
    code += "os.makedirs(d); json.dump({'final_eval_return': 300}, open(os.path.join(d, 'summary.json'), 'w'))"
    job = lambda runs: ("fake", 1, [sys.executable, "-c", code, "--runs-dir", str(runs)])  # as the scripts take it
    learning.run_all([job(first)], 1, str(first.mkdir() or first))
    first.rename(moved)
    again = learning.run_all([job(moved)], 1, str(moved), reuse_finished=True)
    assert again[("fake", 1)]["reused"] and again[("fake", 1)]["final_eval_return"] == 300

    with pytest.raises(SystemExit, match=r"^--tag 'a b': use lower-case letters"):
        learning.main(learning.Args(tag="a b", runs_dir=str(tmp_path)))
