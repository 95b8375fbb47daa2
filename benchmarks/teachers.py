"""B-Pref's six simulated teachers: how PEBBLE learns when the teacher is noisy, short-sighted, skips or ties; and
how much RIME's robust reward learning (`--rime`) gives back when the teacher makes mistakes.

Runs `sac_rlhf.py` with each of B-Pref's teachers (Lee et al. 2021) on the same env, budget and seeds, and
prints a table: final evaluation return (true reward) per seed and its mean, the ratio to the perfect ("oracle")
teacher's mean, labels given, pairs skipped, and how well the learned reward follows the true one after the last
session (Pearson r on recent steps, from each run's log). The teachers named in `--rime` also run with `--rime`, each
as a row of its own. Saves it to benchmarks/results/teachers_pebble_<env>[_<tag>].md with a plot.

    python benchmarks/teachers.py                                       # HalfCheetah-v5, 50k steps, 3 seeds
    python benchmarks/teachers.py --teachers oracle mistake --seeds 1   # some of them
    python benchmarks/teachers.py --teachers oracle mistake mistake30 --rime mistake mistake30  # RIME against plain
    python benchmarks/teachers.py --teachers oracle mistake mistake30 --rime mistake mistake30 \
        --rime-flags=--reward-warm-start --tag warmstart                 # RIME with its warm start
    python benchmarks/teachers.py --tag bpref --runs-dir D --reuse-finished   # a file of its own; continue in D

| teacher | B-Pref's setting | prefrl flags |
|---|---|---|
| oracle | perfectly rational | (none) |
| stoch | Bradley-Terry with beta = 1 | --teacher-beta 1 |
| mistake | 10 % of answers flipped | --teacher-eps-mistake 0.1 |
| skip | skips pairs whose returns are both under 0.1 of the scale | --teacher-eps-skip 0.1 |
| myopic | step weights gamma = 0.9 towards the clip's end | --teacher-gamma 0.9 |
| equal | ties returns within 0.1 of the scale | --teacher-eps-equal 0.1 |
| mistake30 | (not one of B-Pref's: RIME's hardest setting) 30 % of answers flipped | --teacher-eps-mistake 0.3 |

Runs go seed by seed (every teacher's seed 1 first), so an interrupted invocation leaves whole seeds behind.

Every other setting is `learning.py`'s (two runs at a time, one torch thread each); `--runs-dir D --reuse-finished`
continues an interrupted invocation.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tyro

from common import RESULTS, machine_description, markdown_table, save_markdown
from learning import Args as LearningArgs
from learning import commands, reuse_note, run_all

TEACHERS = {
    "oracle": "",
    "stoch": "--teacher-beta 1",
    "mistake": "--teacher-eps-mistake 0.1",
    "skip": "--teacher-eps-skip 0.1",
    "myopic": "--teacher-gamma 0.9",
    "equal": "--teacher-eps-equal 0.1",
    "mistake30": "--teacher-eps-mistake 0.3",
}
BPREF = ("oracle", "stoch", "mistake", "skip", "myopic", "equal")


@dataclass
class Args:
    teachers: tuple[str, ...] = BPREF
    """which teachers to run (oracle is needed for the ratio): B-Pref's six, or mistake30"""
    rime: tuple[str, ...] = ()
    """teachers of --teachers that also run with --rime (rows "<teacher> + RIME", run folders
    sac_rlhf_<teacher>_rime_<seed>)"""
    rime_flags: str = ""
    """more sac_rlhf.py flags for the RIME rows only, e.g. "--reward-warm-start" (RIME's warm start), so that RIME
    in full compares with plain PEBBLE"""
    env_id: str = "HalfCheetah-v5"
    """the environment"""
    total_timesteps: int = 50_000
    """env steps per run, pre-exploration included"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds of every teacher"""
    total_labels: int = 500
    """label budget of each run"""
    parallel: int = 2
    """runs at a time"""
    runs_dir: str | None = None
    """where the runs go (default: a new temporary folder)"""
    reuse_finished: bool = False
    """reuse the runs in --runs-dir that already wrote their summary.json (refused if one ran with other flags)"""
    tag: str = ""
    """suffix of the results file's name (teachers_pebble_<env>_<tag>), so that another set of teachers or settings
    gets a file of its own"""
    learning: LearningArgs = field(default_factory=LearningArgs)
    """the rest of learning.py's settings (label sessions, pre-exploration, evaluation)"""


def variants(args: Args) -> list[tuple[str, str]]:
    """(name, sac_rlhf.py flags) of every row: each teacher, and each teacher of --rime again with --rime."""
    out = [(t, TEACHERS[t]) for t in args.teachers]
    out += [(f"{t}_rime", f"{TEACHERS[t]} --rime {args.rime_flags}".strip()) for t in args.teachers if t in args.rime]
    return out


def jobs(args: Args, runs_dir: str) -> list[tuple[str, int, list[str]]]:
    """The PEBBLE runs of `learning.py`, one per row and seed, each named sac_rlhf_<row>_<seed>; seed by seed."""
    out = []
    for name, flags in variants(args):
        settings = replace(
            args.learning,
            env_id=args.env_id,
            total_timesteps=args.total_timesteps,
            seeds=args.seeds,
            total_labels=args.total_labels,
            extra_rlhf_flags=f"{args.learning.extra_rlhf_flags} {flags}",
        )
        for algo, seed, cmd in commands(settings, runs_dir):
            if algo == "sac_rlhf":
                cmd[cmd.index("--run-name") + 1] = f"sac_rlhf_{name}_{seed}"
                out.append((f"sac_rlhf_{name}", seed, cmd))
    return sorted(out, key=lambda job: args.seeds.index(job[1]))  # stable: rows keep their order within a seed


