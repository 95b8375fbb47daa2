"""Evaluation on the environment's TRUE reward with a deterministic policy (what every script reports), and of a saved
agent from the command line:

    python framework/evaluation.py runs/<run> [--episodes 10] [--seed S] [--video] [--gif] [--seconds 4]
                                              [--render-mode human]

A preference-trained agent never sees the true reward while learning; evaluation is where it is measured. When a
user-written teacher reward is in use, its episode return is reported too (`teacher_returns`). A run folder's agent is
its `checkpoint.pt` (every script writes one), or a `sac.pt` / `ppo.pt` (the oracles, with `--save-model`); by
default the command runs the episodes of the run's last evaluation, so its numbers are the run's own. Films are
rendered from the episodes' physics states with the camera that follows the body (headless), to `<run>/evaluation/`
(`--seconds`: only the start of each).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import tyro

from framework.envs import family, make_env
from framework.runtime import UsageError


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    teacher_returns: list[float] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # Meta-World: 1 when info["success"] was ever 1

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.successes else None

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    def __str__(self) -> str:
        success = f" success={self.success_rate:.2f}" if self.successes else ""
        return f"eval_return={self.mean_return:.1f} +- {self.std_return:.1f}{success}"

    def as_scalars(self, prefix: str = "eval") -> dict[str, float]:
        out = {
            f"{prefix}/episodic_return": self.mean_return,
            f"{prefix}/episodic_return_std": self.std_return,
            f"{prefix}/episodic_length": float(np.mean(self.lengths)),
        }
        if self.teacher_returns:
            out[f"{prefix}/teacher_return"] = float(np.mean(self.teacher_returns))
        if self.successes:
            out[f"{prefix}/success_rate"] = self.success_rate
        return out


@dataclass
class EvalHistory:
    """A run's evaluations, (env step, mean return) each (and the teacher's return with a user-written teacher
    reward), its best return so far, and whether to stop early."""

    returns: list[tuple[int, float]] = field(default_factory=list)
    best: float = -math.inf
    since_best: int = 0  # evaluations since the best one
    teacher_returns: list[tuple[int, float]] = field(default_factory=list)  # with a user-written teacher reward
    success_rates: list[tuple[int, float]] = field(default_factory=list)  # Meta-World

    def add(self, step: int, result: EvalResult) -> None:
        mean_return = result.mean_return
        self.returns.append((step, mean_return))
        if result.teacher_returns:
            self.teacher_returns.append((step, float(np.mean(result.teacher_returns))))
        if result.successes:
            self.success_rates.append((step, result.success_rate))
        if mean_return > self.best:
            self.best, self.since_best = mean_return, 0
        else:
            self.since_best += 1

    @property
    def final(self) -> float:
        return self.returns[-1][1] if self.returns else float("nan")

    def summary(self) -> dict:
        """The summary.json keys of the evaluations: final_eval_return, best_eval_return, eval_history; with a
        user-written teacher reward final_teacher_return and teacher_history; on Meta-World final_success_rate and
        success_history."""
        out = {"final_eval_return": self.final, "best_eval_return": self.best, "eval_history": self.returns}
        if self.teacher_returns:
            out |= {"final_teacher_return": self.teacher_returns[-1][1], "teacher_history": self.teacher_returns}
        if self.success_rates:  # a sweep can maximise final_success_rate
            out |= {"final_success_rate": self.success_rates[-1][1], "success_history": self.success_rates}
        return out

    def stop_reason(self, early_stop_return: float | None, patience: int) -> str | None:
        """Why to stop after the latest evaluation (`--early-stop-return`, `--early-stop-patience`), or None."""
        latest = self.final
        if early_stop_return is not None and latest >= early_stop_return:
            return f"evaluation return {latest:.1f} >= --early-stop-return {early_stop_return}"
        if patience and self.since_best >= patience:
            return f"{patience} evaluations without a new best return"
        return None


class Evaluator:
    """Runs `episodes` episodes of a policy per call on one env kept for the whole run.

    With `capture_video`, the first episode of every evaluation is recorded to `video_dir` as
    `eval-<evaluation>.mp4` (the env's own rgb_array rendering, headless; encoded like the feedback clips).
    """

    def __init__(
        self,
        env_id: str,
        seed: int,
        episodes: int = 10,
        capture_video: bool = False,
        video_dir: str | None = None,
        teacher_reward: Callable | None = None,
        render_mode: str | None = None,
        frame_stack: int = 4,
    ):
        if capture_video and video_dir is None:
            raise UsageError("capture_video needs a video_dir")
        self.episodes = episodes
        self.seed = seed
        self.calls = 0
        self.video_dir = video_dir if capture_video else None
        mode = "rgb_array" if capture_video else render_mode
        self.env = make_env(
            env_id, seed, teacher_reward, mode, frame_stack, record_screens=family(env_id) == "atari"
        )  # (an Atari game's colour frames are what its films show)

    def __call__(self, policy: Callable[[np.ndarray], np.ndarray], film: int = 0) -> EvalResult:
        """`policy` maps one observation `(obs_dim,)` to one action `(action_dim,)`. The physics states of the first
        `film` episodes are kept in `self.films`, one `(T + 1, state size)` array each (MuJoCo envs), or their colour
        frames, `(T + 1, 210, 160, 3)` (Atari)."""
        result = EvalResult([], [])
        self.films = []
        for episode in range(self.episodes):
            obs, info = self.env.reset(seed=self.seed + 1000 * self.calls + episode)
            kept = "physics_state" if "physics_state" in info else "screen"
            states = [info[kept]] if episode < film and kept in info else None
            frames = [self.env.render()] if self.video_dir is not None and episode == 0 else None
            done, teacher_return, success = False, 0.0, 0.0
            while not done:
                obs, _, terminated, truncated, info = self.env.step(policy(obs))
                teacher_return += info.get("teacher_reward", 0.0)
                success = max(success, float(info.get("success", 0.0)))
                done = terminated or truncated
                if states is not None:
                    states.append(info[kept])
                if frames is not None:
                    frames.append(self.env.render())
            if frames is not None:
                self.record(frames)
            if states is not None:
                self.films.append(np.stack(states))
            result.returns.append(float(info["episode"]["r"]))
            result.lengths.append(int(info["episode"]["l"]))
            if "teacher_reward" in info:
                result.teacher_returns.append(teacher_return)
            if "success" in info:
                result.successes.append(success)
        self.calls += 1
        return result

    def record(self, frames: list[np.ndarray]) -> None:
        """`<video_dir>/eval-<evaluation>.mp4` of an episode's frames (cropped to even sizes for H.264)."""
        from framework.checkpoint import atomic_write_bytes
        from framework.clips import encode_mp4

        video = np.stack(frames)
        video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]
        fps = self.env.metadata.get("render_fps") or 30
        atomic_write_bytes(os.path.join(self.video_dir, f"eval-{self.calls}.mp4"), encode_mp4(video, fps))

    def state_dict(self) -> dict:
        return {"calls": self.calls}  # evaluation episodes are seeded by call: a resumed run evaluates the same ones

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]

    def close(self) -> None:
        self.env.close()


