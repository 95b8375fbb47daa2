"""Speed of the oracle baselines: raw env steps/s, and steps/s of `sac.py` and `ppo.py` on one env; with `--modes`,
also `sac.py` and PEBBLE's main phase (`sac_rlhf.py`) through the fast path (`--compile`, `--cudagraphs`).

    python benchmarks/speed.py                       # Hopper-v5, about 3 minutes on a 2-core CPU
    python benchmarks/speed.py --env-id HalfCheetah-v5 --sac-steps 6000
    python benchmarks/speed.py --cuda --env-id HalfCheetah-v4 --sac-steps 20000 --modes plain compile cudagraphs

Prints a table and saves it to benchmarks/results/speed.md (speed_cuda.md with `--cuda`) with a bar chart. LeanRL's
published SAC figures (HalfCheetah, an H100: 127 steps/s plain, 725 compiled with CUDA graphs) are the GPU yardstick.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import matplotlib
import torch

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
    cuda: bool = False
    """run the algorithms on the GPU (`--cuda`)"""
    modes: tuple[str, ...] = ()
    """also time sac.py and sac_rlhf.py's main phase in these modes: plain, compile, cudagraphs"""
    skip_ppo: bool = False
    """leave out ppo.py (and the raw env rows)"""


MODE_FLAGS = {"plain": [], "compile": ["--compile"], "cudagraphs": ["--cudagraphs"]}
LEANRL_SAC = "LeanRL's SAC on an H100 (HalfCheetah): 127 steps/s plain, 725 with compile and CUDA graphs"


def env_steps_per_second(env: gym.Env, steps: int) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    unknown = sorted(set(args.modes) - set(MODE_FLAGS))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {', '.join(MODE_FLAGS)}")
    device = "--cuda" if args.cuda else "--no-cuda"
    rows = []
    if not args.skip_ppo:
        rows += [
            ["raw env (gym.make)", env_steps_per_second(gym.make(args.env_id), args.env_steps), "random actions"],
            [
                "env from make_env",
                env_steps_per_second(make_env(args.env_id, 0), args.env_steps),
                "+ episode statistics, physics state",
            ],
        ]
    with tempfile.TemporaryDirectory() as runs:
        for mode in args.modes:  # the fast path: sac.py and PEBBLE's main phase, each mode a run
            common = ["--env-id", args.env_id, "--total-timesteps", str(args.sac_steps), "--eval-episodes", "1"]
            common += [device, "--seed", str(args.seed), *MODE_FLAGS[mode]]
            fast = run_algorithm("sac.py", f"sac_{mode}", runs, *common, "--learning-starts", "1000")
            rows.append([f"sac.py, {mode}", fast["learning_sps"], "learning phase (compiling counts in it)"])
            pebble_flags = ["--learning-starts", "500", "--unsupervised-steps", "500", "--total-labels", "100"]
            pebble_flags += ["--labels-per-session", "20", "--feedback-frequency", str(max(args.sac_steps // 5, 1))]
            rlhf = run_algorithm("sac_rlhf.py", f"sac_rlhf_{mode}", runs, *common, *pebble_flags)
            rows.append([f"sac_rlhf.py, {mode}", rlhf["learning_sps"], "main phase, 5 sessions of 20 labels included"])
        if args.skip_ppo:
            return report(args, rows)
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
            device,
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
            device,
            "--seed",
            str(args.seed),
        )
        rows.append(["ppo.py", ppo["sps"], "4 envs x 512 steps, 10 epochs, 64x2 nets"])
    report(args, rows)


def report(args: Args, rows: list[list]) -> None:
    table = markdown_table(["what", "steps/s", "notes"], rows)
    print(table)
    name = "speed_cuda" if args.cuda else "speed"
    command = f"python benchmarks/speed.py --env-id {args.env_id}" + (" --cuda" if args.cuda else "")
    if args.modes:
        command += f" --sac-steps {args.sac_steps} --modes {' '.join(args.modes)}" + (" --skip-ppo" * args.skip_ppo)
    device = "GPU: " + torch.cuda.get_device_name(0) if args.cuda and torch.cuda.is_available() else "CPU"
    body = f"{args.env_id}; {device}; {machine_description()}.\nCommand: `{command}`\n\n{table}"
    if args.modes:
        body += f"\n\nFor comparison: {LEANRL_SAC}."
    print(f"saved {save_markdown(name, 'Speed of the oracle baselines', body)}")

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel(f"steps per second ({args.env_id}, log scale)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