def main(args: Args) -> None:
    if not re.fullmatch(r"[a-z0-9_]*", args.tag):
        raise SystemExit(f"--tag {args.tag!r}: use lower-case letters, digits and _ (it becomes part of a file name)")
    unknown = sorted(set(args.teachers) - set(TEACHERS))
    if unknown:
        raise SystemExit(f"unknown teacher(s) {unknown}; choose from {', '.join(TEACHERS)}")
    if set(args.rime) - set(args.teachers):
        raise SystemExit(f"--rime {' '.join(sorted(set(args.rime) - set(args.teachers)))}: not in --teachers")
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="prefrl-teachers-")
    os.makedirs(runs_dir, exist_ok=True)
    results = run_all(jobs(args, runs_dir), args.parallel, runs_dir, args.reuse_finished)

    def returns(name: str) -> list[float]:
        return [results[(f"sac_rlhf_{name}", s)]["final_eval_return"] for s in args.seeds]

    def last_pearson(name: str, seed: int) -> float:
        """The learned reward's Pearson correlation with the true reward after the run's last session (its log)."""
        log = os.path.join(runs_dir, f"sac_rlhf_{name}_{seed}.log")
        found = re.findall(r" pearson=(\S+)", open(log).read()) if os.path.isfile(log) else []
        return float(found[-1]) if found else float("nan")

    base = float(np.mean(returns("oracle"))) if "oracle" in args.teachers else float("nan")
    rows = []
    for name, flags in variants(args):
        runs = [results[(f"sac_rlhf_{name}", s)] for s in args.seeds]
        mean = float(np.mean(returns(name)))
        rows.append(
            [
                name.replace("_rime", " + RIME"),
                flags.strip() or "(perfect)",
                *returns(name),
                mean,
                f"{mean / base:.2f}" if np.isfinite(base) else "n/a",
                float(np.mean([r["labels_used"] for r in runs])),
                float(np.mean([r.get("pairs_skipped", 0) for r in runs])),
                f"{np.mean([last_pearson(name, seed) for seed in args.seeds]):.2f}",
            ]
        )
    headers = ["teacher", "flags", *[f"seed {s}" for s in args.seeds], "mean", "ratio to oracle teacher"]
    headers += ["labels given (mean)", "pairs skipped (mean)", "learned reward's Pearson r, last session (mean)"]
    table = markdown_table(headers, rows)
    print(table)

    settings = (
        f"PEBBLE (sac_rlhf.py) on {args.env_id}, {args.total_timesteps} env steps, {args.total_labels} labels in "
        f"{args.learning.sessions} sessions, {args.learning.query_sampling} query sampling, "
        f"{args.learning.learning_starts} random + {args.learning.unsupervised_steps} pre-exploration steps; "
        f"{args.parallel} runs at a time; {machine_description()}. Return: final evaluation on the true reward. A "
        "skipped pair costs no label (a later session asks again), so every teacher gives the whole budget but for "
        "the last session's skips."
    ) + reuse_note(results)

    def flag(name: str, value: object) -> str:
        """`--name value` as a shell takes it back: tuples spaced out, a value that starts with - joined by =."""
        value = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"--{name.replace('_', '-')}" + (f'="{value}"' if value.startswith("-") else f" {value}")

    command = "python benchmarks/teachers.py " + " ".join(
        flag(k, v)
        for k, v in vars(args).items()
        if k not in ("runs_dir", "learning", "reuse_finished") and v != getattr(Args, k, None)
    )
    overridden = {"env_id", "total_timesteps", "seeds", "total_labels", "runs_dir", "reuse_finished", "parallel"}
    command += "".join(
        " " + flag(f"learning.{k}", v)
        for k, v in vars(args.learning).items()
        if k not in overridden and v != getattr(LearningArgs, k, None)
    )
    task = re.sub(r"-v\d+$", "", args.env_id.split("/")[-1]).replace("-", "_").lower()
    name = f"teachers_pebble_{task}" + (f"_{args.tag}" if args.tag else "")
    body = f"{settings}\n\nCommand: `{command.strip()}`\n\n{table}\n\n![returns per teacher]({name}.png)"
    print(f"saved {save_markdown(name, f'B-Pref teachers: PEBBLE on {args.env_id}', body)}")

    rows_named = [row for row, _ in variants(args)]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows_named)), 3.6))
    for i, row in enumerate(rows_named):
        values = returns(row)
        color = "tab:blue" if row == "oracle" else "tab:green" if row.endswith("_rime") else "tab:orange"
        ax.bar(i, np.mean(values), color=color, alpha=0.7)
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(rows_named)), [n.replace("_rime", "\n+ RIME") for n in rows_named])
    ax.set_ylabel("final evaluation return (true reward)")
    ax.set_title(f"PEBBLE, {args.env_id}, {args.total_labels} labels, {len(args.seeds)} seed(s)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
