"""Environment factory: the one place where scripts get their environments.

- Any Gymnasium id works; the MuJoCo v5 tasks are the main targets.
- rl-teacher's "Short" variants are registered for the locomotion tasks: the same task with a shorter time limit
  (200 steps instead of 1000; ShortReacher-v5: 20 instead of 50), which makes episodes, and so evaluation and
  labeling sessions, cheaper. The reward and dynamics are unchanged.
- DeepMind Control Suite tasks by shimmy's ids, `dm_control/<domain>-<task>-v0` (`dm_control/walker-walk-v0`): their
  dict observations are flattened in Gymnasium's Dict order (keys sorted alphabetically, each array flattened in C
  order: walker-walk is height (1), orientations (14), velocity (9)); episodes are 1000 steps, rewards in [0, 1].
- Meta-World v3 tasks as `metaworld/<task>-v3` (`metaworld/door-open-v3`): Meta-World's MT1 setting (a new object and
  goal position from the task's 50 variations at every reset), 500-step episodes, `info["success"]` at every step
  (evaluations report the success rate), no early end on success.
- Atari games by the Arcade Learning Environment's ids, `ALE/<Game>-v5` (`ALE/Pong-v5`; ale-py's wheels ship the
  ROMs): v5's sticky actions (the previous action repeats with probability 0.25), then the standard preprocessing
  (Gymnasium's `AtariPreprocessing`: up to 30 no-ops at reset, 4 frames per step with the last two max-pooled,
  grayscale, 84x84 uint8) and, with `frame_stack=k > 0`, the last k frames stacked, (k, 84, 84). Episodes end at the
  game's end (not at a lost life) or after 27,000 steps (108,000 frames). Returns are the game's score. With
  `record_screens`, `info["screen"]` holds the colour frame a person sees (210x160x3 uint8) after every step.
- Every MuJoCo env of any family records its physics state (qpos, qvel, act, flattened) in `info["physics_state"]`
  after `reset` and every `step`, so query clips can be rendered later from stored states; `mujoco_model_data` is the
  one adapter that finds a family's MuJoCo model and data.
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


FAMILIES = {
    "dm_control/": ("dm_control", "shimmy", "dmc"),
    "metaworld/": ("metaworld", "metaworld", "metaworld"),
    "ALE/": ("atari", "ale_py", "atari"),
}
"""id prefix -> (family, the module that registers its ids, the pip extra that installs it)"""
DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500
ATARI_FRAME_SKIP = 4
"""emulator frames per env step of the Atari games (the last two max-pooled into the observation)"""
ATARI_EPISODE_STEPS = 108_000 // ATARI_FRAME_SKIP
"""the ALE's limit of 108,000 frames per episode, in env steps"""


def family(env_id: str) -> str:
    """`dm_control`, `metaworld`, `atari` or `gymnasium` (everything else, MuJoCo v5 tasks included)."""
    return next((name for prefix, (name, _, _) in FAMILIES.items() if env_id.startswith(prefix)), "gymnasium")


def _register_family(env_id: str) -> None:
    """Import what registers a family's ids, on first use (importing dm_control and Meta-World takes seconds)."""
    for prefix, (name, module, extra) in FAMILIES.items():
        if not env_id.startswith(prefix):
            continue
        try:
            imported = __import__(module)
        except ImportError as err:
            raise UsageError(
                f"{env_id!r} needs the {name} package ({err}); install it with pip install -e '.[{extra}]'"
            ) from None
        if name == "atari":
            gym.register_envs(imported)
        if name == "metaworld":
            for task in imported.ALL_V3_ENVIRONMENTS:
                if f"metaworld/{task}" not in gym.registry:
                    gym.register(id=f"metaworld/{task}", entry_point=_metaworld_task, kwargs={"task": task},
                                 max_episode_steps=None)  # fmt: skip


def _metaworld_task(task: str, render_mode: str | None = None) -> gym.Env:
    """One Meta-World v3 task in the MT1 setting, without ending episodes on success (as PEBBLE trains)."""
    import metaworld

    env = metaworld.make_mt_envs(task, terminate_on_success=False, render_mode=render_mode)
    return SeededTaskChoice(env)


