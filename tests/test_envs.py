"""Environment factory: Short variants, physics-state round trips, and clear errors for bad env ids."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_script
from framework.envs import SHORT_TIME_LIMITS, check_env_id, make_env, max_episode_steps, set_physics_state
from framework.runtime import UsageError


@pytest.mark.parametrize("base", sorted(SHORT_TIME_LIMITS))
def test_short_variants_are_registered_with_their_limit(base):
    assert max_episode_steps(f"Short{base}-v5") == SHORT_TIME_LIMITS[base]
    assert max_episode_steps(f"{base}-v5") in (50, 1000)


@pytest.mark.parametrize("env_id, limit", [("ShortHalfCheetah-v5", 200), ("ShortReacher-v5", 20)])
def test_short_variant_episodes_end_at_the_limit(env_id, limit):
    env = make_env(env_id, seed=0)
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        done = terminated or truncated
    assert steps == limit and truncated and not terminated
    assert info["episode"]["l"] == limit


def test_physics_state_round_trip():
    """Restoring a recorded state reproduces the observation, and the future under the same actions."""
    env = make_env("Hopper-v5", seed=3)
    obs, info = env.reset(seed=3)
    np.testing.assert_allclose(set_physics_state(make_env("Hopper-v5", 0), info["physics_state"]), obs)
    states, observations = [], []
    for _ in range(20):
        obs, _, _, _, info = env.step(env.action_space.sample())
        states.append(info["physics_state"])
        observations.append(obs)
    assert states[0].shape == (env.unwrapped.model.nq + env.unwrapped.model.nv,)

    replay = make_env("Hopper-v5", seed=99)
    replay.reset(seed=99)
    for state, expected in zip(states, observations):
        np.testing.assert_allclose(set_physics_state(replay, state), expected, atol=1e-12)
    action = np.full(env.action_space.shape, 0.3, dtype=np.float32)
    set_physics_state(replay, states[-1])
    next_replay = replay.step(action)[0]
    next_original = env.step(action)[0]
    np.testing.assert_allclose(next_replay, next_original, atol=1e-9)


@pytest.mark.parametrize(
    "wrong, right", [("Hoper-v5", "Hopper-v5"), ("Walker2D-v5", "Walker2d-v5"), ("halfcheetah-v5", "HalfCheetah-v5")]
)
def test_unknown_env_id_names_close_matches(wrong, right):
    with pytest.raises(UsageError, match=f"did you mean.*'{right}'"):
        check_env_id(wrong)


@pytest.mark.parametrize("script", ["sac.py", "ppo.py"])
def test_cli_unknown_env_is_one_line_error(script, runs_dir):
    result = run_script(script, "--env-id", "Hoper-v5", "--runs-dir", str(runs_dir))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown environment id 'Hoper-v5'; did you mean 'Hopper-v5'")


@pytest.mark.parametrize("script", ["sac.py", "sac_rlhf.py"])
def test_cli_discrete_env_says_continuous_only(script, runs_dir):
    result = run_script(script, "--env-id", "CartPole-v1", "--runs-dir", str(runs_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs continuous (Box) actions" in result.stderr and "Discrete(2)" in result.stderr


@pytest.mark.parametrize(
    "script, flags, message",
    [
        ("sac.py", ["--total-timesteps", "-5"], "--total-timesteps must be > 0, got -5"),
        ("sac.py", ["--tau", "2"], "--tau must be in (0, 1]"),
        ("sac.py", ["--depth", "0"], "--depth must be >= 1"),
        ("ppo.py", ["--num-minibatches", "7"], "must be divisible by --num-minibatches (7)"),
        ("ppo.py", ["--total-timesteps", "100"], "smaller than one rollout"),
    ],
)
def test_cli_bad_values_fail_at_start(script, flags, message, runs_dir):
    result = run_script(script, "--runs-dir", str(runs_dir), *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not any(runs_dir.iterdir()), "a rejected run must not create a run folder"
