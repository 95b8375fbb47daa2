"""How well a PEBBLE run's final reward model ranks behaviour: the fraction of random segment pairs from the run's
replay buffer that the model orders as their TRUE returns do (pairs of equal return left out).

    python toolbox/reward_ranking.py runs/HalfCheetah-v5__sac_rlhf__1__1790000000 [more runs...] [--pairs 4000]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from framework import sac_rlhf  # noqa: E402
from framework.checkpoint import load_checkpoint  # noqa: E402


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """sac_rlhf.py run folders (each holding checkpoint.pt)"""
    pairs: int = 4000
    """random segment pairs to rank"""
    seed: int = 0
    """seed of the pair sampling"""


def saved_replay_buffer(checkpoint: dict) -> sac_rlhf.ReplayBuffer:
    """The replay buffer a sac_rlhf.py checkpoint holds, on the CPU, sized to what it stored."""
    saved = checkpoint["replay_buffer"]
    obs_dim, action_dim, physics_dim = saved["obs"].shape[1], saved["actions"].shape[1], saved["physics"].shape[1]
    rb = sac_rlhf.ReplayBuffer(saved["size"], obs_dim, action_dim, physics_dim, torch.device("cpu"))
    rb.load_state_dict(saved)
    return rb


def ranking_accuracy(run_dir: str | Path, n: int = 4000, seed: int = 0) -> float:
    """The fraction of `n` random segment pairs of the run's replay buffer that its final reward model orders as their
    true returns do (pairs of equal true return left out)."""
    checkpoint = load_checkpoint(str(Path(run_dir) / "checkpoint.pt"))
    args, rb = sac_rlhf.Args(**checkpoint["args"]), saved_replay_buffer(checkpoint)
    ensemble = sac_rlhf.RewardEnsemble(
        rb.obs.shape[1] + rb.actions.shape[1], args.reward_ensemble_size, args.reward_hidden_size, args.reward_depth,
        input_norm=args.reward_input_norm,
    )  # fmt: skip
    ensemble.load_state_dict(checkpoint["ensemble"])
    rng = np.random.default_rng(seed)
    a, b = (rb.sample_segments(n, args.segment_length, rng) for _ in range(2))
    x = [torch.from_numpy(np.concatenate([s["obs"], s["actions"]], -1)) for s in (a, b)]
    probs = sac_rlhf.preference_probabilities(
        ensemble, x[0], torch.from_numpy(a["mask"]), x[1], torch.from_numpy(b["mask"])
    )
    return_a, return_b = a["true_rewards"].sum(1), b["true_rewards"].sum(1)
    keep = return_a != return_b
    return float(np.mean((probs.mean(0).numpy() > 0.5)[keep] == (return_b > return_a)[keep]))


def main(args: Args) -> None:
    for run in args.runs:
        print(f"{ranking_accuracy(run, args.pairs, args.seed):.3f}  {run}")


if __name__ == "__main__":
    main(tyro.cli(Args))
