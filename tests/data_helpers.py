"""Real segments for reward-learning tests and benchmarks: MuJoCo steps from random actions with a per-episode bias."""

from __future__ import annotations

import numpy as np
import torch

from framework.envs import make_env


def biased_random_buffer(algo, env_id: str, seed: int, steps: int):
    """`steps` steps of `env_id` in the algorithm module's replay buffer (`algo.ReplayBuffer`), from random actions
    around a bias drawn per 200-step episode, so that segments span slow, fast and backwards running."""
    env = make_env(env_id, seed)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    n_obs, n_act = env.observation_space.shape[0], env.action_space.shape[0]
    rb = algo.ReplayBuffer(steps, n_obs, n_act, len(info["physics_state"]), torch.device("cpu"))
    bias = rng.uniform(-1, 1, n_act)
    for t in range(steps):
        action = np.clip(bias + 0.5 * rng.normal(size=n_act), -1, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        end = terminated or truncated or t % 200 == 199
        rb.add(obs, next_obs, action, reward, reward, terminated, end, info["physics_state"])
        obs, info = next_obs, next_info
        if end:
            obs, info = env.reset()
            bias = rng.uniform(-1, 1, n_act)
    return rb