class SeededTaskChoice(gym.Wrapper):
    """`reset(seed=s)` also seeds which of the task's variations comes next (Meta-World draws it before seeding)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.env.unwrapped.np_random = np.random.default_rng(seed)
        return self.env.reset(seed=seed, options=options)


def check_env_id(env_id: str) -> None:
    """Raise a `UsageError` with close matches when `env_id` is not registered."""
    _register_family(env_id)
    if env_id not in gym.registry and "ALE/" not in env_id:
        _register_atari_quietly()  # so that a mistyped game gets its close matches
    if env_id in gym.registry:
        spec = gym.spec(env_id)
        if str(spec.entry_point).startswith("ale_py") and family(env_id) != "atari":
            game = spec.kwargs.get("game", "")
            same_game = (k for k in gym.registry if k.startswith("ALE/") and gym.spec(k).kwargs.get("game") == game)
            v5 = next(same_game, None)
            raise UsageError(
                f"{env_id!r} is an older Atari id; prefrl uses the ALE's v5 ids (sticky actions)"
                + (f": {v5!r}" if v5 else "")
            )
        return
    older_atari = lambda k: str(gym.spec(k).entry_point).startswith("ale_py") and not k.startswith("ALE/")
    known = [k for k in gym.registry if not older_atari(k)]
    lowered = {k.lower(): k for k in known}
    matches = [lowered[env_id.lower()]] if env_id.lower() in lowered else []
    matches += [m for m in difflib.get_close_matches(env_id, known, n=3, cutoff=0.6) if m not in matches]
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else " (see gymnasium.pprint_registry())"
    raise UsageError(f"unknown environment id {env_id!r}{hint}")


def _register_atari_quietly() -> None:
    try:
        import ale_py
    except ImportError:
        return
    gym.register_envs(ale_py)


def mujoco_model_data(env: gym.Env):
    """The raw `mujoco.MjModel` and `MjData` of `env` for every family (None, None for envs without MuJoCo)."""
    base = env.unwrapped
    physics = getattr(base, "physics", None)
    if physics is not None and hasattr(physics, "model"):  # dm_control, through shimmy
        return physics.model.ptr, physics.data.ptr
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if model is None or not hasattr(data, "qpos"):
        return None, None
    return model, data


def is_mujoco(env: gym.Env) -> bool:
    """True for environments simulated by MuJoCo, of any family."""
    return mujoco_model_data(env)[1] is not None


DMC_CAMERAS = {"walker": "side", "cheetah": "side", "quadruped": "y"}
"""dm_control's cameras that follow the body and frame it well; other domains: their first body-tracking camera"""
METAWORLD_VIEW = {"lookat": (0.0, 0.6, 0.1), "distance": 1.9, "azimuth": 160.0, "elevation": -30.0}
"""Meta-World's clips: a fixed free camera on the table, arm, object and goal in view, upright (the model's own fixed
cameras, `corner` and the like, render upside down)"""


def clip_camera(env_id: str, model) -> str | dict | None:
    """The view of a family's clips: a camera name (Gymnasium's `track`, the dm_control camera of `DMC_CAMERAS` or the
    domain's first body-tracking one), free-camera settings (Meta-World), or None (the env's default view)."""
    import mujoco

    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    kind = family(env_id)
    if kind == "metaworld":
        return dict(METAWORLD_VIEW)
    if kind == "dm_control":
        domain = env_id.split("/")[1].split("-")[0]
        if DMC_CAMERAS.get(domain) in names:
            return DMC_CAMERAS[domain]
        tracking = (mujoco.mjtCamLight.mjCAMLIGHT_TRACK, mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM)
        return next((n for i, n in enumerate(names) if model.cam_mode[i] in tracking), names[0] if names else None)
    return "track" if "track" in names else None


# The physics-state layout of MuJoCo envs, known only here: one flat float64 vector, qpos, qvel, then the actuator
# activations (act; none in the Gymnasium and Meta-World tasks, so there it is qpos and qvel). Replay buffers store
# these vectors, clips render from them (`write_physics_state`) and user rewards read qpos and qvel.
def physics_state_size(model) -> int:
    """Length of a MuJoCo model's physics-state vector."""
    return model.nq + model.nv + model.na


def read_physics_state(data) -> np.ndarray:
    """The state of a MuJoCo `MjData` as one flat float64 vector."""
    return np.concatenate([data.qpos, data.qvel, data.act])


def write_physics_state(model, data, state: np.ndarray) -> None:
    """Put a state vector from `read_physics_state` into `data` (call `mujoco.mj_forward` before rendering it)."""
    data.qpos[:] = state[: model.nq]
    data.qvel[:] = state[model.nq : model.nq + model.nv]
    if model.na:
        data.act[:] = state[model.nq + model.nv :]


