"""The benchmarks' run driver (`benchmarks/learning.py`'s `run_all`, which `teachers.py` uses too): an interrupted
benchmark continues with `--reuse-finished` (finished runs read, stopped ones resumed), but a run made with other
flags is never read or resumed as if it matched."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import learning  # noqa: E402
import teachers  # noqa: E402


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
    with pytest.raises(SystemExit, match=r"^--tag 'B': use lower-case letters"):
        teachers.main(teachers.Args(tag="B", runs_dir=str(tmp_path)))


def test_a_stopped_run_is_resumed_from_its_checkpoint_and_keeps_its_record(tmp_path):
    script = tmp_path / "fake.py"  # as a training script: SIGTERM saves a checkpoint and exits 130; --resume ends it
    script.write_text(
        "import json, os, sys\n"
        "if '--resume' in sys.argv:\n"
        "    run = sys.argv[sys.argv.index('--resume') + 1]\n"
        "    step = json.load(open(os.path.join(run, 'checkpoint.pt')))['step']\n"
        "    json.dump({'final_eval_return': 1000 + step}, open(os.path.join(run, 'summary.json'), 'w'))\n"
        "    print('resumed at step', step)\n"
        "else:\n"
        "    run = os.path.join(sys.argv[sys.argv.index('--runs-dir') + 1], 'fake_1')\n"
        "    os.makedirs(run)\n"
        "    json.dump({'step': 7}, open(os.path.join(run, 'checkpoint.pt'), 'w'))\n"
        "    print('stopped at step 7')\n"
        "    sys.exit(130)\n"
    )
    job = lambda labels: ("fake", 1, [sys.executable, str(script), "--runs-dir", str(tmp_path), "--labels", labels])
    with pytest.raises(SystemExit, match="fake seed 1 failed"):
        learning.run_all([job("300")], 1, str(tmp_path))
    first = json.loads((tmp_path / "fake_1.json").read_text())

    with pytest.raises(SystemExit, match=r"fake seed 1 in .* ran with other flags \(differing: .*500"):
        learning.run_all([job("500")], 1, str(tmp_path), reuse_finished=True)
    assert not (tmp_path / "fake_1" / "summary.json").exists()

    resumed = learning.run_all([job("300")], 1, str(tmp_path), reuse_finished=True)
    assert resumed[("fake", 1)]["final_eval_return"] == 1007 and resumed[("fake", 1)]["resumed_from"] == first["code"]
    record = json.loads((tmp_path / "fake_1.json").read_text())
    assert record["command"] == first["command"] and record["code"] == first["code"]
    assert len(record["resumed_with"]) == 1
    assert (tmp_path / "fake_1.log").read_text().splitlines() == ["stopped at step 7", "resumed at step 7"]
    assert "Finished by `--resume` from a checkpoint" in learning.reuse_note(resumed)
    assert f"fake seed 1 ({first['code']})" in learning.reuse_note(resumed)

    again = learning.run_all([job("300")], 1, str(tmp_path), reuse_finished=True)  # now finished: read, still said
    assert again[("fake", 1)]["reused"] and again[("fake", 1)]["resumed_from"] == first["code"]


def test_the_teachers_table_is_made_from_finished_runs_and_their_logs(tmp_path, monkeypatch):
    """teachers.py over runs already finished: returns per seed, the ratio to the perfect teacher, labels, skips and
    the learned reward's last Pearson r read from each run's log, in a results file named by --tag."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(teachers, "RESULTS", tmp_path / "results")
    runs = tmp_path / "runs"
    args = teachers.Args(teachers=("oracle", "skip"), seeds=(1, 2), runs_dir=str(runs), reuse_finished=True, tag="t")
    finished = {("oracle", 1): (2000.0, 0, 0.6), ("oracle", 2): (4000.0, 0, 0.8), ("skip", 1): (1500.0, 40, 0.4)}
    finished[("skip", 2)] = (3000.0, 60, 0.5)
    for algo, seed, cmd in teachers.jobs(args, str(runs)):
        value, skipped, pearson = finished[(algo.removeprefix("sac_rlhf_"), seed)]
        (runs / f"{algo}_{seed}").mkdir(parents=True)
        summary = {"final_eval_return": value, "labels_used": 500 - skipped // 2, "pairs_skipped": skipped}
        (runs / f"{algo}_{seed}" / "summary.json").write_text(json.dumps(summary))
        (runs / f"{algo}_{seed}.json").write_text(json.dumps({"command": cmd, "code": "commit abc"}))
        log = f"step=4500 session=1 labels=50 pearson=0.100\nstep=9000 session=2 labels=100 pearson={pearson:.3f}\n"
        (runs / f"{algo}_{seed}.log").write_text(log)
    teachers.main(args)
    table = (tmp_path / "results" / "teachers_pebble_halfcheetah_t.md").read_text()
    assert "| oracle | (perfect) | 2,000.0 | 4,000.0 | 3,000.0 | 1.00 | 500.0 | 0.0 | 0.70 |" in table
    assert "| skip | --teacher-eps-skip 0.1 | 1,500.0 | 3,000.0 | 2,250.0 | 0.75 | 475.0 | 50.0 | 0.45 |" in table
    assert "--tag t" in table and (tmp_path / "results" / "teachers_pebble_halfcheetah_t.png").is_file()


def test_rime_flags_go_to_the_rime_rows_only():
    """--rime-flags (RIME's warm start) is added to the "+ RIME" rows, never to the plain rows they compare with."""
    args = teachers.Args(teachers=("oracle", "mistake"), rime=("mistake",), rime_flags="--reward-warm-start")
    flags = {algo: " ".join(cmd) for algo, seed, cmd in teachers.jobs(args, "runs") if seed == 1}
    assert set(flags) == {"sac_rlhf_oracle", "sac_rlhf_mistake", "sac_rlhf_mistake_rime"}
    assert "--rime --reward-warm-start" in flags["sac_rlhf_mistake_rime"]
    assert "--teacher-eps-mistake 0.1" in flags["sac_rlhf_mistake_rime"]
    assert not any("--rime" in flags[name] or "warm" in flags[name] for name in ("sac_rlhf_oracle", "sac_rlhf_mistake"))


def test_the_learning_table_is_made_from_finished_runs_with_interquartile_means(tmp_path, monkeypatch):
    """learning.py over runs already finished: per-seed returns and ratios, the interquartile mean of the final
    evaluations and of each run's mean over its last 3 (here the final evaluations swing, the late means do not)."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    runs = tmp_path / "runs"
    args = learning.Args(seeds=(1, 2, 3, 4), total_labels=300, runs_dir=str(runs), reuse_finished=True, tag="t")
    # seed: (PEBBLE's last four evaluations, the oracle's)
    curves = {1: ([0, 90, 120, 30], [0, 100, 100, 100]), 2: ([0, 90, 120, 30], [0, 100, 100, 100])}
    curves |= {3: ([0, 300, 300, 300], [0, 200, 200, 200]), 4: ([0, 10, 10, 10], [0, 50, 50, 50])}
    for algo, seed, cmd in learning.commands(args, str(runs)):
        values = curves[seed][algo == "sac"]
        summary = {"final_eval_return": float(values[-1]), "labels_used": 300, "wall_time_s": 60.0, "sps": 50.0}
        summary |= {"exploration_sps": 40.0, "learning_sps": 45.0, "eval_history": list(enumerate(values))}
        (runs / f"{algo}_{seed}").mkdir(parents=True)
        (runs / f"{algo}_{seed}" / "summary.json").write_text(json.dumps(summary))
        (runs / f"{algo}_{seed}.json").write_text(json.dumps({"command": cmd, "code": "commit abc"}))
    learning.main(args)
    table = (tmp_path / "results" / "learning_pebble_halfcheetah_300_labels_t.md").read_text()
    assert "| 1 | 30.0 | 100.0 | 0.30 | 300 |" in table and "| 3 | 300.0 | 200.0 | 1.50 | 300 |" in table
    # IQM of 4 seeds: the mean of the middle two (final: 30 and 30; late means: 80 and 80, over 100 and 100)
    assert "| IQM [95% CI] | 30 [" in table and "| 0.30 [" in table
    assert "| IQM of each run's last 3 evaluations' mean [95% CI] | 80 [" in table and "| 0.80 [" in table
    assert "commit abc" in table and (tmp_path / "results" / "learning_pebble_halfcheetah_300_labels_t.png").is_file()
