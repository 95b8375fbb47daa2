"""Synchronous against asynchronous feedback, with a simulated teacher at a person's pace.

The same PEBBLE run (`framework/sac_rlhf.py`) twice per seed, equal env steps and labels, the teacher taking
`--teacher-latency` seconds per answer (exponentially distributed, one answer after another):
- synchronous: the agent stops at each feedback session until its labels are given;
- asynchronous (`--feedback-async on`): after the first session, the agent trains on while queries are out.

Measured: wall time, the time the agent waited for answers (the runs' `label` phase), the time the labeler had
nothing to answer (the teacher's idle time after its first question), the final evaluation return, and how often the
final reward model orders random segment pairs of the run's replay buffer as their true returns do. Prints a table and
saves benchmarks/results/async_feedback.md with a plot (evaluation returns; where the wall time went).

    python benchmarks/async_feedback.py
    python benchmarks/async_feedback.py --seeds 1 2 3 --teacher-latency 1
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, machine_description, markdown_table, run_algorithm, save_markdown  # noqa: E402
from framework.checkpoint import load_checkpoint  # noqa: E402
from toolbox.reward_ranking import ranking_accuracy  # noqa: E402


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """the environment"""
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    """one synchronous and one asynchronous run per seed"""
    total_timesteps: int = 10_000
    """env steps per run"""
    total_labels: int = 100
    """labels per run"""
    labels_per_session: int = 20
    """labels per session (and reward-model update in asynchronous runs)"""
    feedback_frequency: int = 1500
    """steps between sessions (the label budget a run may have asked by each step)"""
    teacher_latency: float = 3.0
    """seconds per answer (a person's pace)"""
    unsupervised_steps: int = 2000
    """pre-exploration steps (after 1000 random ones)"""
    hidden_size: int = 256
    """agent network width"""
    feedback_pending: int = 20
    """asynchronous runs: queries kept out with the teacher"""
    feedback_poll_frequency: int = 100
    """asynchronous runs: env steps between exchanges with the teacher"""
    runs_dir: str | None = None
    """where the runs go (a temporary folder by default)"""


def main(args: Args) -> None:
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="prefrl-async-")
    common = [
        *f"--env-id {args.env_id} --total-timesteps {args.total_timesteps} --total-labels {args.total_labels}".split(),
        *f"--labels-per-session {args.labels_per_session} --feedback-frequency {args.feedback_frequency}".split(),
        *f"--teacher-latency {args.teacher_latency} --hidden-size {args.hidden_size} --segment-length 25".split(),
        *f"--learning-starts 1000 --unsupervised-steps {args.unsupervised_steps}".split(),
        *f"--eval-frequency {args.total_timesteps // 5} --eval-episodes 3 --no-cuda --torch-threads 1".split(),
    ]
    modes = {
        "synchronous": [],
        "asynchronous": f"--feedback-async on --reward-update-every {args.labels_per_session} --feedback-pending "
        f"{args.feedback_pending} --feedback-poll-frequency {args.feedback_poll_frequency}".split(),
    }
    rows, curves = [], {}
    for seed in args.seeds:
        for mode, flags in modes.items():  # one run at a time: the runs are timed
            name = f"{mode}_{seed}"
            summary = run_algorithm("sac_rlhf.py", name, runs_dir, *common, *flags, "--seed", str(seed))
            checkpoint = load_checkpoint(str(Path(runs_dir) / name / "checkpoint.pt"))
            accuracy = ranking_accuracy(Path(runs_dir) / name)
            waited = summary["phase_time_s"].get("label", 0.0)
            row = [mode, seed, summary["labels_used"], summary["wall_time_s"], waited, checkpoint["teacher"]["idle_s"]]
            rows.append(row + [summary["final_eval_return"], f"{accuracy:.3f}"])
            curves.setdefault(mode, []).append((summary["wall_time_s"], summary["eval_history"]))
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    for mode in modes:
        mine = [r for r in rows if r[0] == mode]
        means = [float(np.mean([float(r[i]) for r in mine])) for i in range(3, 8)]
        rows.append([f"{mode} mean", "", mine[0][2], *means[:4], f"{means[4]:.3f}"])
    table = markdown_table(HEADERS, rows)
    print(table)
    body = (
        f"{args.env_id}, {args.total_timesteps} env steps, {args.total_labels} labels ({args.labels_per_session} per "
        f"session or update, a session every {args.feedback_frequency} steps), a perfect simulated teacher taking "
        f"{args.teacher_latency} s per answer, agent networks {args.hidden_size}x2, seeds {args.seeds}; asynchronous "
        f"runs keep {args.feedback_pending} queries out and exchange every {args.feedback_poll_frequency} steps; "
        f"{machine_description()}.\nCommand: `python benchmarks/async_feedback.py --seeds "
        f"{' '.join(map(str, args.seeds))} --teacher-latency {args.teacher_latency}`\n\n{table}\n\n"
        "agent waited: seconds the agent stood still for answers; labeler idle: seconds the teacher had nothing to "
        "answer after its first question; ranking: how often the final reward model orders random segment pairs of "
        "the run's buffer as their true returns do.\n\n![evaluation returns and wall time](async_feedback.png)"
    )
    print(f"saved {save_markdown('async_feedback', 'Synchronous against asynchronous feedback', body)}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, color in zip(modes, ("tab:blue", "tab:orange")):
        for i, (_, history) in enumerate(curves[mode]):
            steps, returns = zip(*history)
            left.plot(steps, returns, color=color, marker="o", label=mode if i == 0 else None)
    left.set_xlabel("environment step")
    left.set_ylabel("evaluation return")
    left.legend()
    means = [r for r in rows if r[0].endswith("mean")]
    names = [r[0].removesuffix(" mean") for r in means]
    # (colours apart from the modes' on the left: these are phases, not modes)
    right.barh(names, [r[3] - r[4] for r in means], color="0.6", label="training")
    waiting = [r[4] for r in means]
    right.barh(names, waiting, left=[r[3] - r[4] for r in means], color="tab:red", label="agent waiting for answers")
    right.set_xlabel("wall time (s, mean over seeds)")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "async_feedback.png", dpi=120)
    print(f"saved {RESULTS / 'async_feedback.png'}")


HEADERS = ["mode", "seed", "labels", "wall (s)", "agent waited (s)", "labeler idle (s)", "final return", "ranking"]

if __name__ == "__main__":
    main(tyro.cli(Args))
