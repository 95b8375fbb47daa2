"""Environment factory: the one place where scripts get their environments.

- Any Gymnasium id works; the MuJoCo v5 tasks are the main targets.
- rl-teacher's "Short" variants are registered for the locomotion tasks: the same task with a shorter time limit
  (200 steps instead of 1000; ShortReacher-v5: 20 instead of 50), which makes episodes, and so evaluation and
  labeling sessions, cheaper. The reward and dynamics are unchanged.
- Every MuJoCo env records its physics state (qpos then qvel, flattened) in `info["physics_state"]` after `reset`
  and every `step`, so query clips can be rendered later from stored states with `set_physics_state`.
- An unknown id is a `UsageError` naming the closest registered ids.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from framework.runtime import UsageError

SHORT_TIME_LIMITS = {
    "Hopper": 200,
    "Walker2d": 200,
    "HalfCheetah": 200,
    "Swimmer": 200,
    "Ant": 200,
    "Humanoid": 200,
    "Reacher": 20,
}
"""Time limits of the `Short<Task>-v5` ids (rl-teacher's short tasks); the full tasks run 1000 steps (Reacher 50)."""


def _register_short_variants() -> None:
    for base, limit in SHORT_TIME_LIMITS.items():
        short_id = f"Short{base}-v5"
        if short_id in gym.registry:
            continue
        spec = gym.spec(f"{base}-v5")
        gym.register(id=short_id, entry_point=spec.entry_point, max_episode_steps=limit, kwargs=dict(spec.kwargs))


_register_short_variants()


def check_env_id(env_id: str) -> None:
    """Raise a `UsageError` with close matches when `env_id` is not registered."""
    if env_id in gym.registry:
        return
    known = list(gym.registry.keys())
    lowered = {k.lower(): k for k in known}
    matches = [lowered[env_id.lower()]] if env_id.lower() in lowered else []
    matches += [m for m in difflib.get_close_matches(env_id, known, n=3, cutoff=0.6) if m not in matches]
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else " (see gymnasium.pprint_registry())"
    raise UsageError(f"unknown environment id {env_id!r}{hint}")


def is_mujoco(env: gym.Env) -> bool:
    """True for environments simulated by MuJoCo (they expose `data.qpos` / `data.qvel` and `set_state`)."""
    base = env.unwrapped
    return hasattr(base, "data") and hasattr(base.data, "qpos") and hasattr(base, "set_state")


# The physics-state layout of MuJoCo envs, known only here: one flat float64 vector, qpos followed by qvel. Replay
# buffers store these vectors, clips render from them (`write_physics_state`) and user rewards read qpos and qvel.
def physics_state_size(model) -> int:
    """Length of a MuJoCo model's physics-state vector."""
    return model.nq + model.nv


def read_physics_state(data) -> np.ndarray:
    """The state of a MuJoCo `MjData` as one flat float64 vector."""
    return np.concatenate([data.qpos, data.qvel])


def write_physics_state(model, data, state: np.ndarray) -> None:
    """Put a state vector from `read_physics_state` into `data` (call `mujoco.mj_forward` before rendering it)."""
    data.qpos[:] = state[: model.nq]
    data.qvel[:] = state[model.nq :]


def qpos_qvel(env: gym.Env) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Copies of the MuJoCo generalised positions and velocities of `env` (None, None for other envs)."""
    data = getattr(env.unwrapped, "data", None)
    return (None, None) if data is None else (data.qpos.copy(), data.qvel.copy())


def get_physics_state(env: gym.Env) -> np.ndarray:
    """The full MuJoCo state of `env` as one flat float64 vector."""
    return read_physics_state(env.unwrapped.data)


def set_physics_state(env: gym.Env, state: np.ndarray) -> np.ndarray:
    """Put `env` into a state from `get_physics_state` and return the observation the env gives in that state."""
    base = env.unwrapped
    nq = base.model.nq
    base.set_state(np.asarray(state[:nq]), np.asarray(state[nq:]))
    return base._get_obs()


class RecordPhysicsState(gym.Wrapper):
    """Adds `info["physics_state"]`: the MuJoCo state that produced the returned observation."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["physics_state"] = get_physics_state(self.env)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["physics_state"] = get_physics_state(self.env)
        return obs, reward, terminated, truncated, info


def make_env(
    env_id: str,
    seed: int,
    teacher_reward: Callable | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Make one seeded environment with episode statistics (and the physics state, for MuJoCo envs).

    `teacher_reward`, a function from `framework.teacher.load_reward_function`, adds `info["teacher_reward"]` at
    every step. `render_mode="human"` shows the episodes in a window; `"rgb_array"` renders frames (headless: set
    MUJOCO_GL=egl or osmesa).
    """
    check_env_id(env_id)
    env = gym.make(env_id, render_mode=render_mode)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if is_mujoco(env):
        env = RecordPhysicsState(env)
    if teacher_reward is not None:
        from framework.teacher import TeacherRewardWrapper

        env = TeacherRewardWrapper(env, teacher_reward)
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


def require_continuous_actions(space: gym.Space, env_id: str, script: str) -> None:
    """Raise a `UsageError` unless `space` is a Box (continuous actions)."""
    if not isinstance(space, gym.spaces.Box):
        raise UsageError(
            f"{script} needs continuous (Box) actions, but {env_id!r} has {space}; "
            "choose a continuous-control env such as Hopper-v5"
        )


def max_episode_steps(env_id: str) -> int | None:
    """The registered time limit of `env_id` (None when it has none)."""
    check_env_id(env_id)
    return gym.spec(env_id).max_episode_steps
