"""Labeling by ranking against labeling pairs, at equal comparisons: how well the reward model then ranks new pairs.

A simulated person (B-Pref's teacher: perfect, or flipping 10 % of its answers) makes the same number of comparisons
either way:
- pairs: that many random pairs of segments, one label each (what `sac_rlhf.py` asks by default);
- ranking: the two clips of random queries are placed one after the other into one ordering by binary insertion (the
  feedback page's ranking mode, `--teacher-ranking`) until the comparisons are spent; the reward model learns from each
  query's label and from the pairs the ordering implies, up to K per clip (`--ranking-pairs-per-clip`; 0: all).
PEBBLE's reward ensemble (`sac_rlhf.py`'s, trained as a run trains it, its defaults) then ranks 5,000 held-out pairs
of segments from other episodes. The table gives that accuracy (mean and range over seeds) per budget, mode and
teacher, and how many labelled pairs each mode learned from.

Segments are 50 real HalfCheetah-v5 steps from random actions with a per-episode bias (slow, fast and backward running),
as in the reward-model tests; a teacher's label compares their true returns.

    python benchmarks/ranking.py                          # budgets 50-400, both teachers, 3 seeds: about 10 min
    python benchmarks/ranking.py --budgets 100 --seeds 1  # one setting
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import tyro

from common import RESULTS, ROOT, machine_description, markdown_table, save_markdown

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from data_helpers import biased_random_buffer  # noqa: E402
from framework import sac_rlhf as algo  # noqa: E402
from framework.teacher import QueryBatch, SimulatedTeacher, implied_pairs, query_keys  # noqa: E402

TEACHERS = {"perfect": 0.0, "10% mistakes": 0.1}


@dataclass
class Args:
    budgets: tuple[int, ...] = (50, 100, 200, 400)
    """comparisons the simulated person makes"""
    pairs_per_clip: tuple[int, ...] = (10, 0)
    """ranking runs with these `--ranking-pairs-per-clip` (0: every pair of placed clips)"""
    teachers: tuple[str, ...] = tuple(TEACHERS)
    """which simulated people answer"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds: segments drawn, teacher noise, reward-model initialisation"""
    steps: int = 20_000
    """HalfCheetah steps per buffer (one to draw labelled segments from, one held out)"""
    held_out_pairs: int = 5_000
    """pairs of held-out segments the trained model ranks"""


def cheetah_buffer(seed: int, steps: int):
    """HalfCheetah-v5 steps from random actions around a per-episode bias, in sac_rlhf.py's replay buffer."""
    return biased_random_buffer(algo, "HalfCheetah-v5", seed, steps)


