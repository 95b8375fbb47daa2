"""Evaluation on the environment's TRUE reward with a deterministic policy (what every script reports).

A preference-trained agent never sees the true reward while learning; evaluation is where it is measured. When a
user-written teacher reward is in use, its episode return is reported too (`teacher_returns`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from framework.envs import make_env


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    teacher_returns: list[float] = field(default_factory=list)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    def __str__(self) -> str:
        return f"eval_return={self.mean_return:.1f} +- {self.std_return:.1f}"

    def as_scalars(self, prefix: str = "eval") -> dict[str, float]:
        out = {
            f"{prefix}/episodic_return": self.mean_return,
            f"{prefix}/episodic_return_std": self.std_return,
            f"{prefix}/episodic_length": float(np.mean(self.lengths)),
        }
        if self.teacher_returns:
            out[f"{prefix}/teacher_return"] = float(np.mean(self.teacher_returns))
        return out


@dataclass
class EvalHistory:
    """A run's evaluations, (env step, mean return) each, its best return so far, and whether to stop early."""

    returns: list[tuple[int, float]] = field(default_factory=list)
    best: float = -math.inf
    since_best: int = 0  # evaluations since the best one

    def add(self, step: int, mean_return: float) -> None:
        self.returns.append((step, mean_return))
        if mean_return > self.best:
            self.best, self.since_best = mean_return, 0
        else:
            self.since_best += 1

    @property
    def final(self) -> float:
        return self.returns[-1][1] if self.returns else float("nan")

    def summary(self) -> dict:
        """The summary.json keys of the evaluations: final_eval_return, best_eval_return, eval_history."""
        return {"final_eval_return": self.final, "best_eval_return": self.best, "eval_history": self.returns}

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

    With `capture_video`, the first episode of every evaluation is recorded to `video_dir` (headless rendering).
    """

    def __init__(
        self,
        env_id: str,
        seed: int,
        episodes: int = 10,
        capture_video: bool = False,
        video_dir: str | None = None,
        teacher_reward: Callable | None = None,
    ):
        self.episodes = episodes
        self.seed = seed
        self.calls = 0
        self.env = make_env(
            env_id,
            seed,
            capture_video=capture_video,
            video_dir=video_dir,
            video_prefix="eval",
            video_every=episodes,
            teacher_reward=teacher_reward,
        )

    def __call__(self, policy: Callable[[np.ndarray], np.ndarray]) -> EvalResult:
        """`policy` maps one observation `(obs_dim,)` to one action `(action_dim,)`."""
        result = EvalResult([], [])
        for episode in range(self.episodes):
            obs, _ = self.env.reset(seed=self.seed + 1000 * self.calls + episode)
            done, teacher_return = False, 0.0
            while not done:
                obs, _, terminated, truncated, info = self.env.step(policy(obs))
                teacher_return += info.get("teacher_reward", 0.0)
                done = terminated or truncated
            result.returns.append(float(info["episode"]["r"]))
            result.lengths.append(int(info["episode"]["l"]))
            if "teacher_reward" in info:
                result.teacher_returns.append(teacher_return)
        self.calls += 1
        return result

    def state_dict(self) -> dict:
        return {"calls": self.calls}  # evaluation episodes are seeded by call: a resumed run evaluates the same ones

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]

    def close(self) -> None:
        self.env.close()
