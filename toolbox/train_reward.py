"""Train a reward model from a preference dataset alone, and see how its quality grows with the number of labels.

    python toolbox/train_reward.py runs/<run> [--held-out 0.2] [--counts 25 50 100 200] [--out folder]

A dataset is any `<run>/preferences/` (or a folder holding dataset.json, see `framework/preferences.py`). A fixed
random fraction of the labelled pairs is held out; for each label count, a fresh ensemble (PEBBLE's reward model,
`framework/sac_rlhf.py`, its default flags) is trained on that many of the other pairs, in the order they were asked,
and measured on the held-out pairs: the fraction it orders as the labels do (equal answers left out) and, where the
dataset keeps the teacher's per-step reward (simulated labels), the Pearson correlation of learned and teacher
reward over the held-out segments' steps. Writes `train_reward.md` (the table), `train_reward.png` (the curves) and
the model trained on all training pairs as `reward_model.pt2` + `.json` (so `sac.py --reward-model <out>` trains an
agent on it) to `--out` (default: `<run>/train_reward`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from framework import sac_rlhf  # noqa: E402
from framework.preferences import dataset_folder, read_preferences  # noqa: E402
from framework.reward_model import export_reward_model  # noqa: E402
from framework.runtime import UsageError, run_cli  # noqa: E402


@dataclass
class Args:
    dataset: tyro.conf.Positional[str]
    """a run folder (runs/<run>) or a preference dataset folder"""
    held_out: float = 0.2
    """fraction of the labelled pairs kept out of training, to measure on"""
    counts: tuple[int, ...] = ()
    """label counts to train with (default: doubling from 25 up to every training pair)"""
    seed: int = 0
    """seed of the held-out split and of the training"""
    reward_epochs: int = 50
    """at most this many epochs per training (PEBBLE's default)"""
    out: str | None = None
    """folder for the table, the plot and the model (default: <run>/train_reward)"""


def label_counts(available: int, asked: tuple[int, ...]) -> list[int]:
    if asked:
        if min(asked) < 1 or max(asked) > available:
            raise UsageError(f"--counts must be between 1 and the {available} training pairs, got {list(asked)}")
        return sorted(set(asked))
    counts = [n for n in (25 * 2**k for k in range(20)) if n < available]
    return counts + [available]


def evaluate(ensemble, held: dict[str, np.ndarray], rewards: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Held-out accuracy (equal answers left out) and, with per-step teacher rewards, their Pearson correlation with
    the learned reward over the held-out segments' steps."""
    t = [torch.from_numpy(held[k]) for k in ("seg_a", "mask_a", "seg_b", "mask_b")]
    probs = sac_rlhf.preference_probabilities(ensemble, *t).mean(0).numpy()
    hard = held["labels"] != 0.5
    out = {"accuracy": float(((probs > 0.5) == (held["labels"] > 0.5))[hard].mean()) if hard.any() else math.nan}
    if rewards is not None:
        steps = np.concatenate([held["seg_a"], held["seg_b"]]).reshape(-1, held["seg_a"].shape[-1])
        inside = np.concatenate([held["mask_a"], held["mask_b"]]).reshape(-1) > 0
        with torch.no_grad():
            learned = ensemble(torch.from_numpy(steps[inside])).mean(0).numpy()
        true = np.concatenate(rewards).reshape(-1)[inside]
        ok = np.std(learned) > 0 and np.std(true) > 0
        out["pearson"] = float(np.corrcoef(learned, true)[0, 1]) if ok else math.nan
    return out


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    counts = [r["labels"] for r in rows]
    ax.plot(counts, [r["accuracy"] for r in rows], "o-", label="held-out accuracy")
    if "pearson" in rows[0]:
        ax.plot(counts, [r["pearson"] for r in rows], "s--", label="Pearson with the teacher's reward")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("labels used")
    ax.set_ylim(min(0.0, *(r.get("pearson", 0.0) for r in rows)), 1.0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: Args) -> list[dict]:
    if not 0 < args.held_out < 1:
        raise UsageError(f"--held-out must be between 0 and 1, got {args.held_out}")
    data = read_preferences(args.dataset)
    meta, pairs = data.meta, data.pairs()
    labels = np.asarray(data.table["label"], np.float64)
    n = len(pairs["labels"])
    if n < 10:
        raise UsageError(f"{args.dataset!r} has {n} labelled pairs; training and measuring needs at least 10")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    held_idx = np.sort(rng.choice(n, max(1, round(n * args.held_out)), replace=False))
    train_idx = np.setdiff1d(np.arange(n), held_idx)  # in the order the pairs were asked
    held = {k: v[held_idx] for k, v in pairs.items()}
    simulated = meta.get("teacher", {}).get("kind") == "simulated" and "reward_a" in data.arrays
    rewards = None
    if simulated:
        keep = ~np.isnan(labels)
        rewards = (data.arrays["reward_a"][keep][held_idx], data.arrays["reward_b"][keep][held_idx])
    flags = sac_rlhf.Args(env_id=meta["env_id"], segment_length=meta["segment_length"], seed=args.seed)
    flags.reward_epochs, flags.reward_val_fraction = args.reward_epochs, 0.0
    in_dim = meta["obs_size"] + meta["action_size"]
    rows, device = [], torch.device("cpu")
    for count in label_counts(len(train_idx), args.counts):
        started = time.perf_counter()
        prefs = sac_rlhf.PreferenceBuffer(count, meta["segment_length"], in_dim)
        use = train_idx[:count]
        prefs.add(pairs["seg_a"][use], pairs["mask_a"][use], pairs["seg_b"][use], pairs["mask_b"][use],
                  pairs["labels"][use], 0, rng)  # fmt: skip
        ensemble = sac_rlhf.RewardEnsemble(
            in_dim, flags.reward_ensemble_size, flags.reward_hidden_size, flags.reward_depth, flags.reward_dropout
        )
        optimizer = torch.optim.Adam(ensemble.parameters(), lr=flags.reward_lr, weight_decay=flags.reward_weight_decay)
        stats = sac_rlhf.train_reward_model(ensemble, optimizer, prefs, flags, rng, device)
        row = {"labels": count, **evaluate(ensemble, held, rewards), "train_accuracy": stats["reward/train_accuracy"]}
        rows.append(row | {"seconds": time.perf_counter() - started})
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)

    folder = dataset_folder(args.dataset)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(folder)), "train_reward")
    os.makedirs(out, exist_ok=True)
    export_reward_model(ensemble, out, meta["env_id"], meta["obs_size"], meta["action_size"])
    title = f"{meta['env_id']}: {len(held_idx)} held-out of {n} labelled pairs ({meta.get('run', '?')})"
    columns = ["labels", "accuracy"] + (["pearson"] if simulated else []) + ["train_accuracy", "seconds"]
    lines = [
        f"# Reward model trained offline: {meta['env_id']}",
        "",
        f"{title}; teacher: {meta.get('teacher', {}).get('kind', '?')}; seed {args.seed}.",
        f"Command: `python toolbox/train_reward.py {args.dataset}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |"
        )
    lines += ["", "![held-out accuracy against labels used](train_reward.png)", ""]
    with open(os.path.join(out, "train_reward.md"), "w") as f:
        f.write("\n".join(lines))
    plot(rows, os.path.join(out, "train_reward.png"), title)
    print("\n".join(lines[5:-3]))
    print(f"table, plot and reward model (trained on {len(train_idx)} pairs) in {out}", flush=True)
    return rows


if __name__ == "__main__":
    run_cli(Args, main)