def segments(rb, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s = rb.sample_segments(n, 50, rng)
    return s | {"x": np.concatenate([s["obs"], s["actions"]], -1)}


def labelled_by_pairs(rb, budget: int, eps: float, seed: int, rng) -> tuple[dict, dict]:
    a, b = segments(rb, budget, rng), segments(rb, budget, rng)
    labels = SimulatedTeacher(eps_mistake=eps, seed=seed).label(a["teacher_rewards"], b["teacher_rewards"])
    pairs = {"x_a": a["x"], "mask_a": a["mask"], "x_b": b["x"], "mask_b": b["mask"], "labels": labels}
    return pairs, {"comparisons": budget, "clips": 2 * budget}


def labelled_by_ranking(rb, budget: int, eps: float, per_clip: int, seed: int, rng) -> tuple[dict, dict]:
    """Queries one at a time until the ranking teacher has made `budget` comparisons (the last query may cross it);
    every query's label, then the pairs the ordering implies between the clips placed."""
    teacher = SimulatedTeacher(eps_mistake=eps, seed=seed, ranking=True, ranking_pairs_per_clip=per_clip)
    asked, i = [], 0
    while teacher.comparisons < budget:
        a, b = segments(rb, 1, rng), segments(rb, 1, rng)
        batch = QueryBatch("HalfCheetah-v5", i, a["teacher_rewards"], b["teacher_rewards"], a["mask"], b["mask"],
                           a["physics"], b["physics"])  # fmt: skip
        labels = teacher.answer(batch)
        asked.append({"key": np.array(query_keys(batch)), "labels": labels, "x_a": a["x"], "mask_a": a["mask"],
                      "x_b": b["x"], "mask_b": b["mask"]})  # fmt: skip
        i += 1
    q = {k: np.concatenate([row[k] for row in asked]) for k in asked[0]}
    implied = implied_pairs(q, teacher, {})
    pairs = {k: np.concatenate([q[k], implied[k]]) if implied else q[k] for k in ("x_a", "mask_a", "x_b", "mask_b")}
    pairs["labels"] = np.concatenate([q["labels"], implied["labels"]]) if implied else q["labels"]
    return pairs, {"comparisons": teacher.comparisons, "clips": 2 * len(asked)}


def held_out_accuracy(pairs: dict, test: tuple, seed: int) -> float:
    """Train PEBBLE's reward ensemble on `pairs` (sac_rlhf.py's defaults) and rank the held-out pairs `test`."""
    args = algo.Args(reward_val_fraction=0.0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ensemble = algo.RewardEnsemble(23, args.reward_ensemble_size, args.reward_hidden_size, args.reward_depth,
                                   args.reward_dropout)  # fmt: skip
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=args.reward_lr, weight_decay=args.reward_weight_decay)
    prefs = algo.PreferenceBuffer(len(pairs["labels"]), 50, 23)
    prefs.add(*(pairs[k] for k in ("x_a", "mask_a", "x_b", "mask_b", "labels")), 0, rng)
    algo.train_reward_model(ensemble, optimizer, prefs, args, rng, torch.device("cpu"))
    x_a, mask_a, x_b, mask_b, truth = test
    with torch.no_grad():
        t = torch.from_numpy
        probs = algo.preference_probabilities(ensemble, t(x_a), t(mask_a), t(x_b), t(mask_b)).mean(0).numpy()
    return float(np.mean((probs > 0.5) == (truth == 1.0)))


def plot(means: dict[tuple[str, str, int], float], budgets, teachers) -> None:
    """Held-out accuracy (%) against comparisons, one panel per teacher: results/ranking_efficiency.png."""
    fig, axes = plt.subplots(1, len(teachers), figsize=(5 * len(teachers), 3.6), squeeze=False)
    for ax, teacher in zip(axes[0], teachers):
        for mode in dict.fromkeys(m for (t, m, _) in means if t == teacher):
            ax.plot(budgets, [means[(teacher, mode, b)] for b in budgets], marker="o", label=mode)
        ax.set(title=f"{teacher} teacher", xlabel="comparisons", ylabel="held-out pair accuracy (%)", xscale="log")
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ranking_efficiency.png", dpi=120)


def main(args: Args) -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    results = {}  # (teacher, mode, budget) -> list of (accuracy, labelled pairs, comparisons, clips)
    for seed in args.seeds:
        train_rb, test_rb = cheetah_buffer(seed, args.steps), cheetah_buffer(10_000 + seed, args.steps)
        rng = np.random.default_rng(seed)
        a, b = segments(test_rb, args.held_out_pairs, rng), segments(test_rb, args.held_out_pairs, rng)
        truth = SimulatedTeacher().label(a["teacher_rewards"], b["teacher_rewards"])
        test = (a["x"], a["mask"], b["x"], b["mask"], truth)
        for teacher in args.teachers:
            for budget in args.budgets:
                eps = TEACHERS[teacher]
                for per_clip in (None, *args.pairs_per_clip):  # None: pairs
                    if per_clip is None:
                        mode, (pairs, info) = "pairs", labelled_by_pairs(train_rb, budget, eps, seed, rng)
                    else:
                        mode = f"ranking, K={per_clip or 'all'}"
                        pairs, info = labelled_by_ranking(train_rb, budget, eps, per_clip, seed, rng)
                    accuracy = held_out_accuracy(pairs, test, seed)
                    results.setdefault((teacher, mode, budget), []).append(
                        (accuracy, len(pairs["labels"]), info["comparisons"], info["clips"])
                    )
                    print(f"seed {seed} {teacher:>12} {budget:>4} comparisons {mode:>16}: accuracy {accuracy:.3f} "
                          f"from {len(pairs['labels'])} pairs ({info['clips']} clips, {info['comparisons']} "
                          f"comparisons) [{time.time() - t0:.0f} s]", flush=True)  # fmt: skip
    rows = []
    for (teacher, mode, budget), runs in results.items():
        acc = np.array([r[0] for r in runs]) * 100
        rows.append([teacher, budget, mode, f"{acc.mean():.1f} [{acc.min():.1f}, {acc.max():.1f}]",
                     round(float(np.mean([r[2] for r in runs]))), round(float(np.mean([r[3] for r in runs]))),
                     round(float(np.mean([r[1] for r in runs])))])  # fmt: skip
    headers = ["teacher", "comparisons asked", "mode", "held-out accuracy % (mean [min, max])",
               "comparisons made", "clips seen", "labelled pairs learned from"]  # fmt: skip
    table = markdown_table(headers, rows)
    print(table)
    body = (
        f"{__doc__.split(chr(10) + chr(10) + '    python')[0]}\n\nSeeds {', '.join(map(str, args.seeds))}; "
        f"{args.steps:,} steps per buffer, {args.held_out_pairs:,} held-out pairs; {time.time() - t0:.0f} s on "
        f"{machine_description()}.\n\n{table}\n\n![accuracy against comparisons](ranking_efficiency.png)\n"
    )
    path = save_markdown("ranking_efficiency", "Ranking against pairs at equal comparisons", body)
    means = {key: 100 * float(np.mean([r[0] for r in runs])) for key, runs in results.items()}
    plot(means, args.budgets, args.teachers)
    print(f"saved {path} and {RESULTS / 'ranking_efficiency.png'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
