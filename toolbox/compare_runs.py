"""Compare runs: one TensorBoard scalar of many run folders, seeds aggregated per (environment, experiment) as the
interquartile mean with a bootstrap 95% confidence interval; a markdown table and learning curves.

    python toolbox/compare_runs.py runs/*
    python toolbox/compare_runs.py runs/Hopper-v5__* --tag charts/episodic_return --out media/hopper
    python toolbox/compare_runs.py runs/Hopper-v5__sac__1__* --group-by run --tag charts/SPS

Grouping. A run belongs to (env, experiment): its saved flags (`env_id`, `exp_name`, `seed` in the hyperparameter
table every script writes to TensorBoard) first, then `summary.json` (`env_id`, `seed`, `algorithm`), then its folder
name: `<env>__<exp>__<seed>__<time>` (`framework/runtime.py`), `<script>__task<N>__<job>` (`slurm/array.sbatch`),
`<job>__cfg<i>__seed<s>__<time>` (`slurm/submit.py`). So SLURM array runs, sweep trials and `--run-name` runs group
with the others of their env and experiment; environments are never merged. A group whose runs were started with
different flags (other than seed, names, paths, device) says which; `--split-by` separates them.

Nothing is dropped silently. A path that is not a run folder, a run without the scalar, and an unreadable run are
skipped and listed in the "dropped" report at the end (exit status 0 while anything is left to compare). The seeds of
a group are compared on the steps all of them reached: a run that stopped at least one logging interval (the largest
gap between two of its logs) before the longest one is named with its last step and its summary.json's stop reason
(or, with `--early-stopped drop`, left out of its group). Runs that logged at different steps (per-episode tags) are
linearly interpolated onto shared steps.

Statistics (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice", as in the `rliable` library).
At every step the seeds of a group are summarised by their interquartile mean, `scipy.stats.trim_mean(x, 0.25)`: the
mean of the values left after cutting floor(n/4) from each end (n = 5: the middle 3; n < 4: the plain mean). The
confidence interval (95%, `--confidence`) is a percentile bootstrap that resamples the group's seeds with replacement
(whole curves, so the band and the final interval agree); with one environment per group, that is rliable's
stratified bootstrap. A group of one seed has no interval. Percentile intervals from a handful of seeds are too
narrow; read them with the seed count. Implemented here with NumPy and SciPy (already dependencies) rather than with
`rliable`, which would add arch, statsmodels, pandas and seaborn for these few lines.

Writes `<out>/<tag>.md` (the table, the method and the dropped report) and `<out>/<tag>.png` (one panel per
environment: the IQM of each experiment with its shaded interval); `--out` defaults to `runs/comparisons`, and
`--out x.png` writes `x.png` and `x.md`.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from scipy.stats import trim_mean  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from framework.runtime import UsageError, run_cli  # noqa: E402


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """run folders (each holding TensorBoard event files); others are skipped and reported"""
    tag: str = "eval/episodic_return"
    """the scalar to compare"""
    group_by: Literal["exp", "run"] = "exp"
    """'exp': aggregate the seeds of each (env, experiment); 'run': one curve per folder"""
    out: str = "runs/comparisons"
    """folder for <tag>.md and <tag>.png; a path ending in .png writes that plot and the table next to it (.md)"""
    title: str | None = None
    """plot title (default: the tag)"""
    split_by: tuple[str, ...] = ()
    """saved flags that also separate groups (e.g. total_labels surf), for runs of one experiment name"""
    early_stopped: Literal["truncate", "drop"] = "truncate"
    """a run that stopped before the others of its group: 'truncate' compares the group on the steps all its runs
    reached; 'drop' leaves that run out of the group (both are reported)"""
    confidence: float = 0.95
    """size of the bootstrap confidence interval"""
    reps: int = 10_000
    """bootstrap resamples"""
    bootstrap_seed: int = 0
    """seed of the bootstrap resampling (the intervals are reproducible)"""
    points: int = 200
    """at most this many steps per curve when runs logged at different steps (interpolated)"""


IGNORED_FLAGS = {
    "seed",
    "exp_name",
    "env_id",
    "run_name",
    "runs_dir",
    "resume",
    "cuda",
    "torch_threads",
    "capture_video",
    "progress_bar",
    "track",
    "wandb_project_name",
    "wandb_entity",
}
"""Flags that may differ between the seeds of one experiment without making it another experiment."""


@dataclass(eq=False)
class Run:
    """One run folder: what it is (env, experiment, seed, saved flags) and its scalar."""

    path: str
    name: str
    env: str | None = None
    exp: str | None = None
    seed: int | None = None
    flags: dict[str, str] = field(default_factory=dict)
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: list[str] = field(default_factory=list)
    stop: str | None = None
    """why it may have stopped early: summary.json's stop_reason when not the budget, or its absence"""

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} (seed {self.seed})"


