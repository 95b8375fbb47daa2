"""PEBBLE: SAC on a reward model learned from preferences (Lee, Smith & Abbeel 2021), in one file.

The agent never sees the environment's reward. It learns from a reward model, an ensemble trained on a teacher's
answers to "which of these two clips is better?". The environment's true reward is stored only to log how well the
learned reward tracks it, to feed the simulated teacher, and to evaluate.

The file reads top to bottom:
  1. Args: every flag, with its meaning.
  2. The algorithm's pieces (module-level, so tests import them): replay buffer, reward ensemble, preference buffer,
     query selection (uniform / disagreement / entropy), SURF, RUNE, k-NN state entropy, label schedule, reward-model
     training; the run's `Progress`; a feedback session's two halves, `ask_teacher` (choose queries, get labels) and
     `learn_from_labels` (store them, train the reward model, relabel the buffer).
  3. main(): unsupervised pre-exploration, then act / store / (feedback session) / update SAC / evaluate /
     checkpoint. Checkpoints, resuming and stopping cleanly come from framework.checkpoint and framework.runtime.

    python framework/sac_rlhf.py --env-id Hopper-v5
    python framework/sac_rlhf.py --env-id HalfCheetah-v5 --total-labels 500 --query-sampling disagreement --surf
    python framework/sac_rlhf.py --resume runs/HalfCheetah-v5__sac_rlhf__1__1790000000
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

from framework.checkpoint import (
    Checkpointer,
    generator_state,
    load_checkpoint,
    restore_rng_states,
    resume_args,
    rng_states,
    save_checkpoint,
)
from framework.envs import check_env_id, make_env, require_continuous_actions
from framework.evaluation import EvalHistory, Evaluator
from framework.feedback_client import HumanFeedbackArgs
from framework.labels import (
    load_asked,
    plot_label_schedule,
    reward_correlations,
    save_asked,
)
from framework.networks import SACActor, SoftQNetwork, TwinQNetwork, polyak_update
from framework.normalization import RunningMeanStd
from framework.preferences import PreferenceDataset, Preferences, dataset_metadata, given_preferences
from framework.reward_model import export_reward_model
from framework.runtime import (
    RunArgs,
    UsageError,
    compile_steps,
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
    exp_name: str = "sac_rlhf"
    """the name of this experiment (part of the run name)"""
    resume: str | None = None
    """continue the run in this folder from its last checkpoint (its saved flags are used)"""
    checkpoint_frequency: int = 10_000
    """write <run>/checkpoint.pt at the first episode end after every this many steps (0: only at the end)"""

    # environment and SAC (same meaning and defaults as sac.py but learning_starts; the tests list each difference)
    env_id: str = "Hopper-v5"
    """the Gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total environment steps, pre-exploration included"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (never larger than total_timesteps)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target network smoothing coefficient"""
    batch_size: int = 256
    """batch size of replay samples"""
    learning_starts: int = 1000
    """steps of random actions before any learning (pre-exploration follows them)"""
    policy_lr: float = 3e-4
    """learning rate of the policy network"""
    q_lr: float = 1e-3
    """learning rate of the Q networks"""
    policy_frequency: int = 2
    """policy updates happen every this many steps (and that many at once: delayed TD3-style updates)"""
    target_network_frequency: int = 1
    """target networks are updated every this many steps"""
    alpha: float = 0.2
    """entropy regularisation coefficient (initial value when autotuned)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""
    hidden_size: int = 256
    """units per hidden layer of actor and critics"""
    depth: int = 2
    """hidden layers of actor and critics"""
    compile: bool = False
    """torch.compile the acting and update steps (same results; faster on a GPU once compiled)"""
    cudagraphs: bool = False
    """replay the compiled update steps as CUDA graphs (GPU only; implies --compile)"""

    # unsupervised pre-exploration (PEBBLE)
    unsupervised_exploration: bool = True
    """maximise k-NN state entropy for `unsupervised_steps` steps before the first feedback session"""
    unsupervised_steps: int = 9000
    """steps of pre-exploration after `learning_starts`"""
    entropy_k: int = 5
    """k of the k-nearest-neighbour state entropy estimate"""
    exploration_load: str | None = None
    """skip pre-exploration and reuse the one saved in this run folder (<dir>/exploration.pt)"""

    # reward model
    reward_ensemble_size: int = 3
    """members of the reward-model ensemble"""
    reward_hidden_size: int = 128
    """units per hidden layer of each reward network (128 ranks held-out HalfCheetah pairs as well as 256 does, in
    less than half the training time)"""
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
    reward_warm_start: bool = False
    """RIME's warm start: during pre-exploration, one reward-model step per env step fits r(s, a) to the state-entropy
    reward the critics learn from (standardised, divided by 3, clipped into [-1, 1]); the critics then keep what they
    learned instead of being reset at the first session (PEBBLE only: PPO resets nothing)"""

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
    eval_frequency: int = 10_000
    """evaluate the deterministic policy on the TRUE reward every this many steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    early_stop_return: float | None = None
    """stop when an evaluation's mean return reaches this"""
    early_stop_patience: int = 0
    """stop after this many evaluations without a new best return (0: never)"""
    log_frequency: int = 1000
    """log losses and SPS every this many steps"""
    correlation_window: int = 10_000
    """the most recent transitions on which learned and true rewards are correlated"""


