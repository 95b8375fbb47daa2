"""PrefPPO: PPO on a reward model learned from preferences (B-Pref's PrefPPO; rl-teacher's agents), in one file.

The agent never sees the environment's reward: PPO optimises the mean of a reward-model ensemble trained on a teacher's
answers to "which of these two clips is better?". Queries are pairs of segments from recent rollouts, kept with their
physics states in a bounded segment store; labelled pairs are copied into the preference buffer, so labels always
point at the data they were given for. Atari games are learned from frames: a CNN agent, a CNN reward ensemble
(`FrameRewardEnsemble`), and segments that keep one uint8 frame per step (stacks are rebuilt by index).

The file reads top to bottom:
  1. Args: every flag, with its meaning (the same names and defaults as sac_rlhf.py wherever the meaning is the same).
  2. The algorithm's pieces (module-level, so tests import them): segment store, and this file's own copies of the
     reward ensemble, preference buffer, query selection, SURF, RUNE, k-NN state entropy, label schedule, reward-model
     training, and of a feedback session's two halves (`ask_teacher`, `learn_from_labels`); the run's `Progress`.
  3. main(): collect a rollout from several envs; during pre-exploration reward = k-NN state entropy; at feedback
     sessions ask the teacher and learn from the labels; reward the rollout with the model; GAE; PPO update; evaluate.

    python framework/pref_ppo.py --env-id Hopper-v5
    python framework/pref_ppo.py --env-id HalfCheetah-v5 --num-envs 8 --total-labels 500 --surf
    python framework/pref_ppo.py --env-id ALE/Pong-v5 --num-envs 8 --num-steps 128 --segment-length 25 \
        --reward-batch-size 16
    python framework/pref_ppo.py --resume runs/HalfCheetah-v5__pref_ppo__1__1790000000
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

from framework.checkpoint import Checkpointer, restore_rng_states, resume_args, rng_states
from framework.envs import action_features, action_size, check_env_id, is_pixels, make_env
from framework.evaluation import EvalHistory, Evaluator
from framework.feedback_client import HumanFeedbackArgs
from framework.labels import (
    load_asked,
    plot_label_schedule,
    reward_correlations,
    save_asked,
)
from framework.networks import check_ppo_spaces, make_ppo_agent
from framework.normalization import ObservationNormalizer, RewardScaler, RunningMeanStd
from framework.preferences import PreferenceDataset, Preferences, dataset_metadata, given_preferences
from framework.reward_model import export_reward_model
from framework.runtime import (
    RunArgs,
    UsageError,
    default_run_name,
    interrupts_held,
    run_cli,
    setup_headless_rendering,
    setup_torch,
)
from framework.teacher import (
    QueryBatch,
    Teacher,
    implied_pairs,
    load_reward_function,
    make_teacher,
    segment_return_scale,
    validate_teacher_args,
)
from framework.tracking import RunClock, Tracker, timed, write_summary


@dataclass
class Args(HumanFeedbackArgs, RunArgs):
    exp_name: str = "pref_ppo"
    """the name of this experiment (part of the run name)"""
    resume: str | None = None
    """continue the run in this folder from its last checkpoint (its saved flags are used)"""
    checkpoint_frequency: int = 10_000
    """write <run>/checkpoint.pt after the first rollout past every this many steps (0: only at the end)"""

    # environment and PPO (same meaning and defaults as ppo.py)
    env_id: str = "Hopper-v5"
    """the Gymnasium environment id"""
    frame_stack: int = 4
    """Atari games: observe the last this many frames (0: single frames)"""
    total_timesteps: int = 1_000_000
    """total environment steps (over all parallel envs), pre-exploration included"""
    learning_rate: float = 3e-4
    """Adam learning rate of the agent"""
    num_envs: int = 4
    """parallel environments (in one process)"""
    num_steps: int = 512
    """steps per environment per rollout"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 32
    """minibatches per epoch"""
    update_epochs: int = 10
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss as in the PPO paper's implementation"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    target_kl: float | None = None
    """stop an update early when the approximate KL exceeds this"""
    norm_obs: bool = True
    """normalise the policy's observations with running statistics (the reward model sees raw observations)"""
    norm_reward: bool = True
    """scale the learned reward by the running std of the discounted return"""
    hidden_size: int = 64
    """units per hidden layer of actor and critic"""
    depth: int = 2
    """hidden layers of actor and critic"""

    # unsupervised pre-exploration (as in PEBBLE)
    unsupervised_exploration: bool = True
    """maximise k-NN state entropy for the first `unsupervised_steps` steps"""
    unsupervised_steps: int = 9000
    """steps of pre-exploration"""
    entropy_k: int = 5
    """k of the k-nearest-neighbour state entropy estimate"""

    # segment store
    segment_store_size: int = 1000
    """recent rollout segments kept as query candidates (oldest dropped first)"""
    segment_store_mb: float = 2048.0
    """the most memory the segment store takes, MiB: fewer segments are kept when they are large (frames)"""

    # reward model
    reward_ensemble_size: int = 3
    """members of the reward-model ensemble"""
    reward_hidden_size: int = 256
    """units per hidden layer of each reward network"""
    reward_depth: int = 3
    """hidden layers of each reward network"""
    reward_dropout: float = 0.0
    """dropout probability in the reward networks while training (always off when predicting)"""
    reward_input_norm: bool = False
    """standardise the reward model's inputs by the mean and std of the labelled segments' steps (refitted before each
    reward training; vector observations only)"""
    reward_lr: float = 3e-4
    """learning rate of the reward model"""
    reward_weight_decay: float = 0.0
    """L2 weight decay of the reward model"""
    reward_batch_size: int = 128
    """labelled pairs per reward-model batch"""
    reward_epochs: int = 50
    """maximum epochs over the labels per feedback session"""
    reward_target_accuracy: float = 0.97
    """stop a session's training early once training accuracy reaches this"""
    reward_val_fraction: float = 0.1
    """fraction of labels held out to measure the reward model's validation accuracy"""

    # queries and labels
    segment_length: int = 50
    """steps per segment (clip) shown to the teacher"""
    query_sampling: Literal["uniform", "disagreement", "entropy"] = "disagreement"
    """how queries are chosen from the candidate pool"""
    query_pool_multiplier: int = 10
    """candidate pairs drawn per query asked (disagreement and entropy pick the best of them)"""
    query_recent_steps: int = 0
    """draw the candidate pairs only from the last this many env steps stored (QPA's policy-aligned queries: clips of
    what the agent does now, not of what it did); 0: from everything stored"""
    total_labels: int = 1000
    """label budget of the whole run"""
    labels_per_session: int = 100
    """labels asked per feedback session"""
    label_schedule: Literal["linear", "exponential", "rl-teacher"] = "linear"
    """session timing: `linear` every `feedback_frequency` steps; `exponential` with intervals growing by
    `schedule_growth`; `rl-teacher` with a label rate decaying over training after `pretrain_labels`"""
    feedback_frequency: int = 20_000
    """steps between feedback sessions (the first interval, for exponential)"""
    schedule_growth: float = 2.0
    """growth factor of the intervals between sessions (exponential schedule)"""
    pretrain_labels: int = 200
    """labels of the first session (rl-teacher schedule)"""
    labels_from: str | None = None
    """start with the labels of another finished run of the same env (its folder): the reward model trains on them
    before the first session, and they do not count against --total-labels"""
    feedback_async: Literal["auto", "on", "off"] = "auto"
    """asynchronous feedback: after the first session, the agent keeps learning while queries are answered; answers
    are learned from as they arrive, within the schedule's label budget. `auto`: on with --teacher-feedback-mode
    human, off with simulated teachers (`off`: the agent waits for each session's answers)"""
    feedback_pending: int = 10
    """asynchronous feedback: queries kept outstanding with the teacher (chosen with the current reward model)"""
    reward_update_every: int = 20
    """asynchronous feedback: retrain the reward model (warm) and relabel once this many new answers have arrived"""
    feedback_poll_frequency: int = 500
    """asynchronous feedback: collect answers and top up the outstanding queries every this many env steps"""

    # SURF (Park et al. 2022)
    surf: bool = False
    """semi-supervised reward learning: pseudo-labels on unlabelled pairs, temporal cropping"""
    surf_tau: float = 0.99
    """confidence a pseudo-label needs (ensemble-mean probability)"""
    surf_lambda: float = 1.0
    """weight of the pseudo-label loss"""
    surf_mu: int = 4
    """unlabelled pairs per labelled pair in each batch"""
    surf_crop: int = 5
    """temporal cropping: segments are cut to a random window up to this many steps shorter"""

    # RUNE (Liang et al. 2022)
    rune: bool = False
    """add an exploration bonus: the reward ensemble's disagreement (std)"""
    rune_beta: float = 0.05
    """initial weight of the RUNE bonus"""
    rune_decay: float = 1e-5
    """the bonus weight decays as beta * (1 - decay)^step"""

    # RIME (Cheng et al. 2024)
    rime: bool = False
    """robust reward learning from noisy labels: every epoch trains on the labels whose KL divergence from the
    reward model's prediction is below an adaptive bound, flips those far above it, and leaves out the rest"""
    rime_alpha: float = 0.5
    """weight of rho (the running largest KL of trusted labels) in the bound -ln(rho) + alpha * rho + beta_t * sigma"""
    rime_beta_max: float = 3.0
    """initial weight of sigma (the running std of the trusted labels' KL) in the bound"""
    rime_beta_min: float = 1.0
    """final weight of sigma in the bound"""
    rime_decay_epochs: int = 60
    """beta_t falls linearly from --rime-beta-max to --rime-beta-min over this many reward-training epochs of the run"""
    rime_flip_epsilon: float = 1e-3
    """a label the reward model gives less than this probability (KL > -ln epsilon) is flipped for the epoch"""

    # teacher
    teacher_beta: float = math.inf
    """simulated teacher's rationality (Bradley-Terry); inf: always prefers the higher return"""
    teacher_gamma: float = 1.0
    """simulated teacher's myopia: step t of a T-step segment weighs gamma^(T-1-t)"""
    teacher_eps_mistake: float = 0.0
    """probability that the simulated teacher flips an answer"""
    teacher_eps_skip: float = 0.0
    """skip a pair when neither return exceeds this times the typical segment return"""
    teacher_eps_equal: float = 0.0
    """answer 'equal' when the returns differ by less than this times the typical segment return"""
    teacher_latency: float = 0.0
    """seconds the simulated teacher takes per answer (exponentially distributed around it), as a person would; 0:
    instant"""
    teacher_ranking: bool = False
    """the simulated teacher places both clips of each query into one ordering by binary insertion (as a person in the
    page's ranking mode), and the run also learns from pairs the ordering implies (`--ranking-pairs-per-clip`)"""
    teacher_reward: str | None = None
    """the simulated teacher judges by this user reward (path/file.py:function or module:function) instead of the
    environment's reward"""

    # evaluation and stopping
    eval_frequency: int = 50_000
    """evaluate the deterministic policy on the TRUE reward every this many steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    early_stop_return: float | None = None
    """stop when an evaluation's mean return reaches this"""
    early_stop_patience: int = 0
    """stop after this many evaluations without a new best return (0: never)"""
    correlation_window: int = 10_000
    """the most recent transitions on which learned and true rewards are correlated"""


