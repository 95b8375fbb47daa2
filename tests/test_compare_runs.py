"""toolbox/compare_runs.py on synthetic run folders whose answer is known: grouping by (env, experiment) whatever the
folder name, IQM and bootstrap intervals, and every dropped run or step reported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import trim_mean

from conftest import ROOT
from framework.tracking import Tracker

SCRIPT = ROOT / "toolbox" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = sys.modules["compare_runs"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

STEPS = (1000, 2000, 3000)


def fake_run(
    runs_dir,
    name,
    final,
    env="Hopper-v5",
    exp="sac",
    seed=1,
    steps=STEPS,
    flags=True,
    summary=True,
    tag="eval/episodic_return",
    **extra,
):
    """A run folder as the scripts leave it: TensorBoard scalars rising linearly to `final` at the last step, the
    hyperparameter table (`flags`) and summary.json (`summary`)."""
    config = {"env_id": env, "exp_name": exp, "seed": seed, "run_name": name, **extra} if flags else {}
    tracker = Tracker(name, config, runs_dir=str(runs_dir))
    for step in steps:
        tracker.scalar(tag, final * step / steps[-1], step)
    tracker.close()
    if summary:
        info = {"algorithm": exp, "env_id": env, "seed": seed, "total_timesteps": steps[-1], "stop_reason": "budget"}
        (runs_dir / name / "summary.json").write_text(json.dumps(info))
    return str(runs_dir / name)


def compare(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, cwd=ROOT)


def rows(markdown: str) -> dict[tuple[str, str], dict[str, str]]:
    """The table's rows by (env, experiment), each as {column: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        row = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        table[row["env"], row["experiment"]] = row
    return table


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Hopper sac: 3 seeds with default names and 2 SLURM array runs (finals 100, 200, 300, 400, 1000; IQM 300);
    Hopper sac_agree: 5 seeds that agree (IQM 300); HalfCheetah sac: 3 seeds (10, 20, 60; IQM = mean = 30); a run
    without the metric, one with a corrupt event file, a folder that is no run."""
    d = tmp_path_factory.mktemp("runs")
    paths = [fake_run(d, f"Hopper-v5__sac__{s}__17000000{s}", f, seed=s) for s, f in ((1, 100), (2, 200), (3, 300))]
    paths.append(fake_run(d, "sac__task4__4242", 400, seed=4))  # slurm/array.sbatch's names; flags tell the rest
    paths.append(fake_run(d, "sac__task5__4242", 1000, seed=5, flags=False))  # summary.json alone tells the env
    for s, f in enumerate((290, 295, 300, 305, 310), start=1):
        paths.append(fake_run(d, f"Hopper-v5__sac_agree__{s}__170000000", f, exp="sac_agree", seed=s))
    for s, f in ((1, 10), (2, 20), (3, 60)):
        paths.append(fake_run(d, f"HalfCheetah-v5__sac__{s}__170000000", f, env="HalfCheetah-v5", seed=s))
    paths.append(fake_run(d, "Hopper-v5__sac__6__170000000", 5000, seed=6, tag="charts/SPS"))
    corrupt = d / "Hopper-v5__sac__7__170000000"
    corrupt.mkdir()
    (corrupt / "events.out.tfevents.1.host.1.0").write_bytes(b"\x00\x01 not an event file" * 20)
    (d / "sweeps").mkdir()
    return d, [*paths, str(corrupt), str(d / "sweeps"), str(d / "nope")]


def test_groups_iqm_intervals_and_dropped_report(runs, tmp_path):
    d, paths = runs
    result = compare(*paths, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "out" / "eval_episodic_return.md").read_text()
    assert (tmp_path / "out" / "eval_episodic_return.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rows(markdown)
    assert rows(result.stdout) == table
    # environments never merge; the SLURM array runs join Hopper sac through their flags or summary.json
    assert set(table) == {("Hopper-v5", "sac"), ("Hopper-v5", "sac_agree"), ("HalfCheetah-v5", "sac")}
    hopper, agree, cheetah = table["Hopper-v5", "sac"], table["Hopper-v5", "sac_agree"], table["HalfCheetah-v5", "sac"]
    assert hopper["seeds"] == "5" and hopper["step"] == "3000"
    assert hopper["final IQM"] == "300.0" and hopper["mean"] == "400.0"
    assert trim_mean([100, 200, 300, 400, 1000], 0.25) == 300.0
    assert cheetah["seeds"] == "3" and cheetah["final IQM"] == "30.0" and cheetah["mean"] == "30.0"
    for row in (hopper, agree, cheetah):
        low, high = float(row["95% CI low"]), float(row["95% CI high"])
        assert low <= float(row["final IQM"]) <= high and low < high
    assert 100 <= float(hopper["95% CI low"]) and float(hopper["95% CI high"]) <= 1000
    assert agree["final IQM"] == "300.0"
    agree_width = float(agree["95% CI high"]) - float(agree["95% CI low"])
    assert agree_width < 20 < float(hopper["95% CI high"]) - float(hopper["95% CI low"])
    # what was left out: said in the group's row and in the dropped report, never an abort
    assert hopper["dropped"] == "2 runs without the scalar or unreadable"
    assert agree["dropped"] == "-" and cheetah["dropped"] == "-"
    report = markdown[markdown.index("dropped:") :]
    assert "Hopper-v5__sac__6__170000000: no scalar 'eval/episodic_return' (it has: charts/SPS)" in report
    assert "Hopper-v5__sac__7__170000000: no scalar at all in its event files" in report
    assert f"{d / 'sweeps'}: no TensorBoard event files in it" in report
    assert f"{d / 'nope'}: not a folder" in report
    assert report in result.stdout


def test_bootstrap_interval_is_reproducible_and_collapses_when_seeds_agree():
    values = np.array([[100.0], [200.0], [300.0], [400.0], [1000.0]])
    low, high = compare_runs.bootstrap_interval(values, 0.95, 2000, seed=0)
    again = compare_runs.bootstrap_interval(values, 0.95, 2000, seed=0)
    assert (low, high) == again and 100 <= low[0] < 300 < high[0] <= 1000
    same = compare_runs.bootstrap_interval(np.full((4, 3), 7.0), 0.95, 500, seed=0)
    assert np.all(same[0] == 7.0) and np.all(same[1] == 7.0)
    one = compare_runs.bootstrap_interval(np.ones((1, 3)), 0.95, 500, seed=0)
    assert np.isnan(one[0]).all() and np.isnan(one[1]).all()
    assert compare_runs.iqm(np.array([1.0, 2.0, 3.0, 4.0]))[()] == 2.5


def test_early_stopped_seed_is_reported_with_its_step(tmp_path):
    steps = (1000, 2000, 3000, 4000, 5000)
    paths = [fake_run(tmp_path, f"Hopper-v5__sac__{s}__1", 100 * s, seed=s, steps=steps) for s in (1, 2)]
    paths.append(fake_run(tmp_path, "Hopper-v5__sac__3__1", 300, seed=3, steps=steps[:3], summary=False))
    result = compare(*paths, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    row = rows(result.stdout)["Hopper-v5", "sac"]
    assert row["seeds"] == "3" and row["step"] == "3000"
    assert row["final IQM"] == "160.0"  # 60, 120 and 300 at step 3000: fewer than 4 seeds, the mean
    assert row["dropped"] == "steps > 3000 cut: stopped early Hopper-v5__sac__3__1 (seed 3) at 3000"
    assert (
        "Hopper-v5 sac: Hopper-v5__sac__3__1 (seed 3) stopped at step 3000 (no summary.json: still running, killed or "
        "crashed), the longest run reached 5000: compared on steps <= 3000"
    ) in result.stdout
    dropped = compare(*paths, "--early-stopped", "drop", "--out", str(tmp_path / "out"))
    row = rows(dropped.stdout)["Hopper-v5", "sac"]
    assert row["seeds"] == "2" and row["step"] == "5000" and row["final IQM"] == "150.0"
    assert "stopped at step 3000" in dropped.stdout and "left out (--early-stopped drop)" in dropped.stdout


def test_runs_logged_at_different_steps_are_interpolated_and_differing_flags_named(tmp_path):
    a = fake_run(tmp_path, "Hopper-v5__sac__1__1", 1000, seed=1, steps=(0, 1000, 2000), total_labels=500)
    b = fake_run(tmp_path, "Hopper-v5__sac__2__1", 1000, seed=2, steps=(500, 1500, 2100), total_labels=1000)
    result = compare(a, b, "--out", str(tmp_path / "out.png"))
    assert result.returncode == 0, result.stderr
    row = rows(result.stdout)["Hopper-v5", "sac"]
    assert row["step"] == "2000" and row["dropped"] == "flags differ: total_labels"
    assert "linearly interpolated" in result.stdout
    assert (tmp_path / "out.png").exists() and (tmp_path / "out.md").exists()
    split = compare(a, b, "--split-by", "total_labels", "--out", str(tmp_path / "split"))
    assert set(rows(split.stdout)) == {
        ("Hopper-v5", "sac [total_labels=500]"),
        ("Hopper-v5", "sac [total_labels=1000]"),
    }


def test_nothing_to_compare_is_one_line_error(tmp_path):
    result = compare(str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.startswith("error: nothing to compare") and f"{tmp_path / 'nope'}: not a folder" in result.stdout
    )
    bad = compare(str(tmp_path), "--confidence", "1.5")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --confidence")


def test_run_names_tell_env_exp_and_seed():
    assert compare_runs.parse_run_name("Hopper-v5__sac_rlhf__3__1790000000") == {
        "env": "Hopper-v5",
        "exp": "sac_rlhf",
        "seed": 3,
    }
    assert compare_runs.parse_run_name("sac_rlhf__task4__123456") == {"exp": "sac_rlhf"}
    assert compare_runs.parse_run_name("prefrl__cfg0__seed2__1790000000") == {"seed": 2}
    assert compare_runs.parse_run_name("halfcheetah_oracle") == {}
