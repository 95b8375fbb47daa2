"""PPO on the environment's true reward: the on-policy oracle baseline for `pref_ppo.py`.

CleanRL's `ppo_continuous_action.py` with prefrl's env factory, network size flags and evaluation. Observation and
reward normalisers live beside the policy (saved with it, used by evaluation), and time-limit truncations bootstrap
from the value of the final observation. On Atari games (discrete actions, stacked 84x84 frames) the agent is
CleanRL's `ppo_atari.py` one, a Nature-DQN CNN with a categorical policy (`scripts/ppo_atari.sh` has its settings).

    python framework/ppo.py --env-id Hopper-v5 --total-timesteps 200000
    python framework/ppo.py --env-id ALE/Breakout-v5 --num-envs 8 --num-steps 128 --num-minibatches 4 \
        --update-epochs 4 --learning-rate 2.5e-4 --clip-coef 0.1 --ent-coef 0.01
    python framework/ppo.py --resume runs/Hopper-v5__ppo__1__1790000000      # continue a stopped run
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

from framework.checkpoint import (
    Checkpointer,
    OracleProgress,
    restore_rng_states,
    resume_args,
    rng_states,
    save_checkpoint,
)
from framework.envs import check_env_id, is_pixels, make_env
from framework.evaluation import Evaluator
from framework.networks import check_ppo_spaces, make_ppo_agent
from framework.normalization import ObservationNormalizer, RewardScaler
from framework.runtime import RunArgs, UsageError, default_run_name, run_cli, setup_headless_rendering, setup_torch
from framework.tracking import RunClock, Tracker, timed, write_summary


@dataclass
class Args(RunArgs):
    exp_name: str = "ppo"
    """the name of this experiment (part of the run name)"""
    save_model: bool = False
    """save the agent and its normalisers to <run>/ppo.pt at the end"""
    resume: str | None = None
    """continue the run in this folder from its last checkpoint (its saved flags are used)"""
    checkpoint_frequency: int = 10_000
    """write <run>/checkpoint.pt after the first rollout past every this many steps (0: only at the end)"""

    env_id: str = "Hopper-v5"
    """the Gymnasium environment id"""
    frame_stack: int = 4
    """Atari games: observe the last this many frames (0: single frames)"""
    total_timesteps: int = 1_000_000
    """total environment steps (over all parallel envs)"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
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
    """normalise vector observations with running statistics (frames are scaled to [0, 1] by the network)"""
    norm_reward: bool = True
    """scale rewards by the running std of the discounted return"""
    hidden_size: int = 64
    """units per hidden layer of actor and critic"""
    depth: int = 2
    """hidden layers of actor and critic"""
    eval_frequency: int = 50_000
    """evaluate the deterministic policy every this many steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""


def validate(args: Args) -> None:
    """Reject impossible settings with a one-line explanation."""
    for name in [
        "total_timesteps",
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "hidden_size",
        "eval_frequency",
        "eval_episodes",
    ]:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.depth < 1:
        raise UsageError(f"--depth must be >= 1, got {args.depth}")
    if args.checkpoint_frequency < 0:
        raise UsageError(f"--checkpoint-frequency must be >= 0, got {args.checkpoint_frequency}")
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        raise UsageError(
            f"num-envs x num-steps ({batch}) must be divisible by --num-minibatches ({args.num_minibatches})"
        )
    if args.total_timesteps < batch:
        raise UsageError(
            f"--total-timesteps ({args.total_timesteps}) is smaller than one rollout (num-envs x num-steps = {batch})"
        )


def main(args: Args) -> dict:
    args, checkpoint = resume_args(args)  # with --resume, the run's saved flags
    validate(args)
    setup_headless_rendering()
    check_env_id(args.env_id)
    args.run_name = run_name = args.run_name or default_run_name(args.env_id, args.exp_name, args.seed)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size

    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(args.env_id, args.seed + i, frame_stack=args.frame_stack) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    pixels = is_pixels(envs.single_observation_space)
    discrete = isinstance(envs.single_action_space, gym.spaces.Discrete)
    try:
        check_ppo_spaces(envs.single_observation_space, envs.single_action_space)
    except ValueError as err:
        raise UsageError(f"ppo.py cannot learn {args.env_id}: {err}") from None
    device = setup_torch(args)  # seeds, threads, device
    tracker = Tracker(run_name, args, args.runs_dir, args.track, args.wandb_project_name, args.wandb_entity)
    run_dir = tracker.run_dir
    evaluator = Evaluator(
        args.env_id,
        args.seed + 10_000,
        args.eval_episodes,
        args.capture_video,
        os.path.join(run_dir, "videos"),
        frame_stack=args.frame_stack,
    )

    obs_shape = envs.single_observation_space.shape
    agent = make_ppo_agent(envs.single_observation_space, envs.single_action_space, args.hidden_size, args.depth)
    agent = agent.to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_norm = ObservationNormalizer(obs_shape)
    reward_scaler = RewardScaler(args.num_envs, args.gamma)

    normalize_obs = args.norm_obs and not pixels  # frames stay uint8 (4x smaller rollouts); the CNN scales them

    def normalize(o: np.ndarray) -> np.ndarray:
        if pixels:
            return o
        return obs_norm.normalize(o) if normalize_obs else o.astype(np.float32)

    def to_env(action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        return a if discrete else np.clip(a, envs.single_action_space.low, envs.single_action_space.high)

    def policy(o: np.ndarray) -> np.ndarray:  # deterministic, for evaluation; same normalisation as training
        with torch.no_grad():
            return to_env(agent.act_deterministic(torch.as_tensor(normalize(o[None]), device=device)))[0]

    # rollout storage, (num_steps, num_envs, ...)
    obs_dtype = torch.uint8 if pixels else torch.float32
    obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=obs_dtype, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    # checkpoints: what they hold, resume
    progress = OracleProgress()
    parts = {"agent": agent, "optimizer": optimizer, "obs_norm": obs_norm, "reward_scaler": reward_scaler}
    parts |= {"evaluator": evaluator, "state": progress}

    def snapshot() -> dict:
        states = {name: part.state_dict() for name, part in parts.items()}
        return {"args": asdict(args), "rng": rng_states(device), "np_random": np.random.get_state(), **states}

    raw_obs, _ = envs.reset(seed=args.seed)
    if checkpoint is not None:
        for name, part in parts.items():
            part.load_state_dict(checkpoint[name])
        restore_rng_states(checkpoint["rng"], device)
        np.random.set_state(checkpoint["np_random"])
        raw_obs, _ = envs.reset(seed=args.seed + progress.iteration)  # the interrupted episodes start afresh
        print(f"resumed {run_dir} at step {progress.global_step}", flush=True)
    checkpoints = Checkpointer(run_dir, args.checkpoint_frequency, snapshot, progress)
    checkpoints.save_on_interrupt(tracker.close)

    global_step, next_eval = progress.global_step, args.eval_frequency * (len(progress.evals.returns) + 1)
    clock = RunClock(progress.phase_time, global_step)
    clock.begin("learning", global_step)  # PPO learns from its first rollout
    if normalize_obs:
        obs_norm.update(raw_obs)
    next_obs = torch.as_tensor(normalize(raw_obs), device=device)
    next_done = torch.zeros(args.num_envs, device=device)

    while progress.iteration < num_iterations:
        progress.iteration += 1
        iteration = progress.iteration
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate

        for step in range(args.num_steps):
            global_step += args.num_envs
            progress.global_step = global_step
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value.flatten(), action, logprob

            raw_obs, reward, terminated, truncated, info = envs.step(to_env(action))
            done = np.logical_or(terminated, truncated)
            if normalize_obs:
                obs_norm.update(raw_obs)
            reward = reward_scaler.scale(reward, done) if args.norm_reward else reward.astype(np.float32)
            if truncated.any():  # a time limit is not a terminal state: bootstrap from the final observation
                idx = np.flatnonzero(truncated & ~terminated)
                if len(idx):
                    final = np.stack([info["final_obs"][i] for i in idx])
                    with torch.no_grad():
                        final_values = agent.get_value(torch.as_tensor(normalize(final), device=device)).flatten()
                    reward[idx] += args.gamma * final_values.cpu().numpy()
            rewards[step] = torch.as_tensor(reward, device=device)
            next_obs = torch.as_tensor(normalize(raw_obs), device=device)
            next_done = torch.as_tensor(done, dtype=torch.float32, device=device)
            if "final_info" in info and "episode" in info["final_info"]:
                ep = info["final_info"]["episode"]
                for i in np.flatnonzero(info["final_info"]["_episode"]):
                    tracker.scalars(
                        {"charts/episodic_return": ep["r"][i], "charts/episodic_length": ep["l"][i]}, global_step
                    )

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

        # flatten the batch
        b_obs = obs.reshape((-1,) + obs_shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)

        # optimise the policy and value networks
        b_inds = np.arange(batch_size)
        clipfracs = []
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
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

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        tracker.scalars(
            {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy_loss.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": torch.stack(clipfracs).mean().item(),
                "losses/explained_variance": np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y,
            },
            global_step,
        )
        tracker.steps_per_second(global_step)

        if global_step >= next_eval or iteration == num_iterations:
            with timed(progress.phase_time, "evaluation"):
                result = evaluator(policy)
            tracker.scalars(result.as_scalars(), global_step)
            progress.evals.add(global_step, result)
            print(f"step={global_step} {result}", flush=True)
            next_eval += args.eval_frequency
        if checkpoints.due():
            checkpoints.save("periodic")

    summary = {"algorithm": "ppo", "env_id": args.env_id, "seed": args.seed, "total_timesteps": global_step}
    summary |= {"stop_reason": "budget", "labels_used": 0, **progress.evals.summary(), **clock.summary(global_step)}
    checkpoints.save("end")
    summary = write_summary(run_dir, summary)
    if args.save_model:
        save_checkpoint(
            {"agent": agent.state_dict(), "obs_norm": obs_norm.state_dict(), "args": asdict(args)},
            os.path.join(run_dir, "ppo.pt"),
        )
    evaluator.close()
    envs.close()
    tracker.close()
    return summary


if __name__ == "__main__":
    run_cli(Args, main)
