"""PrefPPO against the oracle PPO on one Atari game, learned from frames: evaluation returns, steps/s and peak memory.

Both run CleanRL's `ppo_atari.py` settings (8 envs x 128 steps, 4 minibatches, 4 epochs, learning rate 2.5e-4,
clip 0.1, entropy 0.01) on the same seeds, one run at a time; PrefPPO learns from a simulated teacher that knows
the score. By default it skips pairs where neither clip scores and calls equal scores equal: most short clips of a
sparse-scoring game score nothing, and a tie answered "left is better" (B-Pref's perfect teacher) teaches nothing.

    python benchmarks/atari.py                                   # ALE/Breakout-v5, 200k steps, 3 seeds (~1.7 h)
    python benchmarks/atari.py --teacher-eps-skip 0 --teacher-eps-equal 0 --seeds 1     # B-Pref's perfect teacher
    python benchmarks/atari.py --env-id ALE/Pong-v5 --total-timesteps 1000000 --seeds 1

Prints a table and saves it to benchmarks/results/atari_<game>.md with a plot of the evaluation returns and of the
training episodes' scores.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import RESULTS, machine_description, markdown_table, run_algorithm, save_markdown

CLEANRL_ATARI = [
    "--num-envs", "8",
    "--num-steps", "128",
    "--num-minibatches", "4",
    "--update-epochs", "4",
    "--learning-rate", "2.5e-4",
    "--clip-coef", "0.1",
    "--ent-coef", "0.01",
]  # fmt: skip
"""CleanRL's `ppo_atari.py` settings, for both agents"""


@dataclass
class Args:
    env_id: str = "ALE/Breakout-v5"
    """the game"""
    total_timesteps: int = 200_000
    """env steps of every run (over the 8 envs)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds, each run by both agents"""
    total_labels: int = 500
    """PrefPPO's label budget"""
    teacher_eps_skip: float = 1e-6
    """the teacher skips a pair when neither clip scores more than this times the typical segment score (1e-6: skip
    pairs where neither scored; a skipped pair costs no label)"""
    teacher_eps_equal: float = 1e-6
    """the teacher answers 'equal' when the scores differ by less than this times the typical segment score (1e-6:
    exact ties)"""
    eval_frequency: int = 50_000
    """evaluate every this many steps"""
    eval_episodes: int = 3
    """episodes per evaluation"""
    runs_dir: str | None = None
    """keep the runs here (default: a temporary folder); a run already finished there is read, not run again"""


