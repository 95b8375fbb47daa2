"""Networks shared by the SAC-based and PPO-based scripts, sized by `--hidden-size` and `--depth`.

The oracle baselines and the preference-based scripts use these same classes so that their returns and speeds
compare like with like.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def mlp(
    in_dim: int, out_dim: int, hidden_size: int, depth: int, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """`depth` hidden layers of `hidden_size` units with `activation`, then a linear output layer."""
    layers = hidden_layers(in_dim, hidden_size, depth, activation)
    layers.append(nn.Linear(hidden_size if depth > 0 else in_dim, out_dim))
    return nn.Sequential(*layers)


def hidden_layers(in_dim: int, hidden_size: int, depth: int, activation: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    """`depth` (Linear, activation) pairs: the body of an MLP."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden_size, hidden_size), activation()]
    return layers


class SoftQNetwork(nn.Module):
    """Q(s, a) for SAC."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int = 256, depth: int = 2):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, 1, hidden_size, depth)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], 1))


class TwinQNetwork(nn.Module):
    """SAC's two critics as one network: each layer's weights of both are stacked on a leading axis, so a forward pass
    is one batched matmul per layer for the pair (what LeanRL gets from vmap over two critics). Built from two
    `SoftQNetwork`s (their initialisation, hence the same random draws as two separate critics); returns (2, batch)."""

    def __init__(self, first: SoftQNetwork, second: SoftQNetwork):
        super().__init__()
        pairs = [(a, b) for a, b in zip(first.net, second.net) if isinstance(a, nn.Linear) and isinstance(b, nn.Linear)]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([a.weight.detach().T, b.weight.detach().T]).clone()) for a, b in pairs]
        )  # (2, in, out)
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([a.bias.detach(), b.bias.detach()])[:, None, :].clone()) for a, b in pairs]
        )  # (2, 1, out)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], 1).expand(len(self.weights[0]), -1, -1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = torch.relu(x)
        return x.squeeze(-1)

    @staticmethod
    def state_from_pair(first: dict, second: dict) -> dict:
        """The state dict of a twin built from two `SoftQNetwork` state dicts (checkpoints that saved two critics)."""
        names = sorted({k.rsplit(".", 1)[0] for k in first}, key=lambda n: int(n.split(".")[1]))
        state = {}
        for i, name in enumerate(names):
            state[f"weights.{i}"] = torch.stack([first[f"{name}.weight"].T, second[f"{name}.weight"].T])
            state[f"biases.{i}"] = torch.stack([first[f"{name}.bias"], second[f"{name}.bias"]])[:, None, :]
        return state

    @staticmethod
    def upgrade_checkpoint(saved: dict) -> None:
        """A checkpoint that saved two separate critics (`qf1`, `qf2`, `qf1_target`, `qf2_target`) gets the twins'
        entries `qf` and `qf_target` instead, in place; a checkpoint that has them is left as it is."""
        for name in ("qf", "qf_target"):
            if name not in saved:
                saved[name] = TwinQNetwork.state_from_pair(*[saved.pop(name.replace("qf", f"qf{i}")) for i in (1, 2)])


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SACActor(nn.Module):
    """Tanh-squashed Gaussian policy, rescaled to the action space's bounds."""

    def __init__(
        self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, hidden_size: int = 256, depth: int = 2
    ):
        super().__init__()
        action_dim = len(action_low)
        self.trunk = nn.Sequential(*hidden_layers(obs_dim, hidden_size, depth))
        trunk_out = hidden_size if depth > 0 else obs_dim
        self.fc_mean = nn.Linear(trunk_out, action_dim)
        self.fc_logstd = nn.Linear(trunk_out, action_dim)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        mean = self.fc_mean(h)
        log_std = torch.tanh(self.fc_logstd(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mean, log_std

    def get_action(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A sampled action, its log-probability `(batch, 1)`, and the deterministic (mean) action."""
        mean, log_std = self(obs)
        std = log_std.exp()
        x_t = mean + std * torch.randn_like(mean)  # reparameterisation trick
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = (-0.5 * ((x_t - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(1, keepdim=True)
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6).sum(1, keepdim=True)
        return action, log_prob, torch.tanh(mean) * self.action_scale + self.action_bias


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weights and constant bias (PPO's usual initialisation)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class PPOAgent(nn.Module):
    """Separate actor and critic MLPs with tanh activations. Continuous actions: a Gaussian policy with a
    state-independent log-std; `discrete`: a categorical policy over `action_dim` actions."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_size: int = 64, depth: int = 2, discrete: bool = False):
        super().__init__()
        self.discrete = discrete
        self.critic = mlp(obs_dim, 1, hidden_size, depth, nn.Tanh)
        self.actor_mean = mlp(obs_dim, action_dim, hidden_size, depth, nn.Tanh)
        linears = lambda net: [m for m in net if isinstance(m, nn.Linear)]
        for net, out_std in ((self.critic, 1.0), (self.actor_mean, 0.01)):
            *hidden, last = linears(net)
            for layer in hidden:
                layer_init(layer)
            layer_init(last, std=out_std)
        if not discrete:
            self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        """Sampled (or given) action, its log-probability, the policy entropy and the state value."""
        out = self.actor_mean(obs)
        if self.discrete:
            dist = torch.distributions.Categorical(logits=out)
            if action is None:
                action = dist.sample()
            return action, dist.log_prob(action.long()), dist.entropy(), self.critic(obs)
        dist = torch.distributions.Normal(out, self.actor_logstd.expand_as(out).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(obs)

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.actor_mean(obs)
        return out.argmax(-1) if self.discrete else out


class NatureCNN(nn.Module):
    """The DQN paper's convolutional torso (Mnih et al. 2015): uint8 frames (C, 84, 84), or (84, 84), scaled to [0, 1],
    -> 512 features. C is the number of stacked frames."""

    def __init__(self, channels: int, out_dim: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, out_dim)),
            nn.ReLU(),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 255.0
        return self.net(x if x.dim() == 4 else x.unsqueeze(1))


class AtariPPOAgent(nn.Module):
    """CleanRL's `ppo_atari.py` agent: a shared Nature CNN, a categorical policy head and a value head."""

    def __init__(self, frame_shape: tuple[int, ...], n_actions: int):
        super().__init__()
        self.network = NatureCNN(frame_shape[0] if len(frame_shape) == 3 else 1)
        self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1.0)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.network(obs))

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        """Sampled (or given) action, its log-probability, the policy entropy and the state value."""
        hidden = self.network(obs)
        dist = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action.long()), dist.entropy(), self.critic(hidden)

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.network(obs)).argmax(-1)