def qpos_qvel(env: gym.Env) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Copies of the MuJoCo generalised positions and velocities of `env` (None, None for other envs)."""
    data = mujoco_model_data(env)[1]
    return (None, None) if data is None else (data.qpos.copy(), data.qvel.copy())


def get_physics_state(env: gym.Env) -> np.ndarray:
    """The full MuJoCo state of `env` as one flat float64 vector."""
    return read_physics_state(mujoco_model_data(env)[1])


def set_physics_state(env: gym.Env, state: np.ndarray) -> np.ndarray:
    """Put `env` into a state from `get_physics_state` and return the (flat) observation the env gives in that state.
    Meta-World's observation also holds the previous step's, which a state does not: that part stays as it was."""
    import mujoco

    model, data = mujoco_model_data(env)
    write_physics_state(model, data, np.asarray(state, dtype=np.float64))
    mujoco.mj_forward(model, data)
    base = env.unwrapped
    if family_of_env(env) == "dm_control":
        observation = base._env.task.get_observation(base.physics)
        space = base.observation_space
        return gym.spaces.flatten(space, {k: np.asarray(observation[k]).reshape(space[k].shape) for k in space})
    return base._get_obs()


def control_timestep(env: gym.Env) -> float:
    """Seconds of simulated time per env step (clips play at 1 / this frames per second)."""
    base = env.unwrapped
    if family_of_env(env) == "dm_control":
        return float(base._env.control_timestep())
    return float(getattr(base, "dt", 1 / 30))


def family_of_env(env: gym.Env) -> str:
    spec = env.unwrapped.spec
    return family(spec.id) if spec is not None else "gymnasium"


class RecordScreen(gym.Wrapper):
    """Adds `info["screen"]`: the ALE's colour frame (210x160x3 uint8) after `reset` and every `step`."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["screen"] = self.env.unwrapped.ale.getScreenRGB()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["screen"] = self.env.unwrapped.ale.getScreenRGB()
        return obs, reward, terminated, truncated, info


def make_atari(env_id: str, render_mode: str | None, frame_stack: int) -> gym.Env:
    """An ALE v5 game with sticky actions, the standard preprocessing and `frame_stack` stacked frames (0: none)."""
    env = gym.make(env_id, frameskip=1, render_mode=render_mode)  # the preprocessing skips (and max-pools) frames
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=ATARI_FRAME_SKIP, screen_size=84)
    if frame_stack > 0:
        env = gym.wrappers.FrameStackObservation(env, frame_stack)
    return env


def is_pixels(space: gym.Space) -> bool:
    """True for image observations (uint8 frames, stacked or not), which networks read with a CNN."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


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
    frame_stack: int = 4,
    record_screens: bool = False,
) -> gym.Env:
    """Make one seeded environment with episode statistics (and the physics state, for MuJoCo envs).

    Atari games are preprocessed, with `frame_stack` stacked frames (0: single frames), and with `record_screens`
    report their colour frame in `info["screen"]`. `teacher_reward`, a function from
    `framework.teacher.load_reward_function`, adds `info["teacher_reward"]` at every step. `render_mode="human"` shows
    the episodes in a window; `"rgb_array"` renders frames (headless: set MUJOCO_GL=egl or osmesa).
    """
    check_env_id(env_id)
    if frame_stack < 0:
        raise UsageError(f"--frame-stack must be >= 0 (0: no stacking), got {frame_stack}")
    if family(env_id) == "atari":
        env = make_atari(env_id, render_mode, frame_stack)
        if record_screens:
            env = RecordScreen(env)
    else:
        # (Meta-World's declared observation bounds are narrower than its envs' observations: no checker warnings)
        env = gym.make(env_id, render_mode=render_mode, disable_env_checker=family(env_id) == "metaworld")
    if isinstance(env.observation_space, gym.spaces.Dict):  # dm_control: one flat vector, in the Dict's key order
        env = gym.wrappers.FlattenObservation(env)
    if not has_wrapper(env, gym.wrappers.RecordEpisodeStatistics):  # Meta-World's envs come with their own
        env = gym.wrappers.RecordEpisodeStatistics(env)
    if is_mujoco(env):
        env = RecordPhysicsState(env)
    if teacher_reward is not None:
        from framework.teacher import TeacherRewardWrapper

        env = TeacherRewardWrapper(env, teacher_reward)
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


def has_wrapper(env: gym.Env, kind: type) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, kind):
            return True
        env = env.env
    return False


def require_continuous_actions(space: gym.Space, env_id: str, script: str) -> None:
    """Raise a `UsageError` unless `space` is a Box (continuous actions)."""
    if not isinstance(space, gym.spaces.Box):
        raise UsageError(
            f"{script} needs continuous (Box) actions, but {env_id!r} has {space}; "
            "choose a continuous-control env such as Hopper-v5"
        )


def action_size(space: gym.Space) -> int:
    """How many numbers a reward model reads for one action: the flattened Box, or a one-hot of a Discrete space."""
    return int(space.n) if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))


def action_features(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """Actions `(..., *space.shape)` as a reward model reads them, `(..., action_size(space))` float32: discrete
    actions one-hot, continuous ones flattened."""
    actions = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[actions.astype(np.int64) - int(space.start)]
    return actions.reshape(*actions.shape[: actions.ndim - len(space.shape)], -1).astype(np.float32)


def max_episode_steps(env_id: str) -> int | None:
    """The registered time limit of `env_id` (None when it has none)."""
    check_env_id(env_id)
    return {"dm_control": DMC_EPISODE_STEPS, "metaworld": METAWORLD_EPISODE_STEPS, "atari": ATARI_EPISODE_STEPS}.get(
        family(env_id), gym.spec(env_id).max_episode_steps
    )