# ------------------------------------------------------------------------------------------ a saved agent, evaluated
AGENT_FILES = ("checkpoint.pt", "sac.pt", "ppo.pt")
"""What a run folder may hold an agent in: the preference scripts' checkpoint (always written), or the oracles'
model (`sac.py` / `ppo.py --save-model`)."""


@dataclass
class EvalArgs:
    """Evaluate (and film) a saved agent on the environment's TRUE reward."""

    path: tyro.conf.Positional[str]
    """a run folder (runs/<run>) or a saved agent file (checkpoint.pt, sac.pt, ppo.pt)"""
    episodes: int = 10
    """deterministic episodes to run"""
    seed: int | None = None
    """seed of the first episode (default: the episodes of the run's last evaluation, so the numbers compare)"""
    env_id: str | None = None
    """evaluate on this environment instead of the run's (same observation and action shapes)"""
    video: bool = False
    """write the first --film episodes as mp4"""
    gif: bool = False
    """write the first --film episodes as GIF (half size, 15 frames/s: small enough for a README)"""
    film: int = 1
    """episodes to film with --video or --gif"""
    size: int = 320
    """width and height of the films, pixels"""
    seconds: float | None = None
    """film only the first SECONDS of each filmed episode (default: all of it)"""
    out: str | None = None
    """folder for the films (default: <run>/evaluation)"""
    render_mode: Literal["none", "human"] = "none"
    """`human`: also show the episodes live in a window (needs a display)"""