@dataclass
class Group:
    """The runs of one (env, experiment) and their comparison on shared steps."""

    env: str
    exp: str
    runs: list[Run]
    dropped: list[str] = field(default_factory=list)
    """short notes for the table: what of this group was left out or cut"""
    report: list[str] = field(default_factory=list)
    """full sentences for the dropped report"""
    steps: np.ndarray | None = None
    values: np.ndarray | None = None
    """(runs, steps) on the shared steps"""
    interpolated: bool = False
    iqm: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def parse_run_name(name: str) -> dict:
    """env, exp and seed as far as a run folder's name tells them (see the module docstring for the patterns)."""
    parts = name.split("__")
    if len(parts) >= 4 and parts[-2].isdigit() and parts[-1].isdigit():
        return {"env": parts[0], "exp": "__".join(parts[1:-2]), "seed": int(parts[-2])}
    if len(parts) == 3 and re.fullmatch(r"task\d+", parts[1]) and parts[2].isdigit():
        return {"exp": parts[0]}
    if len(parts) == 4 and re.fullmatch(r"cfg\d+", parts[1]) and re.fullmatch(r"seed\d+", parts[2]):
        return {"seed": int(parts[2][4:])}
    return {}


def parse_flag_table(text: str) -> dict[str, str]:
    """The `|param|value|` markdown table `framework.tracking.hyperparameter_table` writes, as a dict."""
    flags = {}
    for line in text.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 2 and cells[0] not in ("param", "-"):
            flags[cells[0]] = cells[1]
    return flags


def read_run(path: str, tag: str) -> tuple[Run, str | None]:
    """The run at `path` with as much as is known of it, and why it cannot be compared (None if it can)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Run(path=path, name=os.path.basename(os.path.normpath(path)))
    if not os.path.isdir(path):
        return run, "not a folder"
    named = parse_run_name(run.name)
    summary: dict = {}
    if os.path.isfile(os.path.join(path, "summary.json")):
        try:
            with open(os.path.join(path, "summary.json")) as f:
                summary = json.load(f)
        except (OSError, ValueError) as err:
            run.notes.append(f"summary.json unreadable ({err})")
        if not isinstance(summary, dict):
            run.notes.append("summary.json is not a JSON object; ignored")
            summary = {}
    if not glob.glob(os.path.join(path, "*tfevents*")):
        return run, "no TensorBoard event files in it"
    try:
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        if "hyperparameters/text_summary" in tags.get("tensors", []):
            proto = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto
            run.flags = parse_flag_table(proto.string_val[0].decode())
        events = acc.Scalars(tag) if tag in tags.get("scalars", []) else None
    except Exception as err:  # a corrupt or truncated event file: this run is skipped, the others are compared
        return run, f"unreadable TensorBoard events ({type(err).__name__}: {err})"
    if not os.path.isfile(os.path.join(path, "summary.json")):
        run.stop = "no summary.json: still running, killed or crashed"
    elif summary.get("stop_reason", "budget") != "budget":
        run.stop = f"stop_reason: {summary['stop_reason']}"
    run.env = run.flags.get("env_id") or summary.get("env_id") or named.get("env")
    run.exp = run.flags.get("exp_name") or named.get("exp") or summary.get("algorithm")
    for seed in (run.flags.get("seed"), summary.get("seed"), named.get("seed")):
        if seed is not None and str(seed).lstrip("-").isdigit():
            run.seed = int(seed)
            break
    if run.env is not None:
        run.env = str(run.env).replace("/", "-")
    if events is None and not tags.get("scalars"):
        return run, "no scalar at all in its event files (empty, truncated or unreadable)"
    if events is None:
        return run, f"no scalar {tag!r} (it has: {', '.join(sorted(tags['scalars']))})"
    by_step = {int(e.step): float(e.value) for e in events}  # a step logged twice (a resumed run): the last value
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([by_step[s] for s in steps.tolist()])
    finite = np.isfinite(values)
    if not finite.all():
        run.notes.append(f"{int((~finite).sum())} non-finite values of {tag} ignored")
    run.steps, run.values = steps[finite], values[finite]
    if len(run.steps) == 0:
        return run, f"no finite value of {tag!r}"
    return run, None


def group_key(run: Run, args: Args) -> tuple[str, str]:
    if args.group_by == "run":
        return run.env or "?", run.name
    exp = run.exp or "?"
    if args.split_by:
        exp += " [" + ", ".join(f"{f}={run.flags.get(f, '?')}" for f in args.split_by) + "]"
    return run.env or "?", exp


def logging_interval(runs: list[Run]) -> float:
    """How far apart a run's logs may be: the median over runs of each run's largest step between two logs (an
    evaluation interval, or the longest episode for per-episode tags); 0 when every run logged once."""
    gaps = [int(np.diff(r.steps).max()) for r in runs if len(r.steps) > 1]
    return float(np.median(gaps)) if gaps else 0.0


def align(group: Group, args: Args) -> None:
    """Put the group's runs on the steps all of them reached; say which run stopped early, at which step."""
    longest = max(int(r.steps[-1]) for r in group.runs)
    tolerance = logging_interval(group.runs)
    early = [r for r in group.runs if int(r.steps[-1]) < longest and int(r.steps[-1]) <= longest - tolerance]
    if args.early_stopped == "drop":
        group.runs = [r for r in group.runs if r not in early]
    end = min(int(r.steps[-1]) for r in group.runs)
    for r in early:
        why = f" ({r.stop})" if r.stop else ""
        done = "left out (--early-stopped drop)" if args.early_stopped == "drop" else f"compared on steps <= {end}"
        group.report.append(
            f"{group.env} {group.exp}: {r.label} stopped at step {int(r.steps[-1])}{why}, the longest run reached "
            f"{longest}: {done}"
        )
    if early:
        who = ", ".join(f"{r.label} at {int(r.steps[-1])}" for r in early)
        cut = "left out" if args.early_stopped == "drop" else f"steps > {end} cut"
        group.dropped.append(f"{cut}: stopped early {who}")
    start = max(int(r.steps[0]) for r in group.runs)
    if start > end:
        return
    inside = [r.steps[(r.steps >= start) & (r.steps <= end)] for r in group.runs]
    if all(np.array_equal(inside[0], s) for s in inside[1:]):
        grid = inside[0]
    else:
        group.interpolated = True
        grid = np.unique(np.concatenate(inside + [np.array([start, end])]))
        if len(grid) > args.points:
            grid = np.unique(np.linspace(start, end, args.points).round().astype(np.int64))
    group.steps = grid
    group.values = np.stack([np.interp(grid, r.steps, r.values) for r in group.runs])


