"""Speed of the oracle baselines: raw env steps/s, and steps/s of `sac.py` and `ppo.py` on one env.

    python benchmarks/speed.py                       # Hopper-v5, about 3 minutes on a 2-core CPU
    python benchmarks/speed.py --env-id HalfCheetah-v5 --sac-steps 6000

Prints a table and saves it to benchmarks/results/speed.md with a bar chart, speed.png.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tyro

from common import RESULTS, machine_description, markdown_table, run_algorithm, save_markdown
from framework.envs import make_env


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """environment to measure"""
    env_steps: int = 20_000
    """random-action steps for the raw env measurement"""
    sac_steps: int = 4000
    """total steps of the sac.py run (the first 1000 are random, then learning)"""
    ppo_steps: int = 16_384
    """total steps of the ppo.py run"""
    seed: int = 1
    """seed of every run"""


def env_steps_per_second(env: gym.Env, steps: int) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    rows = [
        ["raw env (gym.make)", env_steps_per_second(gym.make(args.env_id), args.env_steps), "random actions"],
        [
            "env from make_env",
            env_steps_per_second(make_env(args.env_id, 0), args.env_steps),
            "+ episode statistics, physics state",
        ],
    ]
    with tempfile.TemporaryDirectory() as runs:
        sac = run_algorithm(
            "sac.py",
            "sac",
            runs,
            "--env-id",
            args.env_id,
            "--total-timesteps",
            str(args.sac_steps),
            "--learning-starts",
            "1000",
            "--eval-episodes",
            "1",
            "--no-cuda",
            "--seed",
            str(args.seed),
        )
        rows.append(["sac.py (learning phase)", sac["learning_sps"], "256x2 nets, batch 256, one update per step"])
        ppo = run_algorithm(
            "ppo.py",
            "ppo",
            runs,
            "--env-id",
            args.env_id,
            "--total-timesteps",
            str(args.ppo_steps),
            "--eval-episodes",
            "1",
            "--no-cuda",
            "--seed",
            str(args.seed),
        )
        rows.append(["ppo.py", ppo["sps"], "4 envs x 512 steps, 10 epochs, 64x2 nets"])

    table = markdown_table(["what", "steps/s", "notes"], rows)
    print(table)
    body = (
        f"{args.env_id}; {machine_description()}.\n"
        f"Command: `python benchmarks/speed.py --env-id {args.env_id}`\n\n{table}"
    )
    print(f"saved {save_markdown('speed', 'Speed of the oracle baselines', body)}")

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel(f"steps per second ({args.env_id}, log scale)")
    fig.tight_layout()
    fig.savefig(RESULTS / "speed.png", dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
