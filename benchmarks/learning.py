"""Learning quality: a preference-based agent (perfect simulated teacher) against its oracle on the true reward.

Runs `sac_rlhf.py` against the oracle `sac.py` (`--pair pebble`), or `pref_ppo.py` against `ppo.py`
(`--pair prefppo`), on the same env, budget, network sizes and seeds, and prints a table: final evaluation return of
each, the ratio to the oracle, labels used, steps/s of each phase, wall time, and the interquartile mean over seeds of
both returns and of their ratio with 95 % bootstrap intervals (single seeds differ a lot at these budgets: use 5).
Saves it to benchmarks/results/learning_<pair>_<env>.md with a learning-curve plot (mean +- std over seeds) beside it.

    python benchmarks/learning.py                             # PEBBLE, HalfCheetah-v5, 50k steps, 3 seeds, 500 labels
    python benchmarks/learning.py --pair prefppo              # PrefPPO against ppo.py, the same settings
    python benchmarks/learning.py --env-id Hopper-v5 --seeds 1 --total-timesteps 20000 --total-labels 200

By default two runs train at a time with one torch thread each (a 2-core machine), so each pair of runs shares the
machine under the same conditions; `--parallel 1 --torch-threads 0` runs them one by one with all cores.
Steps/s measured here are under that sharing: benchmarks/speed.py compares speeds on an otherwise idle machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tyro

from common import RESULTS, ROOT, code_version, machine_description, markdown_table, save_markdown

sys.path.insert(0, str(ROOT))
from toolbox.compare_runs import iqm  # noqa: E402

PAIRS = {  # preference-based script, its oracle, and how the table names them
    "pebble": ("sac_rlhf", "sac", "PEBBLE", "oracle SAC"),
    "prefppo": ("pref_ppo", "ppo", "PrefPPO", "oracle PPO"),
}


@dataclass
class Args:
    pair: Literal["pebble", "prefppo"] = "pebble"
    """which preference-based script to compare with its oracle"""
    env_id: str = "HalfCheetah-v5"
    """environment of every run"""
    total_timesteps: int = 50_000
    """env steps of every run (pre-exploration included for the preference-based agent)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds; each algorithm runs once per seed"""
    total_labels: int = 500
    """label budget of the preference-based agent"""
    learning_starts: int = 1000
    """random steps before learning, PEBBLE (PrefPPO has none)"""
    unsupervised_steps: int = 4000
    """steps of pre-exploration of the preference-based agent"""
    sessions: int = 10
    """feedback sessions, evenly spread from the end of pre-exploration"""
    query_sampling: str = "disagreement"
    """query selection of the preference-based agent"""
    oracle_learning_starts: int = 5000
    """random steps before the oracle SAC learns (CleanRL's default)"""
    hidden_size: int | None = None
    """actor/critic width, both agents (default: the scripts' own, 256 for SAC, 64 for PPO)"""
    depth: int = 2
    """actor/critic depth, both agents"""
    eval_frequency: int = 5000
    """evaluation interval, both agents"""
    eval_episodes: int = 5
    """episodes per evaluation, both agents"""
    parallel: int = 2
    """runs training at the same time"""
    torch_threads: int = 1
    """torch threads per run (0: torch's default)"""
    runs_dir: str | None = None
    """keep the runs here (default: a temporary folder)"""
    reuse_finished: bool = False
    """keep the results of runs already finished in --runs-dir (their summary.json) instead of running them again,
    and continue the runs that were stopped (`--resume` from their checkpoint.pt; stop them with SIGTERM, they save
    first), so an interrupted benchmark continues where it stopped; refused if a run's recorded flags differ from this
    invocation's, and the results file names the commit each reused or resumed run ran at"""
    extra_rlhf_flags: str = ""
    """more flags for sac_rlhf.py, space-separated"""
    late_evaluations: int = 3
    """the table's last row: each run's mean over its last this many evaluations (steadier than the final one where
    returns swing between evaluations, as Hopper's and Walker2d's do early on), then their interquartile mean; 0: no
    such row"""
    tag: str = ""
    """suffix of the results file's name (learning_<pair>_<env>[_<labels>_labels]_<tag>), so that a comparison run with
    --extra-rlhf-flags keeps its own table beside the default's"""


def commands(args: Args, runs_dir: str) -> list[tuple[str, int, list[str]]]:
    rlhf, oracle = PAIRS[args.pair][:2]
    random_steps = args.learning_starts if args.pair == "pebble" else 0
    first = random_steps + args.unsupervised_steps
    interval = max((args.total_timesteps - first) // args.sessions, 1)
    per_session = -(-args.total_labels // args.sessions)
    common = [
        "--env-id",
        args.env_id,
        "--total-timesteps",
        str(args.total_timesteps),
        "--depth",
        str(args.depth),
        "--eval-frequency",
        str(args.eval_frequency),
        "--eval-episodes",
        str(args.eval_episodes),
        "--torch-threads",
        str(args.torch_threads),
        "--no-cuda",
        "--runs-dir",
        runs_dir,
    ]
    if args.hidden_size is not None:
        common += ["--hidden-size", str(args.hidden_size)]
    rlhf_flags = [
        "--unsupervised-steps",
        str(args.unsupervised_steps),
        "--total-labels",
        str(args.total_labels),
        "--labels-per-session",
        str(per_session),
        "--feedback-frequency",
        str(interval),
        "--query-sampling",
        args.query_sampling,
        *args.extra_rlhf_flags.split(),
    ]
    if args.pair == "pebble":
        rlhf_flags += ["--learning-starts", str(args.learning_starts)]
    oracle_flags = ["--learning-starts", str(args.oracle_learning_starts)] if oracle == "sac" else []
    out = []
    for seed in args.seeds:
        out.append(
            (
                rlhf,
                seed,
                [
                    sys.executable,
                    str(ROOT / "framework" / f"{rlhf}.py"),
                    *common,
                    "--seed",
                    str(seed),
                    "--run-name",
                    f"{rlhf}_{seed}",
                    *rlhf_flags,
                ],
            )
        )
        out.append(
            (
                oracle,
                seed,
                [
                    sys.executable,
                    str(ROOT / "framework" / f"{oracle}.py"),
                    *common,
                    "--seed",
                    str(seed),
                    "--run-name",
                    f"{oracle}_{seed}",
                    *oracle_flags,
                ],
            )
        )
    return out


def recorded_flags(cmd: list[str]) -> list[str]:
    """What must match for a finished run to be reused: the script and its flags. The interpreter, the checkout and
    the runs folder may differ (a folder of finished runs can be moved or copied)."""
    flags = [Path(cmd[1]).name, *cmd[2:]]
    if "--runs-dir" in flags:
        at = flags.index("--runs-dir")
        flags[at + 1 : at + 2] = ["<runs dir>"]
    return flags


def run_all(
    jobs: list[tuple[str, int, list[str]]], parallel: int, runs_dir: str, reuse_finished: bool = False
) -> dict[tuple[str, int], dict]:
    """Run the jobs, `parallel` at a time, each logging to <runs_dir>/<algo>_<seed>.log; each job's command and the
    commit it ran at go to <algo>_<seed>.json beside it. With `reuse_finished`, a run that already wrote its
    summary.json is read instead, and one stopped before its end (a checkpoint.pt, no summary.json) continues with
    `--resume`: either is refused (one line) if its recorded command differs from this one; a reused or resumed run
    carries the commit it started at ("reused_from", "resumed_from")."""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    pending, running, results = [], [], {}
    for algo, seed, cmd in jobs:
        run = Path(runs_dir) / f"{algo}_{seed}"
        started = (run / "summary.json").is_file() or (run / "checkpoint.pt").is_file()
        if not (reuse_finished and started):
            pending.append((algo, seed, cmd, None))
            continue
        record = Path(runs_dir) / f"{algo}_{seed}.json"
        ran = json.loads(record.read_text()) if record.is_file() else {"command": None, "code": "unrecorded code"}
        if ran["command"] is not None and recorded_flags(ran["command"]) != recorded_flags(cmd):
            changed = sorted(set(recorded_flags(ran["command"])) ^ set(recorded_flags(cmd)))
            raise SystemExit(
                f"--reuse-finished: {algo} seed {seed} in {runs_dir} ran with other flags (differing: "
                f"{' '.join(changed)}); use another --runs-dir or remove that run"
            )
        if not (run / "summary.json").is_file():
            pending.append((algo, seed, [*cmd[:2], "--resume", str(run)], ran))
            continue
        results[(algo, seed)] = {**json.loads((run / "summary.json").read_text()), "reused": True}
        results[(algo, seed)]["reused_from"] = ran["code"]
        if ran.get("resumed_with"):
            results[(algo, seed)]["resumed_from"] = ran["code"]
        print(
            f"reused {algo} seed {seed} ({ran['code']}): final eval return "
            f"{results[(algo, seed)]['final_eval_return']:.1f}",
            flush=True,
        )
    while pending or running:
        while pending and len(running) < parallel:
            algo, seed, cmd, resumed = pending.pop(0)
            record = {"command": cmd, "code": code_version()}
            if resumed:  # the record keeps the command the run started with, and says where it went on
                record = {**resumed, "resumed_with": [*resumed.get("resumed_with", []), code_version()]}
            (Path(runs_dir) / f"{algo}_{seed}.json").write_text(json.dumps(record, indent=1))
            log = open(Path(runs_dir) / f"{algo}_{seed}.log", "a" if resumed else "w")
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((algo, seed, proc, log, resumed))
            print(f"{'resumed' if resumed else 'started'} {algo} seed {seed}", flush=True)
        for item in list(running):
            algo, seed, proc, log, resumed = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                raise SystemExit(f"{algo} seed {seed} failed; see {log.name}")
            results[(algo, seed)] = json.loads((Path(runs_dir) / f"{algo}_{seed}" / "summary.json").read_text())
            if resumed:
                results[(algo, seed)]["resumed_from"] = resumed["code"]
            print(
                f"finished {algo} seed {seed}: final eval return {results[(algo, seed)]['final_eval_return']:.1f}",
                flush=True,
            )
        time.sleep(0.2)
    return results


def reuse_note(results: dict[tuple[str, int], dict]) -> str:
    """The sentences a results file carries about runs read from an earlier invocation or resumed from a stopped one,
    with the code each started at."""
    note = ""
    reused = [
        f"{algo} seed {seed} ({r['reused_from']})" for (algo, seed), r in sorted(results.items()) if r.get("reused")
    ]
    if reused:
        note += (
            " Reused from an earlier invocation (`--reuse-finished`; same flags, checked where recorded; steps/s and "
            f"wall times as measured then): {', '.join(reused)}."
        )
    resumed = [
        f"{algo} seed {seed} ({r['resumed_from']})"
        for (algo, seed), r in sorted(results.items())
        if r.get("resumed_from")
    ]
    if resumed:
        note += (
            " Finished by `--resume` from a checkpoint (one saved by a stop usually falls mid-episode, and the resumed "
            "run then starts a new episode there instead of retracing the uninterrupted run; steps/s and wall time are "
            f"the resumed part's): {', '.join(resumed)}."
        )
    return note


def iqm_intervals(rl: np.ndarray, oracle: np.ndarray, reps: int = 10_000, seed: int = 0) -> list[str]:
    """Interquartile mean over seeds of the preference-based returns, the oracle's and their ratio, each with its 95 %
    percentile-bootstrap interval (the seeds resampled as pairs, so the ratio's interval keeps each seed's pairing)."""
    index = np.random.default_rng(seed).integers(0, len(rl), (reps, len(rl)))
    a, b = iqm(rl[index], axis=1), iqm(oracle[index], axis=1)
    cells = []
    for point, samples, fmt in ((iqm(rl), a, ",.0f"), (iqm(oracle), b, ",.0f"), (iqm(rl) / iqm(oracle), a / b, ".2f")):
        low, high = np.percentile(samples, [2.5, 97.5])
        cells.append(f"{point:{fmt}} [{low:{fmt}}, {high:{fmt}}]")
    return cells


def main(args: Args) -> None:
    if not re.fullmatch(r"[a-z0-9_]*", args.tag):
        raise SystemExit(f"--tag {args.tag!r}: use lower-case letters, digits and _ (it becomes part of a file name)")
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="prefrl-learning-")
    os.makedirs(runs_dir, exist_ok=True)
    results = run_all(commands(args, runs_dir), args.parallel, runs_dir, args.reuse_finished)

    rlhf, oracle_name, rl_label, oracle_label = PAIRS[args.pair]
    rows = []

    def wall_minutes(run: dict) -> float:  # a run finished by --resume after its last step timed no steps: n/a
        return run["wall_time_s"] / 60 if math.isfinite(run.get("sps", math.nan)) else math.nan

    for seed in args.seeds:
        rl, oracle = results[(rlhf, seed)], results[(oracle_name, seed)]
        rows.append(
            [
                seed,
                rl["final_eval_return"],
                oracle["final_eval_return"],
                f"{rl['final_eval_return'] / oracle['final_eval_return']:.2f}",
                rl["labels_used"],
                rl["exploration_sps"],
                rl["learning_sps"],
                oracle["learning_sps"],
                wall_minutes(rl),
                wall_minutes(oracle),
            ]
        )
    rl_mean = np.mean([r[1] for r in rows])
    oracle_mean = np.mean([r[2] for r in rows])
    rows.append(
        [
            "mean",
            rl_mean,
            oracle_mean,
            f"{rl_mean / oracle_mean:.2f}",
            int(np.mean([r[4] for r in rows])),
            *[float(np.mean([r[i] for r in rows])) for i in range(5, 10)],
        ]
    )

    def last(run: dict, n: int) -> float:  # mean of the run's last n evaluations (n = 1: the final one)
        return float(np.mean([v for _, v in run["eval_history"][-n:]])) if n > 1 else run["final_eval_return"]

    iqm_rows = {"IQM [95% CI]": 1}
    if args.late_evaluations > 0:
        iqm_rows[f"IQM of each run's last {args.late_evaluations} evaluations' mean [95% CI]"] = args.late_evaluations
    for label, n in iqm_rows.items():
        values = np.array([[last(results[(a, s)], n) for a in (rlhf, oracle_name)] for s in args.seeds])
        rows.append([label, *iqm_intervals(values[:, 0], values[:, 1]), "", "", "", "", "", ""])
    headers = [
        "seed",
        f"{rl_label} return",
        f"{oracle_label} return",
        "ratio",
        "labels",
        f"{rl_label} exploration steps/s",
        f"{rl_label} learning steps/s",
        "oracle learning steps/s",
        f"{rl_label} wall (min)",
        "oracle wall (min)",
    ]
    with_success = all("success_history" in results[(a, s)] for a in (rlhf, oracle_name) for s in args.seeds)
    if with_success:  # Meta-World
        rates = [[results[(a, s)]["final_success_rate"] for a in (rlhf, oracle_name)] for s in args.seeds]
        for row, rate in zip(rows, [*rates, list(np.mean(rates, axis=0))]):
            row[3:3] = [f"{r:.2f}" for r in rate]
        for row in rows[len(args.seeds) + 1 :]:  # the IQM rows
            row[3:3] = ["", ""]
        headers[3:3] = [f"{rl_label} success rate", f"{oracle_label} success rate"]
    table = markdown_table(headers, rows)
    print(table)
    random_steps = f"{args.learning_starts} random + " if args.pair == "pebble" else ""
    oracle_start = f"; oracle learning starts at {args.oracle_learning_starts}" if args.pair == "pebble" else ""
    width = args.hidden_size or ("256" if args.pair == "pebble" else "64")
    settings = (
        f"{rl_label} ({rlhf}.py) against {oracle_label} ({oracle_name}.py): {args.env_id}, {args.total_timesteps} env "
        f"steps, seeds {list(args.seeds)}, {args.total_labels} labels from a perfect simulated teacher in "
        f"{args.sessions} sessions, {args.query_sampling} query sampling, {random_steps}{args.unsupervised_steps} "
        f"pre-exploration steps{oracle_start}; {width}x{args.depth} networks; {args.parallel} runs at a time with "
        f"{args.torch_threads or 'default'} torch thread(s) each; {machine_description()}."
    )
    settings += reuse_note(results)

    def flag(k: str, v) -> str:
        name = k.replace("_", "-")
        if isinstance(v, bool):
            return f"--{name}" if v else f"--no-{name}"
        return f"--{name} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"

    command = "python benchmarks/learning.py " + " ".join(
        flag(k, v)
        for k, v in vars(args).items()
        if k not in ("runs_dir", "extra_rlhf_flags") and v != getattr(Args, k, None)
    )
    if args.extra_rlhf_flags.strip():  # (with "=": its value starts with "--")
        command += f' --extra-rlhf-flags="{args.extra_rlhf_flags.strip()}"'
    task = re.sub(r"-v\d+$", "", args.env_id.split("/")[-1]).replace("-", "_").lower()  # dm_control/walker-walk-v0
    name = f"learning_{args.pair}_{task.split('_')[0] if '/' not in args.env_id else task}"
    if args.total_labels != Args.total_labels:  # another budget: its own file
        name += f"_{args.total_labels}_labels"
    if args.tag:
        name += f"_{args.tag}"
    body = f"{settings}\n\nCommand: `{command.strip()}`\n\n{table}\n\n![learning curves]({name}.png)"
    print(f"saved {save_markdown(name, f'{rl_label} against the {oracle_label}', body)}")

    panels = [("eval_history", "evaluation return (true reward)")]
    if with_success:
        panels.append(("success_history", "evaluation success rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        for algo, label in (
            (rlhf, f"{rlhf}.py ({rl_label}, {args.total_labels} labels)"),
            (oracle_name, f"{oracle_name}.py (oracle, true reward)"),
        ):
            histories = [results[(algo, s)][key] for s in args.seeds]
            steps = [s for s, _ in histories[0]]
            values = np.array([[v for _, v in h] for h in histories])
            ax.plot(steps, values.mean(0), label=label)
            ax.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{args.env_id}, {len(args.seeds)} seed(s)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