def validate(args: Args) -> None:
    """Reject impossible settings with a one-line explanation, before anything is created."""

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in [
        "total_timesteps",
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "hidden_size",
        "depth",
        "entropy_k",
        "segment_store_size",
        "reward_ensemble_size",
        "reward_hidden_size",
        "reward_batch_size",
        "reward_epochs",
        "segment_length",
        "query_pool_multiplier",
        "labels_per_session",
        "feedback_frequency",
        "feedback_pending",
        "reward_update_every",
        "feedback_poll_frequency",
        "eval_frequency",
        "eval_episodes",
        "correlation_window",
        "surf_mu",
        "rime_decay_epochs",
        "segment_store_mb",
    ]:
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag(name)} must be > 0, got {getattr(args, name)}")
    for name in [
        "unsupervised_steps",
        "query_recent_steps",
        "total_labels",
        "reward_depth",
        "checkpoint_frequency",
        "pretrain_labels",
        "surf_crop",
        "early_stop_patience",
        "rune_beta",
        "rime_alpha",
        "rime_beta_min",
        "reward_weight_decay",
    ]:
        if getattr(args, name) < 0:
            raise UsageError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        raise UsageError(
            f"num-envs x num-steps ({batch}) must be divisible by --num-minibatches ({args.num_minibatches})"
        )
    if args.total_timesteps < 2 * batch:
        raise UsageError(
            f"--total-timesteps ({args.total_timesteps}) must cover at least two rollouts "
            f"(num-envs x num-steps = {batch})"
        )
    if args.num_steps < args.segment_length:
        raise UsageError(
            f"--num-steps ({args.num_steps}) must be at least --segment-length ({args.segment_length}): "
            "segments are cut from each env's rollout"
        )
    validate_teacher_args(args)
    if args.labels_per_session > max(args.total_labels, 1):
        raise UsageError(
            f"--labels-per-session ({args.labels_per_session}) is more than the whole label budget "
            f"--total-labels ({args.total_labels})"
        )
    if args.label_schedule == "rl-teacher" and args.pretrain_labels > args.total_labels:
        raise UsageError(
            f"--pretrain-labels ({args.pretrain_labels}) is more than --total-labels ({args.total_labels})"
        )
    if args.schedule_growth <= 1.0 and args.label_schedule == "exponential":
        raise UsageError(f"--schedule-growth must be > 1 for the exponential schedule, got {args.schedule_growth}")
    if args.surf_crop >= args.segment_length:
        raise UsageError(
            f"--surf-crop ({args.surf_crop}) must be shorter than --segment-length ({args.segment_length})"
        )
    if not 0 <= args.reward_dropout < 1 or not 0 <= args.reward_val_fraction < 1:
        raise UsageError(
            f"--reward-dropout and --reward-val-fraction must be in [0, 1), got "
            f"{args.reward_dropout} and {args.reward_val_fraction}"
        )
    if not 0.5 <= args.surf_tau < 1:
        raise UsageError(f"--surf-tau must be in [0.5, 1), got {args.surf_tau}")
    if not 0 <= args.rune_decay < 1:
        raise UsageError(f"--rune-decay must be in [0, 1), got {args.rune_decay}")
    if args.rime_beta_max < args.rime_beta_min or not 0 < args.rime_flip_epsilon < 0.5:
        raise UsageError(
            f"--rime-beta-max must be >= --rime-beta-min and --rime-flip-epsilon in (0, 0.5), got "
            f"{args.rime_beta_max}, {args.rime_beta_min} and {args.rime_flip_epsilon}"
        )
    exploration_end = args.unsupervised_steps if args.unsupervised_exploration else 0
    if exploration_end + batch > args.total_timesteps:
        raise UsageError(
            f"pre-exploration ({exploration_end} steps) leaves no rollout of learning out of "
            f"--total-timesteps ({args.total_timesteps})"
        )