def pref_ppo_flags(args: Args) -> list[str]:
    """PrefPPO's settings for a game: 25-step segments (about 1.7 s of play), labels over the first half of the run,
    small reward batches (the CNN ensemble reads every frame)."""
    sessions = 20
    return [
        "--total-labels", str(args.total_labels),
        "--labels-per-session", str(max(args.total_labels // sessions, 1)),
        "--feedback-frequency", str(max(args.total_timesteps // (2 * sessions), 1024)),
        "--unsupervised-steps", str(max(args.total_timesteps // 20, 1024)),
        "--segment-length", "25",
        "--reward-batch-size", "16",
        "--reward-epochs", "10",
        "--teacher-eps-skip", str(args.teacher_eps_skip),
        "--teacher-eps-equal", str(args.teacher_eps_equal),
    ]  # fmt: skip


PARTS = 5
"""the training scores are averaged per fifth of the run"""


def training_returns(run_dir: Path, total_timesteps: int, bins: int = PARTS) -> list[float]:
    """Mean game score of the training episodes that ended in each fifth of the run (NaN where none ended), from the
    run's TensorBoard events. With a stochastic policy they show learning sooner than a few greedy evaluations: a
    greedy Breakout agent that never presses FIRE scores 0."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("charts/episodic_return")
    steps, scores = np.array([e.step for e in events]), np.array([e.value for e in events])
    which = np.minimum(steps * bins // total_timesteps, bins - 1)
    return [float(scores[which == b].mean()) if (which == b).any() else math.nan for b in range(bins)]


def main(args: Args) -> None:
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="prefrl-atari-")
    common = [
        "--env-id", args.env_id,
        "--total-timesteps", str(args.total_timesteps),
        "--eval-frequency", str(args.eval_frequency),
        "--eval-episodes", str(args.eval_episodes),
        "--torch-threads", "2",
        "--no-cuda",
        *CLEANRL_ATARI,
    ]  # fmt: skip
    results: dict[str, list[dict]] = {"ppo": [], "pref_ppo": []}
    for seed in args.seeds:
        for algo in results:
            flags = common + ["--seed", str(seed)] + (pref_ppo_flags(args) if algo == "pref_ppo" else [])
            done = Path(runs_dir) / f"{algo}_{seed}" / "benchmark.json"
            if done.exists():  # finished by an earlier call of this benchmark
                summary = json.loads(done.read_text())
            else:
                summary = run_algorithm(f"{algo}.py", f"{algo}_{seed}", runs_dir, *flags)
                done.write_text(json.dumps(summary))
            summary["training_returns"] = training_returns(Path(summary["run_dir"]), args.total_timesteps)
            results[algo].append(summary)
            print(
                f"{algo} seed {seed}: final {summary['final_eval_return']:.1f}, {summary['sps']:.0f} steps/s, "
                f"peak {summary['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    report(args, results)


def score(mean: float) -> str:
    """A mean training score, or why there is none (an agent that stops launching the ball ends no episode)."""
    return f"{mean:.1f}" if math.isfinite(mean) else "no episode ended"


def report(args: Args, results: dict[str, list[dict]]) -> None:
    teacher = "perfect teacher"
    if args.teacher_eps_skip or args.teacher_eps_equal:
        teacher = "teacher skipping pairs where neither clip scores" if args.teacher_eps_skip else "teacher"
        teacher += ", ties equal" if args.teacher_eps_equal else ""
    names = {"ppo": "PPO (true reward)", "pref_ppo": f"PrefPPO ({args.total_labels} labels, {teacher})"}
    rows = []
    for algo, runs in results.items():
        finals = [r["final_eval_return"] for r in runs]
        curves = np.array([r["training_returns"] for r in runs])
        rows.append(
            [
                names[algo],
                " / ".join(f"{f:.1f}" for f in finals),
                float(np.mean(finals)),
                " / ".join(f"{score(c[0])} -> {score(c[-1])}" for c in curves),
                float(np.mean([r["labels_used"] for r in runs])),
                float(np.mean([r["sps"] for r in runs])),
                float(np.nanmax([r["peak_rss_mib"] for r in runs])),
            ]
        )
    table = markdown_table(
        [
            "agent",
            "final evaluation per seed",
            "mean",
            "training score, first -> last fifth, per seed",
            "labels used",
            "steps/s",
            "peak memory, MiB",
        ],
        rows,
    )
    print(table)
    game = args.env_id.split("/")[-1].split("-")[0].lower()
    command = (
        f"python benchmarks/atari.py --env-id {args.env_id} --total-timesteps {args.total_timesteps} "
        f"--seeds {' '.join(map(str, args.seeds))} --total-labels {args.total_labels}"
        f" --teacher-eps-skip {args.teacher_eps_skip:g} --teacher-eps-equal {args.teacher_eps_equal:g}"
    )
    body = f"{args.env_id}, {args.total_timesteps:,} steps; {machine_description()}.\nCommand: `{command}`\n\n{table}"
    print(f"saved {save_markdown(f'atari_{game}', f'PrefPPO and PPO on {args.env_id}', body)}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fifths = (np.arange(PARTS) + 0.5) * args.total_timesteps / PARTS
    short = {"ppo": "PPO (true reward)", "pref_ppo": f"PrefPPO ({args.total_labels} labels)"}
    for (algo, runs), color in zip(results.items(), ("tab:gray", "tab:blue")):
        for i, run in enumerate(runs):
            steps, returns = zip(*run["eval_history"])
            label = short[algo] if i == 0 else None
            axes[0].plot(steps, returns, color=color, alpha=0.8, label=label)
            axes[1].plot(fifths, run["training_returns"], color=color, alpha=0.8, marker="o")
    axes[0].set_ylabel(f"evaluation score ({args.eval_episodes} greedy episodes)")
    axes[1].set_ylabel("training episodes' mean score, per fifth")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    fig.suptitle(f"{args.env_id}, {len(args.seeds)} seeds")
    fig.legend(loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(RESULTS / f"atari_{game}.png", dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
