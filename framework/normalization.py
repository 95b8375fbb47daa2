"""Running normalisers for on-policy agents, stored as module buffers so they travel inside checkpoints.

Keeping them next to the policy (not as environment wrappers) means evaluation and resumed runs feed the policy
exactly the statistics it was trained with.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of batches (parallel algorithm of Chan et al.), kept in float64."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: np.ndarray | torch.Tensor) -> None:
        batch = torch.as_tensor(np.asarray(batch), dtype=torch.float64).to(self.mean.device)
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObservationNormalizer(RunningMeanStd):
    """(obs - mean) / std, clipped to [-clip, clip]; NumPy in, NumPy out."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__(shape)
        self.clip, self.epsilon = clip, epsilon

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        mean, var = self.mean.cpu().numpy(), self.var.cpu().numpy()
        return np.clip((obs - mean) / np.sqrt(var + self.epsilon), -self.clip, self.clip).astype(np.float32)


class RewardScaler(RunningMeanStd):
    """Divides rewards by the running std of the discounted return (as Gymnasium's NormalizeReward), then clips."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__(())
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.returns = np.zeros(num_envs)

    def get_extra_state(self) -> dict:  # the running returns go into state_dict() with the statistics
        return {"returns": self.returns.copy()}

    def set_extra_state(self, state: dict) -> None:
        self.returns = np.array(state["returns"], dtype=np.float64)

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma * (1 - dones) + rewards
        self.update(self.returns)
        return np.clip(rewards / np.sqrt(self.var.item() + self.epsilon), -self.clip, self.clip).astype(np.float32)
