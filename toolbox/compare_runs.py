"""Compare runs: read a scalar from several run folders' TensorBoard logs, print a table, and plot the curves.

    python toolbox/compare_runs.py runs/Hopper-v5__sac__1__* runs/Hopper-v5__sac_rlhf__1__* --out media/curve.png
    python toolbox/compare_runs.py runs/* --tag charts/episodic_return --group-by exp

With `--group-by exp`, runs of the same experiment name (the second `__` field of CleanRL-style run names) are
averaged at shared steps and drawn as mean +- std.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """run folders (each holding TensorBoard event files)"""
    tag: str = "eval/episodic_return"
    """the scalar to compare"""
    group_by: str = "run"
    """'run' (one curve per folder) or 'exp' (average the seeds of each experiment name)"""
    out: str | None = None
    """save the plot here (PNG); no plot when unset"""
    title: str | None = None
    """plot title (default: the tag)"""


def read_scalar(run_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        raise SystemExit(f"error: {run_dir} has no scalar {tag!r}; it has {', '.join(sorted(acc.Tags()['scalars']))}")
    events = acc.Scalars(tag)
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def group_name(run_dir: str, group_by: str) -> str:
    name = os.path.basename(os.path.normpath(run_dir))
    parts = name.split("__")
    return parts[1] if group_by == "exp" and len(parts) >= 2 else name


def main(args: Args) -> None:
    if args.group_by not in ("run", "exp"):
        raise SystemExit(f"error: --group-by must be 'run' or 'exp', got {args.group_by!r}")
    missing = [r for r in args.runs if not os.path.isdir(r)]
    if missing:
        raise SystemExit(f"error: not a run folder: {', '.join(missing)}")
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for run in args.runs:
        groups[group_name(run, args.group_by)].append(read_scalar(run, args.tag))

    print(f"| {'run' if args.group_by == 'run' else 'experiment'} | runs | last step | final {args.tag} | best |")
    print("|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curves in sorted(groups.items()):
        steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
        values = np.array([[dict(zip(s.tolist(), v.tolist()))[t] for t in steps] for s, v in curves])
        mean, std = values.mean(0), values.std(0)
        print(f"| {name} | {len(curves)} | {steps[-1]} | {mean[-1]:.1f} +- {std[-1]:.1f} | {mean.max():.1f} |")
        ax.plot(steps, mean, label=name)
        if len(curves) > 1:
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if args.out:
        ax.set_xlabel("environment steps")
        ax.set_ylabel(args.tag)
        ax.set_title(args.title or args.tag)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