def find_agent_file(path: str) -> str:
    """The saved agent of a run folder, or `path` itself when it is a file; one-line errors otherwise."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise UsageError(f"{path!r} is neither a run folder nor a saved agent file")
    for name in AGENT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise UsageError(
        f"{path!r} holds no saved agent ({', '.join(AGENT_FILES)}); sac.py and ppo.py save theirs with --save-model"
    )


def load_policy(saved: dict, env) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy of a saved agent (an SAC actor or a PPO agent with its observation normaliser), as the
    run evaluated it."""
    import torch

    from framework.envs import is_pixels
    from framework.networks import SACActor, make_ppo_agent
    from framework.normalization import ObservationNormalizer

    args = saved["args"]
    obs_dim = int(np.prod(env.observation_space.shape))
    low, high = getattr(env.action_space, "low", None), getattr(env.action_space, "high", None)
    try:
        if "actor" in saved:
            net = SACActor(obs_dim, low, high, args["hidden_size"], args["depth"])
            net.load_state_dict(saved["actor"])
            act = lambda o: net.get_action(torch.as_tensor(o, dtype=torch.float32)[None])[2][0]
        elif "agent" in saved:
            try:
                net = make_ppo_agent(env.observation_space, env.action_space, args["hidden_size"], args["depth"])
            except ValueError as err:
                raise UsageError(f"the saved agent does not fit {env.spec.id}: {err}") from None
            net.load_state_dict(saved["agent"])
            norm = ObservationNormalizer(env.observation_space.shape)
            norm.load_state_dict(saved["obs_norm"])
            if is_pixels(env.observation_space):
                act = lambda o: net.act_deterministic(torch.as_tensor(o[None]))[0]
            else:
                normalize = norm.normalize if args.get("norm_obs", True) else lambda o: o.astype(np.float32)
                act = lambda o: np.clip(net.act_deterministic(torch.as_tensor(normalize(o[None])))[0], low, high)
        else:
            raise UsageError("the file holds no agent (an SAC actor or a PPO agent)")
    except RuntimeError as err:  # shapes that do not fit the env
        first = str(err).strip().splitlines()[1 if len(str(err).strip().splitlines()) > 1 else 0].strip()
        raise UsageError(f"the saved agent does not fit {env.spec.id}: {first}") from err

    def policy(o: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            action = np.asarray(act(o))
        return action if action.dtype.kind in "iu" else action.astype(np.float32)

    return policy


def film_episodes(
    env_id: str, films: list[np.ndarray], out: str, video: bool, gif: bool, size: int, seconds: float | None = None
) -> list[str]:
    """mp4 and/or GIF files of the filmed episodes (rendered from their physics states, tracking camera), the first
    `seconds` of each (all of it by default)."""
    from PIL import Image

    from framework.clips import encode_mp4, get_clip_renderer

    renderer = get_clip_renderer(env_id, size)
    os.makedirs(out, exist_ok=True)
    written = []
    for i, states in enumerate(films):
        frames = renderer.render(states if seconds is None else states[: max(1, int(seconds * renderer.fps))])
        if video:
            path = os.path.join(out, f"episode-{i}.mp4")
            with open(path, "wb") as f:
                f.write(encode_mp4(frames, renderer.fps))
            written.append(path)
        if gif:
            step = max(1, round(renderer.fps / 15))
            images = [Image.fromarray(f).resize((f.shape[1] // 2, f.shape[0] // 2)) for f in frames[::step]]
            path = os.path.join(out, f"episode-{i}.gif")
            duration = int(1000 * step / renderer.fps)
            images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=True)
            written.append(path)
    return written


def evaluate_saved(args: EvalArgs) -> EvalResult:
    """`python framework/evaluation.py runs/<run>`: a table of returns, and films."""
    from framework.checkpoint import load_checkpoint
    from framework.envs import check_env_id
    from framework.runtime import setup_headless_rendering

    if args.episodes <= 0 or args.film < 0:
        raise UsageError(f"--episodes must be > 0 and --film >= 0, got {args.episodes} and {args.film}")
    if args.seconds is not None and not args.seconds > 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    if args.render_mode == "human" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("--render-mode human needs a display ($DISPLAY); use --video or --gif on a headless machine")
    path = find_agent_file(args.path)
    try:
        saved = load_checkpoint(path, map_location="cpu")
    except Exception as err:
        raise UsageError(f"{path!r} is not a saved agent: {type(err).__name__}: {err}") from err
    if not isinstance(saved, dict) or "args" not in saved:
        raise UsageError(f"{path!r} is not a saved agent of prefrl (no saved flags)")
    run_args = saved["args"]
    env_id = args.env_id or run_args["env_id"]
    check_env_id(env_id)
    if args.video or args.gif:
        setup_headless_rendering()
    teacher_reward = None
    if run_args.get("teacher_reward"):
        from framework.teacher import load_reward_function

        teacher_reward = load_reward_function(run_args["teacher_reward"])
    seed = run_args["seed"] + 10_000 if args.seed is None else args.seed
    render_mode = "human" if args.render_mode == "human" else None
    evaluator = Evaluator(
        env_id,
        seed,
        args.episodes,
        teacher_reward=teacher_reward,
        render_mode=render_mode,
        frame_stack=run_args.get("frame_stack", 4),
    )
    if args.seed is None and "evaluator" in saved:  # the episodes of the run's last evaluation
        evaluator.calls = max(saved["evaluator"]["calls"] - 1, 0)
    policy = load_policy(saved, evaluator.env)
    result = evaluator(policy, film=args.film if (args.video or args.gif) else 0)
    evaluator.close()
    print(f"{path}: {env_id}, {args.episodes} episodes on the true reward")
    header = "| episode | return | length |" + (" teacher return |" if result.teacher_returns else "")
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for i, (r, n) in enumerate(zip(result.returns, result.lengths)):
        row = f"| {i} | {r:.1f} | {n} |" + (f" {result.teacher_returns[i]:.1f} |" if result.teacher_returns else "")
        print(row)
    print(f"mean return {result.mean_return:.1f} +- {result.std_return:.1f}")
    if args.video or args.gif:
        if not evaluator.films:
            raise UsageError(f"{env_id} is neither a MuJoCo environment nor an Atari game: it cannot be filmed")
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), "evaluation")
        for written in film_episodes(env_id, evaluator.films, out, args.video, args.gif, args.size, args.seconds):
            print(f"wrote {written}")
    return result


def cli() -> None:
    """The `prefrl-evaluate` command."""
    from framework.runtime import run_cli

    run_cli(EvalArgs, evaluate_saved)


if __name__ == "__main__":
    cli()