def iqm(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of what is left after cutting floor(n/4) values from each end (rliable's IQM)."""
    return trim_mean(x, 0.25, axis=axis)


def bootstrap_interval(
    values: np.ndarray, confidence: float, reps: int, seed: int, chunk_elements: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the IQM of `values` (runs, steps) at every step: the runs (whole curves) are
    resampled with replacement `reps` times, the same resamples for every step."""
    n, steps = values.shape
    if n < 2:
        return np.full(steps, np.nan), np.full(steps, np.nan)
    index = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    tail = (1 - confidence) / 2 * 100
    low, high = np.empty(steps), np.empty(steps)
    width = max(1, chunk_elements // (reps * n))
    for first in range(0, steps, width):
        block = values[:, first : first + width][index]  # (reps, runs, chunk)
        stats = iqm(block, axis=1)
        low[first : first + width], high[first : first + width] = np.percentile(stats, [tail, 100 - tail], axis=0)
    return low, high


def flag_differences(runs: list[Run]) -> list[str]:
    """Saved flags (but `IGNORED_FLAGS`) whose values differ between the runs that saved their flags."""
    saved = [r.flags for r in runs if r.flags]
    if len(saved) < 2:
        return []
    names = set().union(*saved) - IGNORED_FLAGS
    return sorted(n for n in names if len({f.get(n) for f in saved}) > 1)


def number(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.4g}"


def table(groups: list[Group], args: Args) -> list[str]:
    pct = f"{args.confidence * 100:g}%"
    lines = [
        f"| env | experiment | seeds | step | final IQM | {pct} CI low | {pct} CI high | mean | dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        if g.steps is None:
            cells = [g.env, g.exp, str(len(g.runs)), "n/a", "n/a", "n/a", "n/a", "n/a"]
        else:
            final = g.values[:, -1]
            cells = [g.env, g.exp, str(len(g.runs)), str(int(g.steps[-1])), number(g.iqm[-1])]
            cells += [number(g.low[-1]), number(g.high[-1]), number(float(final.mean()))]
        cells.append("; ".join(g.dropped) or "-")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def method_lines(groups: list[Group], args: Args) -> list[str]:
    lines = [
        f"Final: `{args.tag}` at the last step all seeds of the group reached. IQM: `scipy.stats.trim_mean(x, 0.25)` "
        f"over seeds (fewer than 4 seeds: the mean). CI: percentile bootstrap over seeds, {args.reps} resamples "
        f"(none for one seed; too narrow with few seeds)."
    ]
    if any(g.interpolated for g in groups):
        lines.append("Runs that logged at different steps are linearly interpolated onto shared steps.")
    return lines


def plot(groups: list[Group], args: Args, path: str) -> None:
    envs = sorted({g.env for g in groups})
    experiments = sorted({g.exp for g in groups})
    colors = {e: plt.cm.tab10(i % 10) for i, e in enumerate(experiments)}
    cols = min(3, len(envs))
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        for g in (g for g in groups if g.env == env and g.steps is not None):
            label = f"{g.exp} ({len(g.runs)} seed{'s' if len(g.runs) != 1 else ''})"
            ax.plot(g.steps, g.iqm, color=colors[g.exp], label=label)
            if np.isfinite(g.low).all():
                ax.fill_between(g.steps, g.low, g.high, color=colors[g.exp], alpha=0.2, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"{args.tag} (IQM)" if args.group_by == "exp" else args.tag)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    band = f", shaded: {args.confidence * 100:g}% bootstrap CI" if args.group_by == "exp" else ""
    fig.suptitle((args.title or args.tag) + band, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def output_paths(args: Args) -> tuple[str, str]:
    """(markdown, PNG) paths from --out."""
    if args.out.lower().endswith(".png"):
        return os.path.splitext(args.out)[0] + ".md", args.out
    stem = os.path.join(args.out, args.tag.strip("/").replace("/", "_") or "scalar")
    return stem + ".md", stem + ".png"


def main(args: Args) -> None:
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence must be between 0 and 1 (exclusive), got {args.confidence}")
    if args.reps < 1:
        raise UsageError(f"--reps must be at least 1, got {args.reps}")
    if args.points < 2:
        raise UsageError(f"--points must be at least 2, got {args.points}")
    if not args.runs:
        raise UsageError("no run folders given (e.g. `compare_runs.py runs/*`)")

    skipped: list[str] = []
    by_key: dict[tuple[str, str], list[Run]] = defaultdict(list)
    missing_in: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for path in args.runs:
        run, why = read_run(path, args.tag)
        if os.path.abspath(path) == os.path.abspath(os.path.dirname(output_paths(args)[0])):
            why = "the output folder of this tool (--out)"
        if why is None and args.group_by == "exp" and (run.env is None or run.exp is None):
            unknown = " and ".join(k for k, v in (("environment", run.env), ("experiment", run.exp)) if v is None)
            why = f"its {unknown} is unknown (no saved flags, no summary.json, a name not <env>__<exp>__<seed>__<time>)"
        if why is not None:
            skipped.append(f"{path}: {why}")
            if run.env is not None and run.exp is not None:
                missing_in[group_key(run, args)].append(run)
            continue
        skipped.extend(f"{path}: {note}" for note in run.notes)
        by_key[group_key(run, args)].append(run)

    groups = [Group(env, exp, runs) for (env, exp), runs in sorted(by_key.items())]
    for g in groups:
        lost = missing_in.get((g.env, g.exp), [])
        if lost:
            g.dropped.append(f"{len(lost)} run{'s' if len(lost) > 1 else ''} without the scalar or unreadable")
        seeds = [r.seed for r in g.runs if r.seed is not None]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            g.dropped.append(f"seed {', '.join(map(str, repeated))} more than once")
        differ = flag_differences(g.runs)
        if differ:
            shown = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
            g.dropped.append(f"flags differ: {shown}")
            g.report.append(f"{g.env} {g.exp}: its runs were started with different {shown} (see --split-by)")
        align(g, args)
        if g.steps is None:
            g.report.append(f"{g.env} {g.exp}: its runs share no step range; not compared")
            continue
        g.iqm = iqm(g.values, axis=0)
        g.low, g.high = bootstrap_interval(g.values, args.confidence, args.reps, args.bootstrap_seed)

    report = skipped + [line for g in groups for line in g.report]
    dropped = ["dropped:", *(f"- {line}" for line in report)] if report else ["dropped: nothing"]
    compared = [g for g in groups if g.steps is not None]
    if not compared:
        print("\n".join(dropped))
        raise UsageError(
            f"nothing to compare: none of the {len(args.runs)} paths is a run folder with the scalar {args.tag!r} "
            "(see the dropped report above)"
        )

    rows = table(groups, args)
    md_path, png_path = output_paths(args)
    for path in (md_path, png_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    heading = f"# {args.title or args.tag}"
    with open(md_path, "w") as f:
        f.write("\n".join([heading, "", *rows, "", *method_lines(groups, args), "", *dropped]) + "\n")
    plot(compared, args, png_path)
    print("\n".join([*rows, "", *method_lines(groups, args), "", *dropped]))
    print(f"saved {md_path} and {png_path}")


if __name__ == "__main__":
    run_cli(Args, main)