# ====================================================================================================== segment store
class SegmentStore:
    """The most recent rollout segments (a bounded ring), each `seg_len` consecutive steps of one env.

    A rollout of `num_steps` steps per env is cut into `num_steps // seg_len` segments per env. A segment in which an
    episode ends is masked after that step (`mask` 0): masked steps count as zero reward for both the teacher and the
    reward model. Physics states (Atari: the colour frames, uint8) are kept so that clips can be made for a human
    teacher. Steps are float32 observations, or of games played from frames the latest frame (uint8). The capacity is
    `capacity` segments or what fits in `max_mib` MiB, whichever is fewer (`nbytes`: the most it takes).
    """

    def __init__(
        self,
        capacity: int,
        seg_len: int,
        obs_dim: int,
        action_dim: int,
        physics_dim: int,
        dtype=np.float32,
        max_mib: float = math.inf,
        physics_dtype=np.float64,
    ):
        itemsize = np.dtype(dtype).itemsize
        per_segment = seg_len * (
            (obs_dim + action_dim) * itemsize + 3 * 4 + physics_dim * np.dtype(physics_dtype).itemsize
        )
        if math.isfinite(max_mib):
            capacity = min(capacity, int(max_mib * 2**20 // per_segment))
        if capacity < 2:
            raise UsageError(f"--segment-store-mb {max_mib:g} holds no 2 segments of {per_segment / 2**20:.2f} MiB")
        self.capacity, self.seg_len, self.nbytes = capacity, seg_len, capacity * per_segment
        self.obs = np.zeros((capacity, seg_len, obs_dim), dtype)
        self.actions = np.zeros((capacity, seg_len, action_dim), dtype)
        self.teacher_rewards = np.zeros((capacity, seg_len), np.float32)
        self.true_rewards = np.zeros((capacity, seg_len), np.float32)
        self.mask = np.zeros((capacity, seg_len), np.float32)
        self.physics = np.zeros((capacity, seg_len, physics_dim), physics_dtype)
        self.pos, self.size = 0, 0

    def add_rollout(self, obs, actions, teacher_rewards, true_rewards, episode_ends, physics) -> None:
        """Arrays of shape (num_steps, num_envs, ...) from one rollout."""
        steps, envs = episode_ends.shape
        per_env = steps // self.seg_len
        cut = lambda a: np.swapaxes(a[: per_env * self.seg_len], 0, 1).reshape(
            envs * per_env, self.seg_len, *a.shape[2:]
        )
        ends = cut(episode_ends)
        mask = ((np.cumsum(ends, axis=1) - ends) == 0).astype(np.float32)  # up to and including the first episode end
        new = {
            "obs": cut(obs),
            "actions": cut(actions),
            "teacher_rewards": cut(teacher_rewards) * mask,
            "true_rewards": cut(true_rewards) * mask,
            "mask": mask,
            "physics": cut(physics),
        }
        n = min(len(mask), self.capacity)  # a rollout larger than the store keeps its last segments
        rows = (self.pos + np.arange(n)) % self.capacity
        for key, value in new.items():
            getattr(self, key)[rows] = value[len(value) - n :]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def newest_rows(self, steps: int) -> np.ndarray:
        """Rows of the newest segments that hold the last `steps` env steps (at least one), newest first."""
        return (self.pos - 1 - np.arange(min(max(steps // self.seg_len, 1), self.size))) % self.capacity

    def sample_segments(self, n: int, seg_len: int, rng: np.random.Generator, recent: int = 0) -> dict[str, np.ndarray]:
        """`n` stored segments, drawn with replacement (same keys as a replay buffer's segments); with `recent`, from
        the newest segments that hold the last `recent` env steps (at least one)."""
        if recent:
            newest = self.newest_rows(recent)
            rows = newest[rng.integers(0, len(newest), n)]
        else:
            rows = rng.integers(0, self.size, n)
        return {
            "obs": self.obs[rows],
            "actions": self.actions[rows],
            "mask": self.mask[rows],
            "teacher_rewards": self.teacher_rewards[rows],
            "true_rewards": self.true_rewards[rows],
            "physics": self.physics[rows],
            "rows": rows,
        }

    def state_dict(self) -> dict:
        keys = ("obs", "actions", "teacher_rewards", "true_rewards", "mask", "physics")
        return {"pos": self.pos, "size": self.size, **{k: getattr(self, k)[: self.size].copy() for k in keys}}

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        for key, value in state.items():
            if key not in ("pos", "size"):
                getattr(self, key)[:n] = value
        self.pos, self.size = state["pos"] % self.capacity, n


# ====================================================================================================== reward model
class EnsembleLinear(nn.Module):
    """`members` independent linear layers applied as one batched matmul: (M, N, in) -> (M, N, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class RewardEnsemble(nn.Module):
    """An ensemble of reward networks r(s, a) in [-1, 1] (tanh output), evaluated as one batched op over members."""

    def __init__(
        self,
        in_dim: int,
        members: int = 3,
        hidden_size: int = 256,
        depth: int = 3,
        dropout: float = 0.0,
        input_norm: bool = False,
    ):
        super().__init__()
        self.members, self.input_norm = members, input_norm
        if input_norm:  # (--reward-input-norm) saved with the model and exported with it
            self.register_buffer("x_mean", torch.zeros(in_dim))
            self.register_buffer("x_std", torch.ones(in_dim))
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [EnsembleLinear(members, in_dim if i == 0 else hidden_size, hidden_size), nn.LeakyReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers += [EnsembleLinear(members, hidden_size if depth else in_dim, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in) shared by all members, or (M, N, in) one batch per member -> rewards (M, N)."""
        if self.input_norm:
            x = (x - self.x_mean) / self.x_std
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        return self.net(x).squeeze(-1)

    @torch.no_grad()
    def fit_input_norm(self, segments: np.ndarray, masks: np.ndarray) -> None:
        """--reward-input-norm: the mean and std (at least 0.01) of every input over the real steps of `segments`
        (N, T, in) with `masks` (N, T)."""
        steps = torch.from_numpy(segments[masks > 0]).to(self.x_mean.device)
        self.x_mean.copy_(steps.mean(0))
        self.x_std.copy_(steps.std(0).clamp_min(0.01) if len(steps) > 1 else torch.ones_like(self.x_std))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over members of r(x), (N,) each, with dropout off whatever mode the model was in."""
        was_training = self.training
        self.eval()
        rewards = self(x)
        self.train(was_training)
        return rewards.mean(0), rewards.std(0) if self.members > 1 else torch.zeros_like(rewards[0])

    def segment_returns(self, seg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """seg: (M, B, T, in) or (B, T, in); mask: same without `in` -> summed rewards (M, B)."""
        if seg.dim() == 3:
            seg, mask = seg.expand(self.members, *seg.shape), mask.expand(self.members, *mask.shape)
        m, b, t, d = seg.shape
        rewards = self(seg.reshape(m, b * t, d)).reshape(m, b, t)
        return (rewards * mask).sum(-1)


class FrameRewardEnsemble(nn.Module):
    """The reward ensemble of games played from frames: r(last `stack` frames, action) in [-1, 1]. Each frame, shrunk
    to 42x42 (the mean of 2x2 blocks), goes through three 16-filter convolutions (5x5 stride 2, 3x3 stride 2, 3x3;
    leaky ReLU) to 784 features; the stack's features and the action one-hot go through a `hidden_size` layer. Members
    are one grouped convolution and one batched matmul per layer.

    `forward` takes whole stacks, `(N, stack * 7056 + actions)` or `(M, N, ...)`, as rollouts and the exported model
    give them. Segments keep single frames, `(..., T, 7056 + actions)` uint8 (the latest frame and the action):
    `segment_rewards` computes each frame's features once and rebuilds each step's stack of them by index within its
    segment (the first steps of a segment repeat its first frame, as a stack does at an episode's start)."""

    FRAME = 84 * 84
    FEATURES = 16 * 7 * 7

    def __init__(self, stack: int, actions: int, members: int = 3, hidden_size: int = 256, dropout: float = 0.0):
        super().__init__()
        self.members, self.stack = members, stack
        convs: list[nn.Module] = []
        for c_in, kernel, stride in ((1, 5, 2), (16, 3, 2), (16, 3, 1)):  # 42 -> 19 -> 9 -> 7
            convs += [nn.Conv2d(members * c_in, members * 16, kernel, stride, groups=members), nn.LeakyReLU()]
        self.convs = nn.Sequential(*convs)
        head: list[nn.Module] = [EnsembleLinear(members, stack * self.FEATURES + actions, hidden_size), nn.LeakyReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head, EnsembleLinear(members, hidden_size, 1), nn.Tanh())

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(M, N, 7056) uint8 frames -> (M, N, 784) features, each member its own."""
        m, n, _ = frames.shape
        x = F.avg_pool2d(frames.reshape(m * n, 1, 84, 84).float().div(255.0), 2)
        return self.convs(x.reshape(m, n, 42, 42).transpose(0, 1)).reshape(n, m, -1).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, stack * 7056 + actions) shared by all members, or (M, N, ...) one batch per member -> (M, N)."""
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        m, n, _ = x.shape
        features = self.frame_features(x[..., : self.stack * self.FRAME].reshape(m, n * self.stack, self.FRAME))
        return self.head(
            torch.cat([features.reshape(m, n, -1), x[..., self.stack * self.FRAME :].float()], -1)
        ).squeeze(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over members of r(x), (N,) each, with dropout off, `chunk` rows at a time."""
        was_training = self.training
        self.eval()
        rewards = torch.cat([self(x[i : i + chunk]) for i in range(0, len(x), chunk)], 1)
        self.train(was_training)
        return rewards.mean(0), rewards.std(0) if self.members > 1 else torch.zeros_like(rewards[0])

    def segment_rewards(self, seg: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """seg: (M, B, T, 7056 + actions) or (B, T, ...) -> per-step rewards (M, B, T); without gradients, `chunk`
        segments at a time (a query pool holds thousands)."""
        if seg.dim() == 3:
            seg = seg.expand(self.members, *seg.shape)
        m, b, t, _ = seg.shape
        if not torch.is_grad_enabled() and b > chunk:
            return torch.cat([self.segment_rewards(seg[:, i : i + chunk], chunk) for i in range(0, b, chunk)], 1)
        features = self.frame_features(seg[..., : self.FRAME].reshape(m, b * t, self.FRAME)).reshape(m, b, t, -1)
        index = torch.arange(t, device=seg.device)[:, None] + torch.arange(1 - self.stack, 1, device=seg.device)
        stacked = features[:, :, index.clamp_min(0)].flatten(-2)  # (M, B, T, stack * 784), oldest frame first
        x = torch.cat([stacked, seg[..., self.FRAME :].float()], -1)
        return self.head(x.reshape(m, b * t, -1)).reshape(m, b, t)

    def segment_returns(self, seg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """seg: (M, B, T, 7056 + actions) or (B, T, ...); mask: same without the last axis -> summed rewards (M, B)."""
        rewards = self.segment_rewards(seg)
        return (rewards * (mask if mask.dim() == 3 else mask.expand(self.members, *mask.shape))).sum(-1)


def preference_probabilities(ensemble: RewardEnsemble, seg_a, mask_a, seg_b, mask_b) -> torch.Tensor:
    """P(B better than A) under each member's Bradley-Terry model on segment returns: (M, n), dropout off."""
    was_training = ensemble.training
    ensemble.eval()
    with torch.no_grad():
        logits = ensemble.segment_returns(seg_b, mask_b) - ensemble.segment_returns(seg_a, mask_a)
    ensemble.train(was_training)
    return torch.sigmoid(logits)


# ================================================================================================= preference buffer
class PreferenceBuffer:
    """Labelled pairs of segments, stored as copies of the (obs, action) steps, never as indices into a buffer that
    is later overwritten. Each pair is assigned once, at random, to training or validation. Steps are float32, or
    uint8 for frames (the latest frame and the action one-hot)."""

    def __init__(self, capacity: int, seg_len: int, in_dim: int, val_fraction: float = 0.0, dtype=np.float32):
        self.capacity, self.val_fraction = capacity, val_fraction
        self.seg_a = np.zeros((capacity, seg_len, in_dim), dtype)
        self.seg_b = np.zeros((capacity, seg_len, in_dim), dtype)
        self.mask_a = np.zeros((capacity, seg_len), np.float32)
        self.mask_b = np.zeros((capacity, seg_len), np.float32)
        self.labels = np.zeros(capacity, np.float32)  # P(B better): 0, 0.5 or 1
        self.steps = np.zeros(capacity, np.int64)  # env step of the feedback session that asked for the label
        self.is_val = np.zeros(capacity, bool)
        self.size = 0
        self.rime = {"kl_max": 0.0, "kl_std": 0.0, "epochs": 0}  # RIME's running statistics of trusted labels

    def add(self, seg_a, mask_a, seg_b, mask_b, labels, step: int, rng: np.random.Generator) -> None:
        n = len(labels)
        self.reserve(self.size + n)
        sl = slice(self.size, self.size + n)
        self.seg_a[sl], self.seg_b[sl], self.mask_a[sl], self.mask_b[sl] = seg_a, seg_b, mask_a, mask_b
        self.labels[sl], self.steps[sl] = labels, step
        self.is_val[sl] = rng.random(n) < self.val_fraction
        self.size += n

    def reserve(self, n: int) -> None:
        """Room for `n` pairs (ranking adds pairs the ordering implies beyond the label budget): grows by doubling."""
        if n > self.capacity:
            self.capacity = max(2 * self.capacity, n)
            for k in ("seg_a", "seg_b", "mask_a", "mask_b", "labels", "steps", "is_val"):
                old = getattr(self, k)
                setattr(self, k, np.concatenate([old, np.zeros((self.capacity - len(old), *old.shape[1:]), old.dtype)]))

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and validation pairs."""
        idx = np.arange(self.size)
        val = self.is_val[: self.size]
        if val.all():  # never train on nothing
            val = np.zeros_like(val)
        return idx[~val], idx[val]

    def state_dict(self) -> dict:
        n = self.size
        keys = ("seg_a", "seg_b", "mask_a", "mask_b", "labels", "steps", "is_val")
        return {**{k: getattr(self, k)[:n].copy() for k in keys}, "rime": dict(self.rime)}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["labels"])
        self.reserve(n)
        for key, value in state.items():
            if key == "rime":
                self.rime = dict(value)
            else:
                getattr(self, key)[:n] = value
        self.size = n


# =================================================================================================== query selection
def select_queries(method: str, probs: torch.Tensor | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick `n` of the candidate pairs. probs: (M, pool) ensemble P(B better), unused by `uniform`.

    - uniform: at random;
    - disagreement: the largest std over members of P(B better);
    - entropy: the largest entropy of the ensemble-mean preference, i.e. of the softmax over the two segment
      returns (the pairs the model is least sure about).
    """
    if method == "uniform":
        return rng.choice(probs.shape[1], n, replace=False)
    if method == "disagreement":
        score = probs.std(0) if probs.shape[0] > 1 else torch.zeros(probs.shape[1])
    elif method == "entropy":
        p = probs.mean(0).clamp(1e-6, 1 - 1e-6)
        score = -(p * p.log() + (1 - p) * (1 - p).log())
    else:
        raise UsageError(f"unknown query sampling method {method!r}; choose uniform, disagreement or entropy")
    return torch.topk(score.cpu(), n).indices.numpy()


# ============================================================================================================== SURF
def surf_crop(seg: np.ndarray, mask: np.ndarray, crop: int, rng: np.random.Generator, length: int | None = None):
    """Temporal cropping: cut each segment (B, T, d) to one random window of T - c steps (c < `crop`, the same for
    the whole batch so the result stays rectangular), starting at an independent offset per segment."""
    b, t = mask.shape
    length = length if length is not None else t - int(rng.integers(0, crop + 1))
    starts = rng.integers(0, t - length + 1, b)
    idx = starts[:, None] + np.arange(length)
    return np.take_along_axis(seg, idx[..., None], 1), np.take_along_axis(mask, idx, 1)


def surf_pseudo_labels(probs: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels from the ensemble-mean P(B better), and the mask of pairs confident beyond `tau`."""
    p = probs.mean(0)
    return (p > 0.5).float(), (torch.maximum(p, 1 - p) > tau).float()


# ============================================================================================================== RUNE
def rune_bonus(reward_std: torch.Tensor, beta0: float, decay: float, step: int) -> torch.Tensor:
    """RUNE's exploration bonus: beta_t * std of the ensemble's reward, with beta_t = beta0 * (1 - decay)^step."""
    return beta0 * (1.0 - decay) ** step * reward_std


# ============================================================================================================== RIME
def rime_select(probs: torch.Tensor, labels: np.ndarray, stats: dict, args: Args) -> tuple[np.ndarray, np.ndarray]:
    """RIME's sample selection for one epoch. probs: (M, n) P(B better) of the labelled pairs; labels: (n,) 0, 0.5
    or 1. The KL divergence of each label from the ensemble-mean prediction is compared with the lower bound
    -ln(rho) + alpha * rho + min(beta_t * sigma, 3), rho and sigma being moving averages (rate 0.1, from 0, so the
    first epochs trust every label) of the largest KL and of the KL's std among trusted labels; beta_t falls
    linearly over the run's epochs. Returns the masks of trusted labels and of hard labels to flip (KL above
    -ln(flip_epsilon)); `stats` (kl_max, kl_std, epochs) is updated in place."""
    p = probs.mean(0).double().clamp(1e-6, 1 - 1e-6).cpu().numpy()
    y = labels.astype(np.float64)
    kl = np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / p), 0.0) + np.where(
        y < 1, (1 - y) * np.log(np.maximum(1 - y, 1e-12) / (1 - p)), 0.0
    )
    fall = (args.rime_beta_max - args.rime_beta_min) * stats["epochs"] / args.rime_decay_epochs
    beta = max(args.rime_beta_min, args.rime_beta_max - fall)
    rho = stats["kl_max"]
    bound = -math.log(rho + 1e-8) + args.rime_alpha * rho + min(beta * stats["kl_std"], 3.0)
    flipped = (kl > -math.log(args.rime_flip_epsilon)) & (y != 0.5)
    trusted = (kl < bound) & ~flipped
    if trusted.any():
        stats["kl_max"] = rho + 0.1 * (float(kl[trusted].max()) - rho)
        stats["kl_std"] += 0.1 * (float(kl[trusted].std()) - stats["kl_std"])
    stats["epochs"] += 1
    return trusted, flipped


# ================================================================================================ k-NN state entropy
def knn_state_entropy(obs: torch.Tensor, all_obs: torch.Tensor, k: int, chunk: int = 8192) -> torch.Tensor:
    """Distance from each of `obs` (B, d) to its k-th nearest neighbour among `all_obs` (N, d), itself excluded
    (PEBBLE's particle-based entropy estimate). One batched pass over the stored states; nothing is rebuilt."""
    dists = torch.cat([torch.cdist(obs, all_obs[i : i + chunk]) for i in range(0, len(all_obs), chunk)], 1)
    k = min(k + 1, dists.shape[1])  # + 1: the state itself is in all_obs at distance 0
    return torch.topk(dists, k, dim=1, largest=False).values[:, -1]


# ==================================================================================================== label schedule
def build_label_schedule(
    kind: str,
    first_step: int,
    total_timesteps: int,
    total_labels: int,
    labels_per_session: int,
    feedback_frequency: int,
    growth: float = 2.0,
    pretrain_labels: int = 0,
) -> list[tuple[int, int]]:
    """The feedback sessions of a run: (env step, labels asked), the first right after pre-exploration.

    - linear: `labels_per_session` every `feedback_frequency` steps until the budget is spent;
    - exponential: `labels_per_session` per session, intervals growing by `growth` (F, gF, g^2 F, ...), so that
      labels come early when the policy changes fastest;
    - rl-teacher: the label count follows rl-teacher's annealer, desired(t) = total * (p + (1 - p)(1 - 0.01^(t/T)))
      with p = pretrain_labels / total, checked every `feedback_frequency` steps (a decaying label rate).
    Sessions past the end of training are dropped, so a run may use fewer labels than its budget.
    """
    sessions: list[tuple[int, int]] = []
    used, step, interval = 0, first_step, float(feedback_frequency)
    while used < total_labels and step < total_timesteps:
        if kind == "rl-teacher":
            frac = pretrain_labels / total_labels if total_labels else 0.0
            span = max(total_timesteps - first_step, 1)
            desired = total_labels * (frac + (1 - frac) * (1 - 0.01 ** ((step - first_step) / span)))
            n = min(int(round(desired)) - used, total_labels - used)
            if step == first_step:
                n = min(max(pretrain_labels, 1), total_labels)
        else:
            n = min(labels_per_session, total_labels - used)
        if n > 0:
            sessions.append((step, n))
            used += n
        if kind == "exponential":
            step, interval = step + int(round(interval)), interval * growth
        else:
            step += feedback_frequency
    return sessions


def run_label_schedule(args: Args, first_step: int) -> list[tuple[int, int]]:
    """The feedback sessions of this run, from its flags (`build_label_schedule`)."""
    return build_label_schedule(
        args.label_schedule,
        first_step,
        args.total_timesteps,
        args.total_labels,
        args.labels_per_session,
        args.feedback_frequency,
        args.schedule_growth,
        args.pretrain_labels,
    )


# ========================================================================================== reward-model training
def train_reward_model(
    ensemble: RewardEnsemble,
    optimizer: optim.Optimizer,
    prefs: PreferenceBuffer,
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
    unlabeled: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Bradley-Terry training on the labelled pairs: each member sees its own shuffle of the training pairs; soft
    labels (0.5) train towards equal returns. With SURF, confident pseudo-labels on `unlabeled` pairs add a loss
    weighted by `surf_lambda`, and every batch is temporally cropped. With RIME, each epoch trains on the trusted
    labels and the flipped ones only (`rime_select`)."""
    train_idx, val_idx = prefs.split()
    m, bs = ensemble.members, args.reward_batch_size
    if args.reward_input_norm:  # the inputs' statistics follow the labelled steps, all of them
        n = prefs.size
        ensemble.fit_input_norm(
            np.concatenate([prefs.seg_a[:n], prefs.seg_b[:n]]), np.concatenate([prefs.mask_a[:n], prefs.mask_b[:n]])
        )
    ensemble.train()
    stats = {"reward/train_loss": float("nan"), "reward/train_accuracy": float("nan"), "reward/epochs": 0.0}
    epoch_labels, epoch_idx = prefs.labels, train_idx
    for epoch in range(args.reward_epochs):
        if args.rime:
            pairs = (prefs.seg_a, prefs.mask_a, prefs.seg_b, prefs.mask_b)
            probs = preference_probabilities(ensemble, *(torch.from_numpy(a[train_idx]).to(device) for a in pairs))
            trusted, flipped = rime_select(probs, prefs.labels[train_idx], prefs.rime, args)
            if not (trusted | flipped).any():  # nothing credible yet: learn from all
                trusted[:] = True
            epoch_labels = prefs.labels.copy()
            epoch_labels[train_idx[flipped]] = 1.0 - epoch_labels[train_idx[flipped]]
            epoch_idx = train_idx[trusted | flipped]
            stats["reward/rime_trusted"] = float(trusted.mean())
            stats["reward/rime_flipped"] = float(flipped.sum())
        order = np.stack([rng.permutation(epoch_idx) for _ in range(m)])  # (M, n_train)
        losses, correct, counted = [], 0.0, 0.0
        for start in range(0, len(epoch_idx), bs):
            idx = order[:, start : start + bs]  # (M, b)
            flat = idx.reshape(-1)
            seg_a, mask_a, seg_b, mask_b = prefs.seg_a[flat], prefs.mask_a[flat], prefs.seg_b[flat], prefs.mask_b[flat]
            if args.surf:
                length = args.segment_length - int(rng.integers(0, args.surf_crop + 1))
                seg_a, mask_a = surf_crop(seg_a, mask_a, args.surf_crop, rng, length)
                seg_b, mask_b = surf_crop(seg_b, mask_b, args.surf_crop, rng, length)
            shape = idx.shape + seg_a.shape[1:]  # (M, b, T, in)
            to = lambda a, s: torch.from_numpy(np.ascontiguousarray(a)).to(device).reshape(s)
            logits = ensemble.segment_returns(to(seg_b, shape), to(mask_b, shape[:-1])) - ensemble.segment_returns(
                to(seg_a, shape), to(mask_a, shape[:-1])
            )  # (M, b)
            labels = torch.from_numpy(epoch_labels[idx]).to(device)  # (M, b)
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum()

            if args.surf and unlabeled is not None:
                u = rng.integers(0, len(unlabeled["seg_a"]), (m, args.surf_mu * idx.shape[1])).reshape(-1)
                ua, uma = surf_crop(unlabeled["seg_a"][u], unlabeled["mask_a"][u], args.surf_crop, rng, length)
                ub, umb = surf_crop(unlabeled["seg_b"][u], unlabeled["mask_b"][u], args.surf_crop, rng, length)
                u = u.reshape(m, -1)
                ushape = u.shape + ua.shape[1:]
                u_logits = ensemble.segment_returns(to(ub, ushape), to(umb, ushape[:-1])) - ensemble.segment_returns(
                    to(ua, ushape), to(uma, ushape[:-1])
                )
                pseudo, confident = surf_pseudo_labels(torch.sigmoid(u_logits.detach()), args.surf_tau)
                u_loss = (
                    (
                        F.binary_cross_entropy_with_logits(u_logits, pseudo.expand_as(u_logits), reduction="none")
                        * confident
                    )
                    .mean(1)
                    .sum()
                )
                loss = loss + args.surf_lambda * u_loss

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item() / m)
            hard = labels != 0.5
            correct += ((logits > 0).float() == labels)[hard].float().sum().item()
            counted += hard.sum().item()
        accuracy = correct / max(counted, 1.0)
        stats |= {
            "reward/train_loss": float(np.mean(losses)) if losses else float("nan"),
            "reward/train_accuracy": accuracy,
            "reward/epochs": float(epoch + 1),
        }
        if accuracy >= args.reward_target_accuracy:
            break
    if len(val_idx):
        probs = preference_probabilities(
            ensemble,
            *(torch.from_numpy(a[val_idx]).to(device) for a in (prefs.seg_a, prefs.mask_a, prefs.seg_b, prefs.mask_b)),
        )
        labels = prefs.labels[val_idx]
        hard = labels != 0.5
        predicted = (probs.mean(0).cpu().numpy() > 0.5).astype(np.float32)
        stats["reward/val_accuracy"] = float((predicted == labels)[hard].mean()) if hard.any() else float("nan")
    return stats


# ====================================================================================================== run progress
@dataclass
class Progress:
    """Where a run stands, saved in every checkpoint (the rest of a checkpoint is networks, buffers and RNGs)."""

    global_step: int = 0
    iteration: int = 0  # rollouts collected
    session: int = 0  # feedback sessions done
    labels_used: int = 0  # labels the teacher gave (a skipped pair costs none: a later session asks again)
    pairs_skipped: int = 0  # pairs the teacher skipped
    evals: EvalHistory = field(default_factory=EvalHistory)
    next_eval: int = 0  # env step of the next evaluation
    phase_time: dict[str, float] = field(default_factory=dict)  # seconds per phase, logged as time/<phase>
    recent_episodes: list[tuple[float, int]] = field(default_factory=list)  # (teacher return, length) of the last 20
    pending_queries: dict | None = None  # a session's queries while a person answers them
    outstanding: dict[str, dict] = field(default_factory=dict)  # asynchronous feedback: queries asked, by key
    arrived: list[dict] = field(default_factory=list)  # asynchronous feedback: answered, not yet learned from
    batches_asked: int = 0  # asynchronous feedback: batches of queries put to the teacher (<run>/asked/)
    clips: dict[str, dict] = field(default_factory=dict)  # ranking: segments of answered queries, by "<key>:<side>"
    implied_pairs: int = 0  # ranking: pairs learned from that the ordering implied beyond those asked
    explore_filled: int = 0  # states stored for the state-entropy reward

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({**state, "evals": EvalHistory(**state["evals"])})


# ================================================================================================== feedback session
# A session has two halves: ask the teacher about pairs of segments, then learn from the labels. Both are the same in
# sac_rlhf.py and pref_ppo.py (the tests compare the source); `learned_and_true_rewards` is where they differ.
def choose_queries(
    buffer,
    ensemble: RewardEnsemble,
    prefs: PreferenceBuffer,
    n_labels: int,
    step: int,
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Draw a pool of candidate pairs of segments from `buffer` and pick `n_labels` of them with `--query-sampling`
    (at random before the reward model has any labels). Returns what the session keeps of the chosen pairs."""
    pool = n_labels * (args.query_pool_multiplier if args.query_sampling != "uniform" else 1)
    seg_a = buffer.sample_segments(pool, args.segment_length, rng, args.query_recent_steps)
    seg_b = buffer.sample_segments(pool, args.segment_length, rng, args.query_recent_steps)
    x_a = np.concatenate([seg_a["obs"], seg_a["actions"]], -1)  # (pool, T, obs + action)
    x_b = np.concatenate([seg_b["obs"], seg_b["actions"]], -1)
    if args.query_sampling == "uniform" or prefs.size == 0:  # an untrained model has no opinion yet
        chosen = rng.choice(pool, n_labels, replace=False)
    else:
        t = [torch.from_numpy(a).to(device) for a in (x_a, seg_a["mask"], x_b, seg_b["mask"])]
        chosen = select_queries(args.query_sampling, preference_probabilities(ensemble, *t), n_labels, rng)
    return {
        "step": step,
        "x_a": x_a[chosen],
        "x_b": x_b[chosen],
        **{
            f"{k}_{side}": seg[k][chosen]
            for side, seg in (("a", seg_a), ("b", seg_b))
            for k in ("mask", "teacher_rewards", "physics")
        },
    }


def query_batch(q: dict[str, np.ndarray], progress: Progress, args: Args) -> QueryBatch:
    """What the teacher is shown of the chosen queries `q`, with the typical segment return of recent episodes."""
    scale = segment_return_scale(progress.recent_episodes, args.segment_length)
    rewards, masks, physics = (
        (q["teacher_rewards_a"], q["teacher_rewards_b"]),
        (q["mask_a"], q["mask_b"]),
        (q["physics_a"], q["physics_b"]),
    )
    return QueryBatch(args.env_id, int(q["step"]), *rewards, *masks, *physics, progress.session, scale)


def ask_teacher(
    n_labels: int,
    buffer,
    ensemble: RewardEnsemble,
    prefs: PreferenceBuffer,
    teacher: Teacher,
    progress: Progress,
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
    checkpoints: Checkpointer,
) -> dict[str, np.ndarray]:
    """The first half of a session: choose the queries and get the teacher's labels (`labels`, NaN: skipped). While
    a person answers, a checkpoint holds the queries, so a run stopped meanwhile asks the same ones when resumed."""
    with timed(progress.phase_time, "query"):
        q = progress.pending_queries
        if q is None:
            q = choose_queries(buffer, ensemble, prefs, n_labels, progress.global_step, args, rng, device)
    with timed(progress.phase_time, "label"):
        queries = query_batch(q, progress, args)
        if args.teacher_feedback_mode == "human":
            progress.pending_queries = q
            checkpoints.save("feedback session waits for answers")
        return {**q, "labels": teacher.answer(queries), "key": np.array(teacher.keys(queries))}


def learn_from_labels(
    q: dict[str, np.ndarray],
    buffer,
    ensemble: RewardEnsemble,
    reward_optimizer: optim.Optimizer,
    prefs: PreferenceBuffer,
    dataset: PreferenceDataset,
    teacher: Teacher,
    progress: Progress,
    tracker: Tracker,
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
) -> None:
    """The second half of a session: store the answered pairs (and every pair asked, with its answer, in
    <run>/preferences/), train the reward model on all labels (SURF: with unlabelled pairs too), put the new reward
    where the agent reads it, log, count the session. A skipped pair costs no label from the budget (the next session,
    or the queue of asynchronous feedback, asks for another). Labels carry the step of their session."""
    step, labels = int(q["step"]), q["labels"]
    with timed(progress.phase_time, "label"):
        progress.pending_queries = None
        answered = ~np.isnan(labels)
        prefs.add(
            q["x_a"][answered],
            q["mask_a"][answered],
            q["x_b"][answered],
            q["mask_b"][answered],
            labels[answered],
            step,
            rng,
        )
        progress.labels_used += int(answered.sum())
        progress.pairs_skipped += int((~answered).sum())
        dataset.add(q, progress.session)
        implied = implied_pairs(q, teacher, progress.clips) if teacher.ranks else None
        if implied is not None:  # ranking: pairs the teacher's ordering implies beyond those asked (no label cost)
            prefs.add(*(implied[k] for k in ("x_a", "mask_a", "x_b", "mask_b", "labels")), step, rng)
            progress.implied_pairs += len(implied["labels"])
    with timed(progress.phase_time, "reward_training"):
        unlabeled = None
        if args.surf:
            ua = buffer.sample_segments(min(args.surf_mu * max(prefs.size, 1), 4096), args.segment_length, rng)
            ub = buffer.sample_segments(len(ua["mask"]), args.segment_length, rng)
            unlabeled = {
                "seg_a": np.concatenate([ua["obs"], ua["actions"]], -1),
                "mask_a": ua["mask"],
                "seg_b": np.concatenate([ub["obs"], ub["actions"]], -1),
                "mask_b": ub["mask"],
            }
        stats = (
            train_reward_model(ensemble, reward_optimizer, prefs, args, rng, device, unlabeled) if prefs.size else {}
        )
    with timed(progress.phase_time, "relabel"):
        stats.update(reward_correlations(*learned_and_true_rewards(buffer, ensemble, args, device)))
    stats.update(
        {
            "feedback/labels_used": progress.labels_used,
            "feedback/labels_stored": prefs.size,
            "feedback/skipped": int((~answered).sum()),
            "feedback/sessions": progress.session + 1,
        }
    )
    if teacher.ranks:
        stats.update({"feedback/implied_pairs": progress.implied_pairs, "feedback/comparisons": teacher.comparisons})
    if prefs.size:
        stats["feedback/teacher_prefers_b"] = float(prefs.labels[: prefs.size].mean())
    if "asked" in q:  # asynchronous feedback: how far the agent went on while these answers were given
        stats["feedback/answer_delay_steps"] = float(np.mean(step - q["asked"]))
    tracker.scalars(stats, step)
    progress.session += 1
    print(
        f"step={step} session={progress.session} labels={progress.labels_used} "
        f"train_acc={stats.get('reward/train_accuracy', math.nan):.3f} "
        f"val_acc={stats.get('reward/val_accuracy', math.nan):.3f} "
        f"pearson={stats.get('reward/pearson', math.nan):.3f}"
        + (f" pending={len(progress.outstanding)}" if progress.outstanding else ""),  # asynchronous: still out
        flush=True,
    )


def exchange_with_teacher(
    buffer,
    ensemble: RewardEnsemble,
    prefs: PreferenceBuffer,
    teacher: Teacher,
    progress: Progress,
    sessions: list[tuple[int, int]],
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
    run_dir: str,
    final: bool = False,
) -> dict[str, np.ndarray] | None:
    """Asynchronous feedback, between the agent's steps: take the answers that arrived, top the outstanding queries up
    to --feedback-pending (chosen with the current reward model, at most --feedback-pending labels ahead of the
    schedule), and, once --reward-update-every answers wait, return them as `learn_from_labels` takes them (else
    None). At the end of a run (`final`): ask what the schedule still allows, wait for every answer out (at most
    --feedback-timeout seconds; 0: no limit) and return them all, so that the final reward model learns from as many
    labels as a synchronous run's and no answer given is lost."""
    step = progress.global_step
    with timed(progress.phase_time, "label"):
        take_answers(teacher.collect(), progress)
    with timed(progress.phase_time, "query"):
        asked = progress.labels_used + len(progress.arrived) + len(progress.outstanding)
        # the queue may run --feedback-pending labels ahead of the schedule, so answers are in when it gets there
        scheduled = sum(n for first_step, n in sessions if first_step <= step)
        allowed = min(scheduled + (0 if final else args.feedback_pending), sum(n for _, n in sessions))
        n_new = allowed - asked if final else min(args.feedback_pending - len(progress.outstanding), allowed - asked)
        if n_new > 0:
            q = choose_queries(buffer, ensemble, prefs, n_new, step, args, rng, device)
            save_asked(run_dir, progress.batches_asked, q)  # on disk before it goes out: a resume finds it
            put_to_teacher(q, teacher, progress, args)
            progress.batches_asked += 1
    if final:
        with timed(progress.phase_time, "label"):
            if progress.outstanding:
                print(f"the agent's steps are done; waiting for the {len(progress.outstanding)} answers still out "
                      "(the final reward model learns from them)", flush=True)  # fmt: skip
            deadline = time.monotonic() + args.feedback_timeout if args.feedback_timeout > 0 else math.inf
            while progress.outstanding and time.monotonic() < deadline:
                time.sleep(0.1)
                take_answers(teacher.collect(), progress)
            take_answers(teacher.collect(final=True), progress)  # (a person's answers still open to undo count too)
    update = bool(progress.arrived) and (len(progress.arrived) >= args.reward_update_every or final)
    teacher.report(step, progress.labels_used + len(progress.arrived) * update, progress.session + update)
    if not update:
        return None
    rows, progress.arrived = progress.arrived, []
    return {"step": step, **{k: np.stack([row[k] for row in rows]) for k in rows[0]}}


def start_from_labels(
    given: Preferences,
    ensemble: RewardEnsemble,
    reward_optimizer: optim.Optimizer,
    prefs: PreferenceBuffer,
    dataset: PreferenceDataset,
    args: Args,
    rng: np.random.Generator,
    device: torch.device,
) -> None:
    """--labels-from: store the labelled pairs of a dataset or of another run (at step 0) and train the reward model
    on them before any new label is asked."""
    pairs = given.pairs()
    prefs.add(pairs["seg_a"], pairs["mask_a"], pairs["seg_b"], pairs["mask_b"], pairs["labels"], 0, rng)
    dataset.add_given(given)  # (they are part of what this run learned from)
    stats = train_reward_model(ensemble, reward_optimizer, prefs, args, rng, device, None)
    print(
        f"started from {prefs.size} labels of {args.labels_from}: "
        f"train_acc={stats.get('reward/train_accuracy', math.nan):.3f}",
        flush=True,
    )


def take_answers(answers: list[tuple[str, float]], progress: Progress) -> None:
    """Asynchronous feedback: move answered queries from outstanding to arrived, with their labels (an answer to a
    query this run no longer waits for is dropped)."""
    for key, label in answers:
        if key in progress.outstanding:
            progress.arrived.append({**progress.outstanding.pop(key), "labels": label, "key": key})


def put_to_teacher(q: dict[str, np.ndarray], teacher: Teacher, progress: Progress, args: Args) -> None:
    """Asynchronous feedback: hand the chosen queries `q` to the teacher and keep them as outstanding, by key."""
    keys = teacher.submit(query_batch(q, progress, args))
    rows = [{k: v[i] for k, v in q.items() if k != "step"} | {"asked": int(q["step"])} for i in range(len(keys))]
    progress.outstanding.update(zip(keys, rows))


def ask_again_after_resume(teacher: Teacher, progress: Progress, args: Args, run_dir: str) -> None:
    """Asynchronous feedback, when a run resumes: the queries the stopped run put to the teacher after its last
    checkpoint (<run>/asked/) are outstanding again, under the same keys, so answers given to them meanwhile count."""
    for number, q in load_asked(run_dir, progress.batches_asked):
        put_to_teacher(q, teacher, progress, args)
        progress.batches_asked = number + 1
        print(f"asked again {len(q['x_a'])} queries the stopped run had put to the teacher", flush=True)


def learned_and_true_rewards(
    store: SegmentStore, ensemble: RewardEnsemble, args: Args, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Learned and true rewards of the steps of the most recent stored segments (about `--correlation-window`
    steps). Nothing is relabelled: each rollout is rewarded by the model of its time when it is collected."""
    recent = store.newest_rows(args.correlation_window)
    x = np.concatenate([store.obs[recent], store.actions[recent]], -1)  # (segments, T, obs + action)
    mask = store.mask[recent].reshape(-1) > 0
    if isinstance(ensemble, FrameRewardEnsemble):  # stacks rebuilt within each segment
        with torch.no_grad():
            learned = ensemble.eval().segment_rewards(torch.from_numpy(x).to(device)).mean(0).reshape(-1).cpu().numpy()
        ensemble.train()
    else:
        learned = ensemble.predict(torch.from_numpy(x.reshape(-1, x.shape[-1])).to(device))[0].cpu().numpy()
    return learned[mask], store.true_rewards[recent].reshape(-1)[mask]


# ============================================================================================================== main
def main(args: Args) -> dict:
    args, checkpoint = resume_args(args)  # with --resume, the run's saved flags
    validate(args)
    setup_headless_rendering()
    check_env_id(args.env_id)
    args.run_name = run_name = args.run_name or default_run_name(args.env_id, args.exp_name, args.seed)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size
    teacher_reward = load_reward_function(args.teacher_reward) if args.teacher_reward else None
    screens = args.teacher_feedback_mode == "human"  # the colour frames of Atari games, for a person's clips
    envs = gym.vector.SyncVectorEnv(
        [
            lambda i=i: make_env(args.env_id, args.seed + i, teacher_reward, None, args.frame_stack, screens)
            for i in range(args.num_envs)
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    action_space, pixels = envs.single_action_space, is_pixels(envs.single_observation_space)
    try:
        check_ppo_spaces(envs.single_observation_space, action_space)
    except ValueError as err:
        raise UsageError(f"pref_ppo.py cannot learn {args.env_id}: {err}") from None
    discrete = isinstance(action_space, gym.spaces.Discrete)
    device = setup_torch(args)  # seeds, threads, device
    tracker = Tracker(run_name, args, args.runs_dir, args.track, args.wandb_project_name, args.wandb_entity)
    run_dir = tracker.run_dir
    evaluator = Evaluator(
        args.env_id,
        args.seed + 10_000,
        args.eval_episodes,
        args.capture_video,
        f"{run_dir}/videos",
        teacher_reward,
        frame_stack=args.frame_stack,
    )
    rng = np.random.default_rng(args.seed)
    teacher = make_teacher(args, run_name, run_dir)
    obs_shape = envs.single_observation_space.shape
    obs_dim, action_dim = int(np.prod(obs_shape)), action_size(action_space)  # the reward model's: discrete one-hot
    # what a segment keeps of a step: the observation (or, of a stack of frames, the latest frame) and the action
    step_dim, row_dtype = (FrameRewardEnsemble.FRAME, np.uint8) if pixels else (obs_dim, np.float32)
    raw_obs, info = envs.reset(seed=args.seed)
    # what clips are made from: MuJoCo physics states, or the colour frames of a game, kept as uint8
    clip_key = next((k for k in ("physics_state", "screen") if k in info), None)
    physics_dim = int(np.prod(info[clip_key].shape[1:])) if clip_key else 1
    physics_dtype = np.uint8 if clip_key == "screen" else np.float64

    # ---------------------------------------------------------------- agent, normalisers, reward model, stores
    agent = make_ppo_agent(envs.single_observation_space, envs.single_action_space, args.hidden_size, args.depth)
    agent = agent.to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_norm = ObservationNormalizer(obs_shape)
    reward_scaler = RewardScaler(args.num_envs, args.gamma)
    if pixels and args.reward_input_norm:
        raise UsageError("--reward-input-norm is for vector observations; frames are scaled to [0, 1] already")
    if pixels:
        stack = obs_shape[0] if len(obs_shape) == 3 else 1
        ensemble = FrameRewardEnsemble(
            stack, action_dim, args.reward_ensemble_size, args.reward_hidden_size, args.reward_dropout
        ).to(device)
    else:
        ensemble = RewardEnsemble(
            obs_dim + action_dim, args.reward_ensemble_size, args.reward_hidden_size, args.reward_depth,
            args.reward_dropout, args.reward_input_norm,
        ).to(device)  # fmt: skip
    reward_optimizer = optim.Adam(ensemble.parameters(), lr=args.reward_lr, weight_decay=args.reward_weight_decay)
    store = SegmentStore(
        args.segment_store_size, args.segment_length, step_dim, action_dim, physics_dim, row_dtype,
        args.segment_store_mb, physics_dtype,
    )  # fmt: skip
    print(f"segment store: {store.capacity} segments, at most {store.nbytes / 2**20:.0f} MiB", flush=True)
    given = (
        given_preferences(args.labels_from, args.env_id, args.segment_length, step_dim + action_dim)
        if args.labels_from
        else None
    )
    prefs = PreferenceBuffer(
        max(args.total_labels, 1) + (len(given) if given else 0),
        args.segment_length,
        step_dim + action_dim,
        args.reward_val_fraction,
        row_dtype,
    )
    physics_size = physics_dim if clip_key else 0
    kept = gym.spaces.Box(0, 255, (84, 84), np.uint8) if pixels else envs.single_observation_space  # per step
    dataset_meta = dataset_metadata(args, kept, envs.single_action_space, physics_size, "pref_ppo")
    dataset = PreferenceDataset(run_dir, dataset_meta, teacher)  # <run>/preferences/, grown at every update
    entropy_stats = RunningMeanStd(()).to(device)
    exploration_end = args.unsupervised_steps if args.unsupervised_exploration else 0

    # states visited during pre-exploration, on the device, for the state-entropy reward (appended per rollout)
    def entropy_features(o: np.ndarray) -> torch.Tensor:
        """(N, *obs_shape) -> what the state entropy measures distances between: the observation, or the latest
        frame shrunk to 21x21 (the mean of each 4x4 block, in [0, 1])."""
        flat = o.reshape(len(o), -1)
        if pixels:
            flat = flat[:, -step_dim:].reshape(-1, 21, 4, 21, 4).mean((2, 4), dtype=np.float32).reshape(-1, 441) / 255
        return torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).to(device)

    features = 441 if pixels else obs_dim
    explore_states = torch.zeros((exploration_end + batch_size, features), device=device) if exploration_end else None
    sessions = run_label_schedule(args, max(exploration_end, batch_size))
    plot_label_schedule(sessions, args.total_timesteps, os.path.join(run_dir, "label_schedule.png"))
    teacher.plan(sessions)  # a person on the page is told how many sessions come, and when

    # ---------------------------------------------------------------- checkpoints: what they hold, resume
    progress = Progress(next_eval=args.eval_frequency)
    parts = {"agent": agent, "optimizer": optimizer, "obs_norm": obs_norm, "reward_scaler": reward_scaler}
    parts |= {"ensemble": ensemble, "reward_optimizer": reward_optimizer, "segment_store": store, "preferences": prefs}
    parts |= {"entropy_stats": entropy_stats, "teacher": teacher, "evaluator": evaluator, "state": progress}

    def snapshot() -> dict:
        explored = explore_states[: progress.explore_filled].cpu() if explore_states is not None else None
        states = {name: part.state_dict() for name, part in parts.items()}
        return {"args": asdict(args), "explore_states": explored, "rng": rng_states(device, numpy=rng), **states}

    if checkpoint is not None:
        for name, part in parts.items():
            part.load_state_dict(checkpoint[name])
        if explore_states is not None and checkpoint["explore_states"] is not None:
            explore_states[: progress.explore_filled] = checkpoint["explore_states"].to(device)
        restore_rng_states(checkpoint["rng"], device, numpy=rng)
        raw_obs, info = envs.reset(seed=args.seed + progress.iteration)  # the interrupted episodes start afresh
        print(f"resumed {run_dir} at step {progress.global_step} with {prefs.size} labels", flush=True)
        ask_again_after_resume(teacher, progress, args, run_dir)
        dataset.resume(progress.session)
    if given is not None and checkpoint is None:  # --labels-from: what people answered before is not wasted
        start_from_labels(given, ensemble, reward_optimizer, prefs, dataset, args, rng, device)
    checkpoints = Checkpointer(run_dir, args.checkpoint_frequency, snapshot, progress)
    checkpoints.save_on_interrupt(tracker.close)

    normalize_obs = args.norm_obs and not pixels  # frames stay uint8; the CNN scales them

    def normalize(o: np.ndarray) -> np.ndarray:
        if pixels:
            return o
        return obs_norm.normalize(o) if normalize_obs else o.astype(np.float32)

    def to_env(action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        return a if discrete else np.clip(a, action_space.low, action_space.high)

    def policy(o: np.ndarray) -> np.ndarray:  # deterministic, for evaluation; the same normalisation as training
        with torch.no_grad():
            return to_env(agent.act_deterministic(torch.as_tensor(normalize(o[None]), device=device)))[0]

    # rollout storage, (num_steps, num_envs, ...)
    obs = torch.zeros(
        (args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8 if pixels else torch.float32, device=device
    )
    actions = torch.zeros((args.num_steps, args.num_envs) + action_space.shape, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)
    raw_obs_buf = np.zeros((args.num_steps, args.num_envs) + obs_shape, row_dtype)
    physics_buf = np.zeros((args.num_steps, args.num_envs, physics_dim), physics_dtype)
    true_rewards = np.zeros((args.num_steps, args.num_envs), np.float32)
    teacher_rewards = np.zeros((args.num_steps, args.num_envs), np.float32)
    episode_ends = np.zeros((args.num_steps, args.num_envs), bool)
    bootstrap = np.zeros((args.num_steps, args.num_envs), np.float32)  # gamma * V(final obs) at time-limit ends

    if normalize_obs and checkpoint is None:
        obs_norm.update(raw_obs)
    next_obs = torch.as_tensor(normalize(raw_obs), device=device)
    next_done = torch.zeros(args.num_envs, device=device)

    # ---------------------------------------------------------------- the loop
    clock = RunClock(progress.phase_time, progress.global_step)
    exploration_sps, stop_reason = math.nan, None
    while progress.iteration < num_iterations:
        progress.iteration += 1
        iteration = progress.iteration
        exploring = progress.global_step + batch_size <= exploration_end
        clock.begin("exploration" if exploring else "learning", progress.global_step)
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate

        with timed(progress.phase_time, "rollout"):
            for step in range(args.num_steps):
                progress.global_step += args.num_envs
                obs[step], dones[step] = next_obs, next_done
                raw_obs_buf[step] = raw_obs
                if clip_key:
                    physics_buf[step] = info[clip_key].reshape(args.num_envs, -1)
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step], actions[step], logprobs[step] = value.flatten(), action, logprob

                raw_obs, reward, terminated, truncated, info = envs.step(to_env(action))
                done = np.logical_or(terminated, truncated)
                final = info.get("final_info", {})
                teacher_r = np.array(info.get("teacher_reward", reward), dtype=np.float32)
                if "teacher_reward" in final:  # the ended episodes' last step lives in final_info
                    teacher_r[final["_teacher_reward"]] = final["teacher_reward"][final["_teacher_reward"]]
                true_rewards[step], teacher_rewards[step], episode_ends[step] = reward, teacher_r, done
                bootstrap[step] = 0.0
                idx = np.flatnonzero(truncated & ~terminated)  # a time limit is not a terminal state
                if len(idx):
                    final_obs = np.stack([info["final_obs"][i] for i in idx])
                    with torch.no_grad():
                        v = agent.get_value(torch.as_tensor(normalize(final_obs), device=device)).flatten()
                    bootstrap[step, idx] = args.gamma * v.cpu().numpy()
                if normalize_obs:
                    obs_norm.update(raw_obs)
                next_obs = torch.as_tensor(normalize(raw_obs), device=device)
                next_done = torch.as_tensor(done, dtype=torch.float32, device=device)
                for i in np.flatnonzero(final.get("_episode", [])):
                    length = int(final["episode"]["l"][i])
                    tail = teacher_rewards[max(step - length + 1, 0) : step + 1, i]  # within this rollout
                    progress.recent_episodes = (progress.recent_episodes + [(float(tail.sum()), len(tail))])[-20:]
                    tracker.scalars(
                        {"charts/episodic_return": final["episode"]["r"][i], "charts/episodic_length": length},
                        progress.global_step,
                    )
            action_feats = action_features(action_space, actions.cpu().numpy()).astype(row_dtype)  # as rewarded
            steps = raw_obs_buf.reshape(args.num_steps, args.num_envs, -1)[..., -step_dim:]  # frames: the latest
            store.add_rollout(steps, action_feats, teacher_rewards, true_rewards, episode_ends, physics_buf)
        global_step = progress.global_step

        # feedback sessions: ask the teacher, then learn from the labels; the second half's results land together
        # (Ctrl-C or SIGTERM waits the few seconds it takes). With --feedback-async, after the first session, answers
        # are exchanged between rollouts and learned from in batches.
        while progress.session < len(sessions) and global_step >= sessions[progress.session][0]:
            if args.feedback_async == "on" and progress.session > 0:
                break
            n_labels = sum(n for _, n in sessions[: progress.session + 1]) - progress.labels_used  # skips: again
            q = ask_teacher(n_labels, store, ensemble, prefs, teacher, progress, args, rng, device, checkpoints)
            with interrupts_held():
                learn_from_labels(
                    q, store, ensemble, reward_optimizer, prefs, dataset, teacher, progress, tracker, args, rng, device
                )
        poll_due = (
            global_step // args.feedback_poll_frequency > (global_step - batch_size) // args.feedback_poll_frequency
        )
        if args.feedback_async == "on" and progress.session > 0 and poll_due:
            q = exchange_with_teacher(store, ensemble, prefs, teacher, progress, sessions, args, rng, device, run_dir)
            if q is not None:
                with interrupts_held():
                    learn_from_labels(
                        q,
                        store,
                        ensemble,
                        reward_optimizer,
                        prefs,
                        dataset,
                        teacher,
                        progress,
                        tracker,
                        args,
                        rng,
                        device,
                    )

        # reward the rollout: state entropy while exploring, then the learned reward (+ RUNE)
        with timed(progress.phase_time, "reward"):
            if exploring:
                flat_obs = entropy_features(raw_obs_buf.reshape(-1, *obs_shape))
                filled = progress.explore_filled
                explore_states[filled : filled + len(flat_obs)] = flat_obs
                progress.explore_filled = filled + len(flat_obs)
                r = knn_state_entropy(flat_obs, explore_states[: progress.explore_filled], args.entropy_k)
                entropy_stats.update(r.double())
                r = r / entropy_stats.var.float().sqrt().clamp_min(1e-8)
            else:
                x = np.concatenate([raw_obs_buf.reshape(-1, obs_dim), action_feats.reshape(-1, action_dim)], 1)
                r, r_std = ensemble.predict(torch.from_numpy(x).to(device))  # frames: whole stacks
                if args.rune:
                    r = r + rune_bonus(r_std, args.rune_beta, args.rune_decay, global_step)
            r = r.reshape(args.num_steps, args.num_envs).cpu().numpy()
            tracker.scalar("charts/agent_reward_mean", float(r.mean()), global_step)
            if args.norm_reward:
                r = np.stack([reward_scaler.scale(r[t], episode_ends[t]) for t in range(args.num_steps)])
            rewards = torch.as_tensor(r + bootstrap, dtype=torch.float32, device=device)
        if exploring and global_step + batch_size > exploration_end:
            exploration_sps = clock.rate("exploration", global_step)

        with timed(progress.phase_time, "agent_update"):
            # generalised advantage estimation
            with torch.no_grad():
                next_value = agent.get_value(next_obs).reshape(1, -1)
                advantages = torch.zeros_like(rewards)
                lastgaelam = 0
                for t in reversed(range(args.num_steps)):
                    nextnonterminal = 1.0 - (next_done if t == args.num_steps - 1 else dones[t + 1])
                    nextvalues = next_value if t == args.num_steps - 1 else values[t + 1]
                    delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                    advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                returns = advantages + values

            b_obs, b_logprobs = obs.reshape((-1,) + obs_shape), logprobs.reshape(-1)
            b_actions = actions.reshape((-1,) + action_space.shape)
            b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
            b_inds = np.arange(batch_size)
            clipfracs = []
            for _epoch in range(args.update_epochs):
                rng.shuffle(b_inds)
                for start in range(0, batch_size, minibatch_size):
                    mb_inds = b_inds[start : start + minibatch_size]
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())
                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                    newvalue = newvalue.view(-1)
                    if args.clip_vloss:
                        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                        v_clipped = b_values[mb_inds] + torch.clamp(
                            newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                        )
                        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                    else:
                        v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()
                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

        logged = {"losses/value_loss": v_loss.item(), "losses/policy_loss": pg_loss.item()}
        logged |= {"losses/entropy": entropy_loss.item(), "losses/approx_kl": approx_kl.item()}
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        logged |= {
            "losses/clipfrac": torch.stack(clipfracs).mean().item(),
            "losses/explained_variance": np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y,
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
        }
        tracker.scalars(logged | {f"time/{k}": v for k, v in progress.phase_time.items()}, global_step)
        tracker.steps_per_second(global_step)

        if global_step >= progress.next_eval or iteration == num_iterations:
            with timed(progress.phase_time, "evaluation"):
                result = evaluator(policy)
            tracker.scalars({**result.as_scalars(), "feedback/labels_used_at_eval": progress.labels_used}, global_step)
            progress.evals.add(global_step, result)
            progress.next_eval = (global_step // args.eval_frequency + 1) * args.eval_frequency
            print(f"step={global_step} {result} labels={progress.labels_used}", flush=True)
            stop_reason = progress.evals.stop_reason(args.early_stop_return, args.early_stop_patience)
            if stop_reason:
                break
        if checkpoints.due():
            checkpoints.save("periodic")

    if args.feedback_async == "on" and progress.session > 0:  # the answers that came in since the last update count
        q = exchange_with_teacher(store, ensemble, prefs, teacher, progress, sessions, args, rng, device, run_dir, True)
        if q is not None:
            learn_from_labels(
                q, store, ensemble, reward_optimizer, prefs, dataset, teacher, progress, tracker, args, rng, device
            )
    summary = {"algorithm": "pref_ppo", "env_id": args.env_id, "seed": args.seed, **clock.summary(progress.global_step)}
    checkpoints.save("end")
    export_reward_model(ensemble, run_dir, args.env_id, obs_dim, action_dim)  # <run>/reward_model.pt2 and .json
    summary |= {"total_timesteps": progress.global_step, "stop_reason": stop_reason or "budget"}
    summary |= {"labels_used": progress.labels_used, "labels_stored": prefs.size, "sessions": progress.session}
    summary |= {"pairs_skipped": progress.pairs_skipped}  # (asked again later: they cost no label)
    if teacher.ranks:  # ranking: comparisons made and the pairs they implied beyond those asked
        summary |= {"comparisons": teacher.comparisons, "implied_pairs": progress.implied_pairs}
    summary |= progress.evals.summary()
    summary = write_summary(run_dir, summary | {"segments_stored": store.size, "exploration_sps": exploration_sps})
    evaluator.close()
    envs.close()
    tracker.close()
    return summary


if __name__ == "__main__":
    run_cli(Args, main)