def check_ppo_spaces(observation_space, action_space) -> tuple[bool, bool]:
    """(image observations?, discrete actions?) for spaces a PPO agent can learn; a ValueError saying why not."""
    import gymnasium as gym

    pixels = observation_space.dtype == np.uint8 and len(observation_space.shape) in (2, 3)
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if pixels and not discrete:
        raise ValueError(f"image observations are supported with discrete actions only, not {action_space}")
    if not discrete and not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"actions must be continuous (Box) or discrete, not {action_space}")
    return pixels, discrete


def make_ppo_agent(observation_space, action_space, hidden_size: int = 64, depth: int = 2) -> nn.Module:
    """The PPO agent for a pair of spaces: `AtariPPOAgent` for uint8 frames with discrete actions, `PPOAgent` (MLPs of
    `hidden_size` x `depth`) for vectors, with continuous or discrete actions."""
    pixels, discrete = check_ppo_spaces(observation_space, action_space)
    if pixels:
        return AtariPPOAgent(observation_space.shape, int(action_space.n))
    action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    return PPOAgent(int(np.prod(observation_space.shape)), action_dim, hidden_size, depth, discrete)


def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, as one fused op over all parameters."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


__all__ = [
    "mlp",
    "hidden_layers",
    "SoftQNetwork",
    "TwinQNetwork",
    "SACActor",
    "PPOAgent",
    "NatureCNN",
    "AtariPPOAgent",
    "check_ppo_spaces",
    "make_ppo_agent",
    "layer_init",
    "polyak_update",
]