def validate(args: Args) -> None:
    """Reject impossible settings with a one-line explanation, before anything is created."""

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in [
        "total_timesteps",
        "buffer_size",
        "batch_size",
        "policy_frequency",
        "target_network_frequency",
        "hidden_size",
        "depth",
        "entropy_k",
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
        "log_frequency",
        "correlation_window",
        "surf_mu",
        "rime_decay_epochs",
    ]:
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag(name)} must be > 0, got {getattr(args, name)}")
    for name in [
        "learning_starts",
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
    if args.reward_warm_start and not args.unsupervised_exploration:
        raise UsageError("--reward-warm-start fits the reward model during pre-exploration: it needs pre-exploration")
    if not 0 < args.tau <= 1 or not 0 <= args.gamma <= 1:
        raise UsageError(f"--tau must be in (0, 1] and --gamma in [0, 1], got tau={args.tau}, gamma={args.gamma}")
    exploration_end = args.learning_starts + (args.unsupervised_steps if args.unsupervised_exploration else 0)
    if exploration_end >= args.total_timesteps:
        raise UsageError(
            f"random steps + pre-exploration ({exploration_end}) leave no training steps out of "
            f"--total-timesteps ({args.total_timesteps})"
        )
    if exploration_end < args.segment_length * 2:
        raise UsageError(
            f"the first feedback session at step {exploration_end} needs at least two segments of "
            f"--segment-length {args.segment_length} in the buffer"
        )


# ======================================================================================================= replay buffer
class ReplayBuffer:
    """Transitions in preallocated NumPy arrays (capacity capped at the run's step budget).

    Besides what SAC needs it keeps, per transition: the true reward (logging, simulated teacher, never the agent),
    the teacher's reward (the user reward when one is given, else the true reward), the learned reward and the
    ensemble's std (written by `relabel`: for the whole buffer after each reward update, and for the `fresh` rows
    added since as soon as a sampled batch includes one), whether the episode ended there, and the physics state of
    `obs` (so clips can be rendered later). Adding a step touches one row only.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, physics_dim: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.true_rewards = np.zeros(capacity, np.float32)
        self.teacher_rewards = np.zeros(capacity, np.float32)
        self.learned_rewards = np.zeros(capacity, np.float32)
        self.reward_std = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)  # terminated only: a time-limit end still bootstraps
        self.episode_ends = np.zeros(capacity, bool)  # terminated or truncated: segments stop here
        self.physics = np.zeros((capacity, physics_dim), np.float64)
        self.pos, self.size = 0, 0
        self.fresh = 0  # rows added since the last relabel: their learned reward is not written yet

    def add(self, obs, next_obs, action, true_reward, teacher_reward, terminated, episode_end, physics) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i], self.actions[i] = obs, next_obs, action
        self.true_rewards[i], self.teacher_rewards[i] = true_reward, teacher_reward
        self.learned_rewards[i], self.reward_std[i] = 0.0, 0.0
        self.dones[i], self.episode_ends[i] = terminated, episode_end
        if physics is not None:
            self.physics[i] = physics
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.fresh = min(self.fresh + 1, self.capacity)

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, batch_size)

    def has_fresh(self, idx: np.ndarray) -> bool:
        """Whether any of the rows `idx` was added since the last relabel (the newest `fresh` rows)."""
        return self.fresh > 0 and bool((((self.pos - 1 - idx) % self.capacity) < self.fresh).any())

    def tensors(self, idx: np.ndarray, *columns: str) -> list[torch.Tensor]:
        return [torch.from_numpy(getattr(self, c)[idx]).to(self.device, non_blocking=True) for c in columns]

    def ordered(self, j: np.ndarray) -> np.ndarray:
        """Physical rows of logical positions `j` (0 = oldest transition still stored)."""
        oldest = self.pos if self.size == self.capacity else 0
        return (oldest + j) % self.capacity

    def sample_segments(self, n: int, seg_len: int, rng: np.random.Generator, recent: int = 0) -> dict[str, np.ndarray]:
        """`n` segments of `seg_len` consecutive steps, from the last `recent` transitions stored (0: from all). A
        segment that reaches the end of its episode is masked from there on (`mask` 0): masked steps count as zero
        reward for both teacher and reward model."""
        first = max(self.size - max(recent, seg_len), 0) if recent else 0
        starts = rng.integers(first, self.size - seg_len + 1, n)
        rows = self.ordered(starts[:, None] + np.arange(seg_len))  # (n, seg_len)
        ends = self.episode_ends[rows]
        mask = (np.cumsum(ends, axis=1) - ends) == 0  # keep steps up to and including the first episode end
        return {
            "obs": self.obs[rows],
            "actions": self.actions[rows],
            "mask": mask.astype(np.float32),
            "teacher_rewards": self.teacher_rewards[rows] * mask,
            "true_rewards": self.true_rewards[rows] * mask,
            "physics": self.physics[rows],
            "rows": rows,
        }

    @torch.no_grad()
    def relabel(self, ensemble: RewardEnsemble, only_fresh: bool = False, chunk: int = 16_384) -> None:
        """Write the learned reward (ensemble mean) and its std, in large batches: for every stored transition, or
        with `only_fresh` for those added since the last call. Only filled rows are touched."""
        if only_fresh:
            rows = (self.pos - self.fresh + np.arange(self.fresh)) % self.capacity
            batches = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
        else:
            batches = [slice(i, min(i + chunk, self.size)) for i in range(0, self.size, chunk)]
        for rows in batches:
            x = torch.from_numpy(np.concatenate([self.obs[rows], self.actions[rows]], 1)).to(self.device)
            mean, std = ensemble.predict(x)
            self.learned_rewards[rows] = mean.cpu().numpy()
            self.reward_std[rows] = std.cpu().numpy()
        self.fresh = 0

    def state_dict(self) -> dict:
        n = self.size
        columns = [
            "obs",
            "next_obs",
            "actions",
            "true_rewards",
            "teacher_rewards",
            "learned_rewards",
            "reward_std",
            "dones",
            "episode_ends",
            "physics",
        ]
        return {"pos": self.pos, "size": n, "fresh": self.fresh, **{c: getattr(self, c)[:n].copy() for c in columns}}

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        if n > self.capacity:
            raise UsageError(f"a saved buffer of {n} transitions does not fit a capacity of {self.capacity}")
        for key, value in state.items():
            if key not in ("pos", "size", "fresh"):
                getattr(self, key)[:n] = value
        self.pos, self.size, self.fresh = state["pos"] % self.capacity, n, state.get("fresh", 0)


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


def warm_start_reward_model(
    ensemble: RewardEnsemble,
    optimizer: optim.Optimizer,
    x: torch.Tensor,
    entropy: torch.Tensor,
    stats: RunningMeanStd,
) -> torch.Tensor:
    """RIME's warm start (`--reward-warm-start`): one gradient step of every member's r(x) towards the state-entropy
    reward of the same transitions, standardised by its running mean and std, divided by 3 and clipped into the
    model's [-1, 1]. The first session then starts from a reward the critics already agree with. Returns the loss."""
    target = ((entropy.double() - stats.mean) / stats.var.sqrt().clamp_min(1e-8) / 3).clamp(-1, 1).float()
    loss = F.mse_loss(ensemble(x), target.expand(ensemble.members, -1), reduction="none").mean(1).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach() / ensemble.members


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
    session: int = 0  # feedback sessions done
    labels_used: int = 0  # labels the teacher gave (a skipped pair costs none: a later session asks again)
    pairs_skipped: int = 0  # pairs the teacher skipped
    episodes: int = 0
    evals: EvalHistory = field(default_factory=EvalHistory)
    phase_time: dict[str, float] = field(default_factory=dict)  # seconds per phase, logged as time/<phase>
    recent_episodes: list[tuple[float, int]] = field(default_factory=list)  # (teacher return, length) of the last 20
    pending_queries: dict | None = None  # a session's queries while a person answers them
    outstanding: dict[str, dict] = field(default_factory=dict)  # asynchronous feedback: queries asked, by key
    arrived: list[dict] = field(default_factory=list)  # asynchronous feedback: answered, not yet learned from
    batches_asked: int = 0  # asynchronous feedback: batches of queries put to the teacher (<run>/asked/)
    clips: dict[str, dict] = field(default_factory=dict)  # ranking: segments of answered queries, by "<key>:<side>"
    implied_pairs: int = 0  # ranking: pairs learned from that the ordering implied beyond those asked
    critic_reset_done: bool = False
    mid_episode: bool = True  # periodic checkpoints wait for an episode's end

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
    rb: ReplayBuffer, ensemble: RewardEnsemble, args: Args, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Relabel the whole replay buffer with the new reward model; return the learned and true rewards of the most
    recent `--correlation-window` transitions."""
    rb.relabel(ensemble)
    window = rb.ordered(np.arange(max(rb.size - args.correlation_window, 0), rb.size))
    return rb.learned_rewards[window], rb.true_rewards[window]


def reset_critics(qf: TwinQNetwork, qf_target: TwinQNetwork, fresh: TwinQNetwork, q_optimizer: optim.Optimizer) -> None:
    """PEBBLE: after pre-exploration the critics have learned the exploration reward; start them afresh (from `fresh`,
    newly initialised critics, copied in place so that compiled steps keep their parameters)."""
    qf.load_state_dict(fresh.state_dict())
    qf_target.load_state_dict(fresh.state_dict())
    q_optimizer.state.clear()


def sac_update_steps(actor, qf, qf_target, optimizers, log_alpha, alpha, target_entropy, args):
    """SAC's per-step functions, to run plain or compiled (`--compile`): a gradient step of both critics, one of the
    actor (and of the entropy coefficient when autotuned), and acting. `alpha` is read by reference: the loop
    updates it in place."""
    q_optimizer, actor_optimizer, a_optimizer = optimizers

    def update_critics(b_obs, b_next_obs, b_actions, b_rewards, b_dones):
        """One gradient step of both critics on a batch; returns (loss, first critic's mean Q) for logging."""
        with torch.no_grad():
            next_actions, next_log_pi, _ = actor.get_action(b_next_obs)
            min_q_next = qf_target(b_next_obs, next_actions).min(0).values - alpha * next_log_pi.view(-1)
            next_q_value = b_rewards + (1 - b_dones) * args.gamma * min_q_next
        q_values = qf(b_obs, b_actions)  # (2, batch)
        qf_loss = F.mse_loss(q_values, next_q_value.expand_as(q_values), reduction="none").mean(1).sum()
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()
        return qf_loss.detach(), q_values[0].detach().mean()

    def update_actor(b_obs):
        """One gradient step of the actor (and of the entropy coefficient when autotuned); returns the actor loss."""
        pi, log_pi, _ = actor.get_action(b_obs)
        actor_loss = (alpha * log_pi.view(-1) - qf(b_obs, pi).min(0).values).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()
        if args.autotune:
            alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
            a_optimizer.zero_grad()
            alpha_loss.backward()
            a_optimizer.step()
        return actor_loss.detach()

    def act(o: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return actor.get_action(o)[0]

    return update_critics, update_actor, act


def load_exploration(folder: str, env_id: str, obs_dim: int, exploration_end: int, warm_start: bool) -> dict:
    """The pre-exploration saved in `folder`/exploration.pt, checked against this run (--exploration-load)."""
    path = os.path.join(folder, "exploration.pt")
    if not os.path.isfile(path):
        raise UsageError(f"--exploration-load {folder!r}: no exploration.pt in that folder")
    saved = load_checkpoint(path)
    if saved["args"]["env_id"] != env_id or saved["replay_buffer"]["obs"].shape[1] != obs_dim:
        raise UsageError(
            f"--exploration-load: {path} was made on {saved['args']['env_id']!r}, this run is on {env_id!r}"
        )
    if saved["state"]["global_step"] != exploration_end:
        raise UsageError(
            f"--exploration-load: {path} explored for {saved['state']['global_step']} steps, this run "
            f"expects {exploration_end} (--learning-starts + --unsupervised-steps)"
        )
    if len(saved["preferences"]["labels"]):
        raise UsageError(
            f"--exploration-load: {path} holds {len(saved['preferences']['labels'])} labels already (made with "
            "--labels-from, or saved after its first feedback session by an older version); reuse one made without"
        )
    if saved["args"].get("reward_warm_start", False) != warm_start:
        raise UsageError(
            f"--exploration-load: {path} was made {'with' if not warm_start else 'without'} --reward-warm-start, "
            f"this run is {'with' if warm_start else 'without'} it"
        )
    print(f"loaded pre-exploration from {path}: {saved['replay_buffer']['size']} transitions", flush=True)
    return saved


# ============================================================================================================== main
def main(args: Args) -> dict:
    args, checkpoint = resume_args(args)  # with --resume, the run's saved flags
    validate(args)
    setup_headless_rendering()
    check_env_id(args.env_id)
    args.run_name = run_name = args.run_name or default_run_name(args.env_id, args.exp_name, args.seed)
    teacher_reward = load_reward_function(args.teacher_reward) if args.teacher_reward else None
    env = make_env(args.env_id, args.seed, teacher_reward=teacher_reward)
    require_continuous_actions(env.action_space, args.env_id, "sac_rlhf.py")
    device = setup_torch(args)  # seeds, threads, device
    tracker = Tracker(run_name, args, args.runs_dir, args.track, args.wandb_project_name, args.wandb_entity)
    run_dir = tracker.run_dir
    evaluator = Evaluator(
        args.env_id, args.seed + 10_000, args.eval_episodes, args.capture_video, f"{run_dir}/videos", teacher_reward
    )
    rng = np.random.default_rng(args.seed)
    teacher = make_teacher(args, run_name, run_dir)
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    obs, info = env.reset(seed=args.seed)
    physics_dim = len(info["physics_state"]) if "physics_state" in info else 1

    # ---------------------------------------------------------------- SAC networks (as in sac.py)
    actor = SACActor(obs_dim, env.action_space.low, env.action_space.high, args.hidden_size, args.depth).to(device)
    critic = lambda: SoftQNetwork(obs_dim, action_dim, args.hidden_size, args.depth)
    qf = TwinQNetwork(critic(), critic()).to(device)  # the two critics, batched
    qf_target = TwinQNetwork(critic(), critic()).to(device)
    qf_target.load_state_dict(qf.state_dict())
    fused = not (args.compile or args.cudagraphs)  # compiled steps fuse the optimizers themselves
    q_optimizer = optim.Adam(qf.parameters(), lr=args.q_lr, fused=fused)
    actor_optimizer = optim.Adam(actor.parameters(), lr=args.policy_lr, fused=fused)
    target_entropy = -float(action_dim)
    log_alpha = torch.tensor([np.log(args.alpha)], dtype=torch.float32, device=device, requires_grad=True)
    a_optimizer = optim.Adam([log_alpha], lr=args.q_lr)

    # ---------------------------------------------------------------- reward model, buffers, schedule
    ensemble = RewardEnsemble(
        obs_dim + action_dim, args.reward_ensemble_size, args.reward_hidden_size, args.reward_depth,
        args.reward_dropout, args.reward_input_norm,
    ).to(device)  # fmt: skip
    reward_optimizer = optim.Adam(ensemble.parameters(), lr=args.reward_lr, weight_decay=args.reward_weight_decay)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, action_dim, physics_dim, device)
    given = (
        given_preferences(args.labels_from, args.env_id, args.segment_length, obs_dim + action_dim)
        if args.labels_from
        else None
    )
    prefs = PreferenceBuffer(
        max(args.total_labels, 1) + (len(given) if given else 0),
        args.segment_length,
        obs_dim + action_dim,
        args.reward_val_fraction,
    )
    physics_size = physics_dim if "physics_state" in info else 0
    dataset_meta = dataset_metadata(args, env.observation_space, env.action_space, physics_size, "sac_rlhf")
    dataset = PreferenceDataset(run_dir, dataset_meta, teacher)  # <run>/preferences/, grown at every update
    entropy_stats = RunningMeanStd(()).to(device)
    # states seen before the end of pre-exploration, on the device, for the state-entropy reward (new rows are
    # copied in as they arrive; nothing is rebuilt per step)
    exploration_end = args.learning_starts + (args.unsupervised_steps if args.unsupervised_exploration else 0)
    explore_obs = torch.zeros((min(exploration_end, rb.capacity) if args.unsupervised_exploration else 0, obs_dim))
    explore_obs, explored, exploration_sps = explore_obs.to(device), 0, math.nan
    sessions = run_label_schedule(args, exploration_end)
    plot_label_schedule(sessions, args.total_timesteps, os.path.join(run_dir, "label_schedule.png"))
    teacher.plan(sessions)  # a person on the page is told how many sessions come, and when

    # ---------------------------------------------------------------- checkpoints: what they hold, resume
    progress = Progress()
    parts = {"actor": actor, "qf": qf, "qf_target": qf_target}
    parts |= {"q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer, "a_optimizer": a_optimizer}
    parts |= {"ensemble": ensemble, "reward_optimizer": reward_optimizer, "replay_buffer": rb, "preferences": prefs}
    parts |= {"entropy_stats": entropy_stats, "teacher": teacher, "evaluator": evaluator, "state": progress}
    env_rng_before_reset = generator_state(env.unwrapped.np_random)

    def snapshot() -> dict:
        rngs = rng_states(device, numpy=rng, env=env_rng_before_reset, action_space=env.action_space.np_random)
        states = {name: part.state_dict() for name, part in parts.items()}
        return {"args": asdict(args), "log_alpha": log_alpha.detach().cpu(), "rng": rngs, **states}

    if checkpoint is not None or args.exploration_load is not None:
        saved = checkpoint or load_exploration(
            args.exploration_load, args.env_id, obs_dim, exploration_end, args.reward_warm_start
        )
        TwinQNetwork.upgrade_checkpoint(saved)  # saved with two separate critics
        for name, part in parts.items():  # a saved pre-exploration keeps this run's teacher, evaluator and progress
            if checkpoint is not None or name not in ("teacher", "evaluator", "state"):
                part.load_state_dict(saved[name])
        log_alpha.data.copy_(saved["log_alpha"])
        progress.global_step = saved["state"]["global_step"]
    if checkpoint is not None:
        restore_rng_states(
            checkpoint["rng"], device, numpy=rng, env=env.unwrapped.np_random, action_space=env.action_space.np_random
        )
        # periodic checkpoints are taken at episode ends with the env's RNG from before its reset, so this reset
        # starts the same episode the uninterrupted run started (an interrupted one starts a fresh episode)
        obs, info = env.reset()
        print(f"resumed {run_dir} at step {progress.global_step} with {prefs.size} labels", flush=True)
        ask_again_after_resume(teacher, progress, args, run_dir)
        dataset.resume(progress.session)
    elif args.exploration_load is not None:
        obs, info = env.reset(seed=args.seed + 1)
    alpha = log_alpha.exp().detach() if args.autotune else torch.tensor([args.alpha], device=device)
    optimizers = (q_optimizer, actor_optimizer, a_optimizer)
    steps = sac_update_steps(actor, qf, qf_target, optimizers, log_alpha, alpha, target_entropy, args)
    update_critics, update_actor, act = compile_steps(args, device, *steps)
    if given is not None and checkpoint is None:  # --labels-from: what people answered before is not wasted
        start_from_labels(given, ensemble, reward_optimizer, prefs, dataset, args, rng, device)
    checkpoints = Checkpointer(run_dir, args.checkpoint_frequency, snapshot, progress)
    checkpoints.save_on_interrupt(tracker.close)

    def policy(o: np.ndarray) -> np.ndarray:  # deterministic, for evaluation
        with torch.no_grad():
            return actor.get_action(torch.as_tensor(o, dtype=torch.float32, device=device)[None])[2][0].cpu().numpy()

    # ---------------------------------------------------------------- the loop
    clock = RunClock(progress.phase_time, progress.global_step)
    stop_reason = None
    while progress.global_step < args.total_timesteps:
        progress.global_step += 1
        global_step = progress.global_step
        exploring = args.unsupervised_exploration and args.learning_starts < global_step <= exploration_end
        if exploring or global_step > exploration_end:
            clock.begin("exploration" if exploring else "learning", global_step - 1)

        # act: random at first, then the stochastic policy
        if global_step <= args.learning_starts:
            action = env.action_space.sample()
        else:
            action = act(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])[0].cpu().numpy()
        physics = info.get("physics_state")
        next_obs, reward, terminated, truncated, info = env.step(action)
        teacher_r = info.get("teacher_reward", reward)
        rb.add(obs, next_obs, action, reward, teacher_r, terminated, terminated or truncated, physics)
        progress.mid_episode = not (terminated or truncated)
        obs = next_obs
        if terminated or truncated:
            episode, length = info["episode"], int(info["episode"]["l"])
            rows = rb.ordered(np.arange(rb.size - min(length, rb.size), rb.size))  # the episode's steps
            teacher_return = float(rb.teacher_rewards[rows].sum())
            progress.recent_episodes = (progress.recent_episodes + [(teacher_return, length)])[-20:]
            tracker.scalars({"charts/episodic_return": episode["r"], "charts/episodic_length": length}, global_step)
            if teacher_reward is not None:
                tracker.scalar("charts/episodic_teacher_return", teacher_return, global_step)
            progress.episodes += 1
            # the env's RNG as it is before this reset: a run resumed from a checkpoint taken now replays it
            env_rng_before_reset = generator_state(env.unwrapped.np_random)
            obs, info = env.reset()

        # feedback session: ask the teacher, then learn from the labels; the second half's results land together
        # (Ctrl-C or SIGTERM waits the few seconds it takes). With --feedback-async, after the first session, answers
        # are exchanged between steps and learned from in batches.
        session_due = progress.session < len(sessions) and global_step >= sessions[progress.session][0]
        if session_due and not (args.feedback_async == "on" and progress.session > 0):
            if exploring and progress.session == 0:  # before any label: --exploration-load reuses this in other runs
                save_checkpoint(snapshot(), os.path.join(run_dir, "exploration.pt"))
            n_labels = sum(n for _, n in sessions[: progress.session + 1]) - progress.labels_used  # skips: again
            q = ask_teacher(n_labels, rb, ensemble, prefs, teacher, progress, args, rng, device, checkpoints)
            with interrupts_held():
                learn_from_labels(
                    q, rb, ensemble, reward_optimizer, prefs, dataset, teacher, progress, tracker, args, rng, device
                )
                if not progress.critic_reset_done and args.unsupervised_exploration:
                    if args.reward_warm_start:  # RIME: the critics go on from the reward the model was fitted to
                        print("critics kept: the reward model was warm-started on the exploration reward", flush=True)
                    else:
                        reset_critics(qf, qf_target, TwinQNetwork(critic(), critic()).to(device), q_optimizer)
                progress.critic_reset_done = True
        elif args.feedback_async == "on" and progress.session > 0 and global_step % args.feedback_poll_frequency == 0:
            q = exchange_with_teacher(rb, ensemble, prefs, teacher, progress, sessions, args, rng, device, run_dir)
            if q is not None:
                with interrupts_held():
                    learn_from_labels(
                        q, rb, ensemble, reward_optimizer, prefs, dataset, teacher, progress, tracker, args, rng, device
                    )

        # learn: SAC on the state-entropy reward while pre-exploring, then on the learned reward
        if global_step > args.learning_starts:
            warm_loss = None  # (--reward-warm-start, before the first session)
            with timed(progress.phase_time, "agent_update" if not exploring else "exploration_update"):
                idx = rb.sample_indices(args.batch_size, rng)
                b_obs, b_next_obs, b_actions, b_dones = rb.tensors(idx, "obs", "next_obs", "actions", "dones")
                if exploring:  # PEBBLE: reward = k-NN distance of the next state, normalised by its running std
                    explore_obs[explored : rb.size] = torch.as_tensor(rb.obs[explored : rb.size], device=device)
                    explored = rb.size
                    b_rewards = knn_state_entropy(b_next_obs, explore_obs[: rb.size], args.entropy_k)
                    entropy_stats.update(b_rewards.double())
                    if args.reward_warm_start and progress.session == 0:  # RIME: the reward model learns it too
                        x = torch.cat([b_obs, b_actions], 1)
                        warm_loss = warm_start_reward_model(ensemble, reward_optimizer, x, b_rewards, entropy_stats)
                    b_rewards = b_rewards / entropy_stats.var.float().sqrt().clamp_min(1e-8)
                else:
                    if rb.has_fresh(idx):  # steps taken since the last reward update get the model's reward
                        rb.relabel(ensemble, only_fresh=True)  # (all of them, once one is sampled)
                    b_rewards, b_std = rb.tensors(idx, "learned_rewards", "reward_std")
                    if args.rune:
                        b_rewards = b_rewards + rune_bonus(b_std, args.rune_beta, args.rune_decay, global_step)
                qf_loss, qf1_value = update_critics(b_obs, b_next_obs, b_actions, b_rewards, b_dones)
                if global_step % args.policy_frequency == 0:
                    for _ in range(args.policy_frequency):
                        actor_loss = update_actor(b_obs)
                        if args.autotune:
                            alpha.copy_(log_alpha.detach().exp())  # in place: the compiled steps hold this tensor
                if global_step % args.target_network_frequency == 0:
                    polyak_update(qf_target, qf, args.tau)

            if global_step % args.log_frequency == 0:
                actor_loss = actor_loss if global_step % args.policy_frequency == 0 else torch.tensor(math.nan)
                logged = {"losses/qf_loss": qf_loss.item() / 2.0, "losses/actor_loss": actor_loss.item()}
                logged |= {"losses/qf1_values": qf1_value.item(), "losses/alpha": alpha.item()}
                if warm_loss is not None:
                    logged["reward/warm_start_loss"] = warm_loss.item()
                tracker.scalars(logged | {"charts/agent_reward_mean": b_rewards.mean().item()}, global_step)

        if exploring and global_step == exploration_end:
            exploration_sps = clock.rate("exploration", global_step)
        if global_step % args.log_frequency == 0:
            tracker.steps_per_second(global_step)
            tracker.scalars({f"time/{k}": v for k, v in progress.phase_time.items()}, global_step)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            with timed(progress.phase_time, "evaluation"):
                result = evaluator(policy)
            tracker.scalars({**result.as_scalars(), "feedback/labels_used_at_eval": progress.labels_used}, global_step)
            progress.evals.add(global_step, result)
            print(f"step={global_step} {result} labels={progress.labels_used}", flush=True)
            stop_reason = progress.evals.stop_reason(args.early_stop_return, args.early_stop_patience)
            if stop_reason:
                break
        if checkpoints.due() and not progress.mid_episode:
            checkpoints.save("periodic")

    if args.feedback_async == "on" and progress.session > 0:  # the answers that came in since the last update count
        q = exchange_with_teacher(rb, ensemble, prefs, teacher, progress, sessions, args, rng, device, run_dir, True)
        if q is not None:
            learn_from_labels(
                q, rb, ensemble, reward_optimizer, prefs, dataset, teacher, progress, tracker, args, rng, device
            )
    summary = {"algorithm": "sac_rlhf", "env_id": args.env_id, "seed": args.seed, **clock.summary(progress.global_step)}
    checkpoints.save("end")
    export_reward_model(ensemble, run_dir, args.env_id, obs_dim, action_dim)  # <run>/reward_model.pt2 and .json
    summary |= {"total_timesteps": progress.global_step, "stop_reason": stop_reason or "budget"}
    summary |= {"labels_used": progress.labels_used, "labels_stored": prefs.size, "sessions": progress.session}
    summary |= {"pairs_skipped": progress.pairs_skipped}  # (asked again later: they cost no label)
    if teacher.ranks:  # ranking: comparisons made and the pairs they implied beyond those asked
        summary |= {"comparisons": teacher.comparisons, "implied_pairs": progress.implied_pairs}
    summary |= progress.evals.summary()
    summary = write_summary(run_dir, summary | {"buffer_size": rb.size, "exploration_sps": exploration_sps})
    evaluator.close()
    env.close()
    tracker.close()
    return summary


if __name__ == "__main__":
    run_cli(Args, main)
