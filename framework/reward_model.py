"""A run's learned reward as an artifact any agent can use.

Every preference-based run writes its final reward model next to its checkpoint:

- `<run>/reward_model.pt2`: a `torch.export` program, loadable with plain PyTorch (no prefrl code):
  `torch.export.load(path).module()(x)` takes a float32 batch `(N, obs_dim + action_dim)` of observations and actions
  side by side (a discrete action as a one-hot of the action count) and returns `(mean, std)`, the ensemble-mean
  reward of each row and the members' spread, `(N,)` each;
- `<run>/reward_model.json`: what the input is (env id, observation and action sizes, in that order), the ensemble
  size, the output range, and the label convention the model was trained with.

`LearnedReward(env, path)` is a Gymnasium wrapper that replaces an env's reward with a saved model's (the env's own
reward goes to `info["env_reward"]`), so any agent (Stable-Baselines3, CleanRL, `framework/sac.py --reward-model`)
can train on what people taught.
"""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from framework.envs import action_features, action_size
from framework.runtime import UsageError

FORMAT_VERSION = 1
LABEL_CONVENTION = "label = P(second segment better): 0 first (left clip), 1 second (right clip), 0.5 equal"


class MeanAndSpread(nn.Module):
    """(N, in) -> (mean, std) over the members of an ensemble whose forward gives (members, N) rewards."""

    def __init__(self, ensemble: nn.Module):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = self.ensemble(x)
        spread = rewards.std(0) if rewards.shape[0] > 1 else torch.zeros_like(rewards[0])
        return rewards.mean(0), spread


def export_reward_model(ensemble: nn.Module, run_dir: str, env_id: str, obs_dim: int, action_dim: int) -> str:
    """Write `<run>/reward_model.pt2` and `<run>/reward_model.json` (see the module docstring); returns the .pt2 path.
    `ensemble` maps `(N, obs_dim + action_dim)` to `(members, N)` rewards; it is exported on the CPU in eval mode."""
    from copy import deepcopy

    from framework.checkpoint import atomic_write_bytes

    model = MeanAndSpread(deepcopy(ensemble).cpu().eval()).requires_grad_(False)  # rewards out, not a graph
    example = torch.zeros(4, obs_dim + action_dim)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    path = os.path.join(run_dir, "reward_model.pt2")
    tmp = os.path.join(run_dir, ".reward_model.tmp.pt2")
    torch.export.save(program, tmp)
    os.replace(tmp, path)
    with torch.no_grad():
        members = int(model.ensemble(example).shape[0])
    meta = {
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "input": {"layout": "observation then action, float32", "obs_dim": obs_dim, "action_dim": action_dim},
        "output": {"mean": "ensemble-mean reward per row", "std": "std over members", "range": [-1.0, 1.0]},
        "ensemble_size": members,
        "label_convention": LABEL_CONVENTION,
        "load": "torch.export.load(path).module()(x) -> (mean, std)",
    }
    atomic_write_bytes(os.path.join(run_dir, "reward_model.json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def load_reward_model(path: str) -> tuple[nn.Module, dict]:
    """The exported model of a run folder (or a .pt2 file beside its .json) and its metadata; one-line errors."""
    if os.path.isdir(path):
        path = os.path.join(path, "reward_model.pt2")
    meta_path = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(path) or not os.path.isfile(meta_path):
        raise UsageError(
            f"no reward model at {path!r} (with its .json): preference-based runs write <run>/reward_model.pt2 "
            "at the end"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    try:
        module = torch.export.load(path).module()
    except Exception as err:
        raise UsageError(f"{path!r} is not an exported reward model: {type(err).__name__}: {err}") from err
    return module, meta


class LearnedReward(gym.Wrapper):
    """Replaces the env's reward with a saved reward model's mean reward of (observation, action); the env's own
    reward is kept in `info["env_reward"]` (evaluations on the true reward read it there or use an unwrapped env)."""

    def __init__(self, env: gym.Env, path: str):
        super().__init__(env)
        self.model, self.meta = load_reward_model(path)
        obs_dim = int(np.prod(env.observation_space.shape))
        action_dim = action_size(env.action_space)
        wanted = (self.meta["input"]["obs_dim"], self.meta["input"]["action_dim"])
        if (obs_dim, action_dim) != wanted:
            raise UsageError(
                f"the reward model of {self.meta['env_id']} takes {wanted[0]} observation and {wanted[1]} action "
                f"numbers; {env.spec.id if env.spec else 'this env'} has {obs_dim} and {action_dim}"
            )
        self._obs = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action):
        features = action_features(self.env.action_space, action)
        x = np.concatenate([np.ravel(self._obs), features]).astype(np.float32)[None]
        obs, reward, terminated, truncated, info = self.env.step(action)
        with torch.no_grad():
            learned = float(self.model(torch.from_numpy(x))[0][0])
        info["env_reward"] = reward
        self._obs = obs
        return obs, learned, terminated, truncated, info
