"""SAC on the environment's true reward: the oracle baseline for preference-based runs (rl-teacher's `-p rl`).

CleanRL's `sac_continuous_action.py`, with prefrl's env factory, network size flags, periodic deterministic
evaluation and logging, so that `sac_rlhf.py` runs can be normalised by this one at equal env steps.

    python framework/sac.py --env-id Hopper-v5 --total-timesteps 100000
    python framework/sac.py --resume runs/Hopper-v5__sac__1__1790000000      # continue a stopped run
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.optim as optim

from framework.checkpoint import (
    Checkpointer,
    OracleProgress,
    generator_state,
    restore_rng_states,
    resume_args,
    rng_states,
    save_checkpoint,
)
from framework.envs import make_env, require_continuous_actions
from framework.evaluation import Evaluator
from framework.networks import SACActor, SoftQNetwork, TwinQNetwork, polyak_update
from framework.reward_model import LearnedReward
from framework.runtime import (
    RunArgs,
    UsageError,
    compile_steps,
    default_run_name,
    run_cli,
    setup_headless_rendering,
    setup_torch,
)
from framework.tracking import RunClock, Tracker, timed, write_summary


@dataclass
class Args(RunArgs):
    exp_name: str = "sac"
    """the name of this experiment (part of the run name)"""
    save_model: bool = False
    """save the networks to <run>/sac.pt at the end"""
    resume: str | None = None
    """continue the run in this folder from its last checkpoint (its saved flags are used)"""
    checkpoint_frequency: int = 10_000
    """write <run>/checkpoint.pt at the first episode end after every this many steps (0: only at the end)"""

    env_id: str = "Hopper-v5"
    """the Gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """total environment steps"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (never larger than total_timesteps)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target network smoothing coefficient"""
    batch_size: int = 256
    """batch size of replay samples"""
    learning_starts: int = 5000
    """steps of random actions before learning starts"""
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
    eval_frequency: int = 10_000
    """evaluate the deterministic policy every this many steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    log_frequency: int = 1000
    """log losses and SPS every this many steps"""
    reward_model: str | None = None
    """train on a saved learned reward instead of the env's (a preference run's folder, or its reward_model.pt2);
    evaluation stays on the true reward"""
    compile: bool = False
    """torch.compile the acting and update steps (same results; faster on a GPU once compiled)"""
    cudagraphs: bool = False
    """replay the compiled update steps as CUDA graphs (GPU only; implies --compile)"""


def validate(args: Args) -> None:
    """Reject impossible settings with a one-line explanation."""
    positive = [
        "total_timesteps",
        "buffer_size",
        "batch_size",
        "policy_frequency",
        "target_network_frequency",
        "hidden_size",
        "eval_frequency",
        "eval_episodes",
        "log_frequency",
    ]
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ["learning_starts", "checkpoint_frequency"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.depth < 1:
        raise UsageError(f"--depth must be >= 1, got {args.depth}")
    if not 0 < args.tau <= 1 or not 0 <= args.gamma <= 1:
        raise UsageError(f"--tau must be in (0, 1] and --gamma in [0, 1], got tau={args.tau}, gamma={args.gamma}")
    if args.policy_lr <= 0 or args.q_lr <= 0:
        raise UsageError(f"learning rates must be > 0, got policy-lr={args.policy_lr}, q-lr={args.q_lr}")


class ReplayBuffer:
    """Transitions in preallocated NumPy arrays; capacity is capped at the run's step budget."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)  # terminated only: a time-limit end still bootstraps
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device

    def add(self, obs, next_obs, action, reward, terminated) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i], self.actions[i] = obs, next_obs, action
        self.rewards[i], self.dones[i] = reward, terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, batch_size)
        arrays = (self.obs[idx], self.next_obs[idx], self.actions[idx], self.rewards[idx], self.dones[idx])
        return tuple(torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays)

    def state_dict(self) -> dict:
        n = self.size
        columns = {k: getattr(self, k)[:n].copy() for k in ("obs", "next_obs", "actions", "rewards", "dones")}
        return {**columns, "pos": self.pos, "size": n}

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        for key in ("obs", "next_obs", "actions", "rewards", "dones"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.size = state["pos"], n


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


def main(args: Args) -> dict:
    args, checkpoint = resume_args(args)  # with --resume, the run's saved flags
    validate(args)
    setup_headless_rendering()
    args.run_name = run_name = args.run_name or default_run_name(args.env_id, args.exp_name, args.seed)
    env = make_env(args.env_id, args.seed)
    if args.reward_model is not None:  # the agent learns from what a reward model learned (framework/reward_model.py)
        env = LearnedReward(env, args.reward_model)
    require_continuous_actions(env.action_space, args.env_id, "sac.py")
    device = setup_torch(args)  # seeds, threads, device
    tracker = Tracker(run_name, args, args.runs_dir, args.track, args.wandb_project_name, args.wandb_entity)
    run_dir = tracker.run_dir
    evaluator = Evaluator(
        args.env_id, args.seed + 10_000, args.eval_episodes, args.capture_video, os.path.join(run_dir, "videos")
    )
    rng = np.random.default_rng(args.seed)

    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
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
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, action_dim, device)

    # checkpoints: what they hold, resume
    progress = OracleProgress()
    parts = {"actor": actor, "qf": qf, "qf_target": qf_target}
    parts |= {"q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer, "a_optimizer": a_optimizer}
    parts |= {"replay_buffer": rb, "evaluator": evaluator, "state": progress}
    obs, _ = env.reset(seed=args.seed)
    env_rng_before_reset = generator_state(env.unwrapped.np_random)

    def snapshot() -> dict:
        rngs = rng_states(device, numpy=rng, env=env_rng_before_reset, action_space=env.action_space.np_random)
        states = {name: part.state_dict() for name, part in parts.items()}
        return {"args": asdict(args), "log_alpha": log_alpha.detach().cpu(), "rng": rngs, **states}

    if checkpoint is not None:
        TwinQNetwork.upgrade_checkpoint(checkpoint)  # saved with two separate critics
        for name, part in parts.items():
            part.load_state_dict(checkpoint[name])
        log_alpha.data.copy_(checkpoint["log_alpha"])
        restore_rng_states(
            checkpoint["rng"], device, numpy=rng, env=env.unwrapped.np_random, action_space=env.action_space.np_random
        )
        # periodic checkpoints are taken at episode ends with the env's RNG from before its reset, so this reset
        # starts the same episode the uninterrupted run started (an interrupted one starts a fresh episode)
        obs, _ = env.reset()
        print(f"resumed {run_dir} at step {progress.global_step}", flush=True)
    alpha = log_alpha.exp().detach() if args.autotune else torch.tensor([args.alpha], device=device)

    optimizers = (q_optimizer, actor_optimizer, a_optimizer)
    steps = sac_update_steps(actor, qf, qf_target, optimizers, log_alpha, alpha, target_entropy, args)
    update_critics, update_actor, act = compile_steps(args, device, *steps)
    checkpoints = Checkpointer(run_dir, args.checkpoint_frequency, snapshot, progress)
    checkpoints.save_on_interrupt(tracker.close)

    def policy(o: np.ndarray) -> np.ndarray:  # deterministic, for evaluation
        with torch.no_grad():
            return actor.get_action(torch.as_tensor(o, dtype=torch.float32, device=device)[None])[2][0].cpu().numpy()

    clock = RunClock(progress.phase_time, progress.global_step)
    while progress.global_step < args.total_timesteps:
        progress.global_step += 1
        global_step = progress.global_step
        # act: random before learning starts, then the stochastic policy
        if global_step <= args.learning_starts:
            action = env.action_space.sample()
        else:
            action = act(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])[0].cpu().numpy()

        next_obs, reward, terminated, truncated, info = env.step(action)
        rb.add(obs, next_obs, action, reward, terminated)
        progress.mid_episode = not (terminated or truncated)
        obs = next_obs
        if terminated or truncated:
            tracker.scalars(
                {"charts/episodic_return": info["episode"]["r"], "charts/episodic_length": info["episode"]["l"]},
                global_step,
            )
            # the env's RNG as it is before this reset: a run resumed from a checkpoint taken now replays it
            env_rng_before_reset = generator_state(env.unwrapped.np_random)
            obs, _ = env.reset()

        # learn
        if global_step > args.learning_starts:
            clock.begin("learning", global_step - 1)
            b_obs, b_next_obs, b_actions, b_rewards, b_dones = rb.sample(args.batch_size, rng)
            qf_loss, qf1_value = update_critics(b_obs, b_next_obs, b_actions, b_rewards, b_dones)
            if global_step % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    actor_loss = update_actor(b_obs)
                    if args.autotune:
                        alpha.copy_(log_alpha.detach().exp())  # in place: the compiled steps hold this tensor

            if global_step % args.target_network_frequency == 0:
                polyak_update(qf_target, qf, args.tau)

            if global_step % args.log_frequency == 0:
                tracker.scalars(
                    {
                        "losses/qf1_values": qf1_value.item(),
                        "losses/qf_loss": qf_loss.item() / 2.0,
                        "losses/actor_loss": actor_loss.item(),
                        "losses/alpha": alpha.item(),
                    },
                    global_step,
                )
        if global_step % args.log_frequency == 0:
            tracker.steps_per_second(global_step)
        if global_step % args.eval_frequency == 0 or global_step == args.total_timesteps:
            with timed(progress.phase_time, "evaluation"):
                result = evaluator(policy)
            tracker.scalars(result.as_scalars(), global_step)
            progress.evals.add(global_step, result)
            print(f"step={global_step} {result}", flush=True)
        if checkpoints.due() and not progress.mid_episode:
            checkpoints.save("periodic")

    summary = {"algorithm": "sac", "env_id": args.env_id, "seed": args.seed, "total_timesteps": args.total_timesteps}
    summary |= {"stop_reason": "budget", "labels_used": 0, **progress.evals.summary()}
    summary |= clock.summary(args.total_timesteps)
    checkpoints.save("end")
    summary = write_summary(run_dir, summary)
    if args.save_model:
        save_checkpoint(
            {"actor": actor.state_dict(), "qf": qf.state_dict(), "args": asdict(args)},
            os.path.join(run_dir, "sac.pt"),
        )
    evaluator.close()
    env.close()
    tracker.close()
    return summary


if __name__ == "__main__":
    run_cli(Args, main)
