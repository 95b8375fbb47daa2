"""The DeepMind Control Suite and Meta-World through the env factory: installed by `make setup`, stepped, their physics
states restored, clips rendered from stored states, a tiny PEBBLE run on each, Meta-World's success rate in the
evaluation, and bad ids named with close matches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_script
from framework.envs import check_env_id, family, make_env, max_episode_steps, set_physics_state
from framework.runtime import UsageError

FAMILIES = {
    "dm_control/walker-walk-v0": (24, 6, 1000),
    "dm_control/cheetah-run-v0": (17, 6, 1000),
    "dm_control/quadruped-walk-v0": (78, 12, 1000),
    "metaworld/door-open-v3": (39, 4, 500),
    "metaworld/button-press-topdown-v3": (39, 4, 500),
}


@pytest.mark.parametrize("env_id", FAMILIES)
def test_each_family_steps_and_restores_its_physics_state(env_id):
    obs_dim, act_dim, horizon = FAMILIES[env_id]
    env = make_env(env_id, seed=1)
    assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
    assert max_episode_steps(env_id) == horizon
    obs, info = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)  # seeded resets repeat (Meta-World's task variation too)
    rng = np.random.default_rng(0)
    for _ in range(15):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, act_dim))
    assert obs.shape == (obs_dim,) and np.isfinite(obs).all() and np.isfinite(reward)
    if family(env_id) == "dm_control":
        assert 0.0 <= reward <= 1.0
    else:
        assert "success" in info
    saved, saved_obs = info["physics_state"].copy(), obs.copy()
    for _ in range(10):
        env.step(rng.uniform(-1, 1, act_dim))
    restored = set_physics_state(env, saved)
    current = np.ones(obs_dim, bool)
    if family(env_id) == "metaworld":  # the observation ends with the previous step's (18) and the goal (3)
        current[18:] = False
    elif "quadruped" in env_id:  # force/torque and IMU readings depend on the last action, which a state does not hold
        space, start = env.unwrapped.observation_space, 0
        for key in space:  # the flat order: the Dict's keys
            size = int(np.prod(space[key].shape))
            current[start : start + size] = key not in ("force_torque", "imu")
            start += size
        assert current.sum() == 48  # egocentric state (joints and activations), torso velocity and uprightness
    np.testing.assert_allclose(restored[current], saved_obs[current], atol=1e-9)
    env.close()


@pytest.mark.parametrize("env_id", ["dm_control/walker-walk-v0", "metaworld/door-open-v3"])
def test_clips_render_from_stored_states_and_show_the_body(env_id):
    from framework.clips import get_clip_renderer

    env = make_env(env_id, seed=1)
    _, info = env.reset(seed=1)
    states = [info["physics_state"]]
    for _ in range(20):
        states.append(env.step(env.action_space.sample())[-1]["physics_state"])
    frames = get_clip_renderer(env_id, 96).render(np.stack(states))
    assert frames.shape == (21, 96, 96, 3)
    assert frames.std() > 20  # not blank
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 0.5  # the body moved in view
    if family(env_id) == "metaworld":  # upright: the table (brown/grey) in the lower half, not the top
        top, bottom = frames[0, :30].mean(), frames[0, -30:].mean()
        assert top != bottom


@pytest.mark.parametrize(
    "wrong, right",
    [
        ("dm_control/walker-walks-v0", "dm_control/walker-walk-v0"),
        ("dm_control/walker_walk-v0", "dm_control/walker-walk-v0"),
        ("metaworld/door-open-v2", "metaworld/door-open-v3"),
        ("metaworld/dooropen-v3", "metaworld/door-open-v3"),
    ],
)
def test_bad_family_ids_name_close_matches(wrong, right):
    with pytest.raises(UsageError, match=f"did you mean.*'{right}'"):
        check_env_id(wrong)


TINY = ["--total-timesteps", "600", "--learning-starts", "200", "--unsupervised-steps", "200", "--segment-length",
        "20", "--feedback-frequency", "200", "--labels-per-session", "10", "--total-labels", "20", "--hidden-size",
        "32", "--reward-hidden-size", "32", "--reward-epochs", "3", "--batch-size", "32", "--eval-frequency", "600",
        "--eval-episodes", "1", "--no-cuda", "--torch-threads", "1"]  # fmt: skip


@pytest.mark.parametrize("env_id", ["dm_control/walker-walk-v0", "metaworld/door-open-v3"])
def test_a_tiny_pebble_run_on_each_family(env_id, tmp_path):
    result = run_script("sac_rlhf.py", "--env-id", env_id, *TINY, "--runs-dir", str(tmp_path), "--run-name", "r")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["env_id"] == env_id and summary["total_timesteps"] == 600 and 10 <= summary["labels_used"] <= 20
    assert len(summary["eval_history"]) == 1
    if family(env_id) == "metaworld":  # the success rate is evaluated and can be a sweep's metric
        assert summary["final_success_rate"] in (0.0, 1.0) and summary["success_history"][0][0] == 600
        assert "success=" in result.stdout
    else:
        assert "final_success_rate" not in summary
        assert 0 <= summary["final_eval_return"] <= 1000  # rewards in [0, 1], 1000 steps


PPO_TINY = ["--total-timesteps", "2048", "--num-envs", "2", "--num-steps", "256", "--num-minibatches", "4",
            "--update-epochs", "2", "--unsupervised-steps", "512", "--segment-length", "25", "--feedback-frequency",
            "512", "--labels-per-session", "10", "--total-labels", "20", "--reward-hidden-size", "32",
            "--reward-epochs", "3", "--eval-frequency", "2048", "--eval-episodes", "1", "--no-cuda",
            "--torch-threads", "1"]  # fmt: skip


def test_a_tiny_prefppo_run_on_dm_control(tmp_path):
    result = run_script("pref_ppo.py", "--env-id", "dm_control/cheetah-run-v0", *PPO_TINY, "--runs-dir",
                        str(tmp_path), "--run-name", "r")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["env_id"] == "dm_control/cheetah-run-v0" and summary["labels_used"] == 20
    assert 0 <= summary["final_eval_return"] <= 1000


@pytest.mark.parametrize("env_id", ["dm_control/walker-walk-v0", "dm_control/cheetah-run-v0", "metaworld/door-open-v3"])
def test_the_teachers_thresholds_follow_the_familys_reward_scale(env_id):
    """B-Pref's skip and equal teachers (0.1 of the typical segment return) on DMC rewards in [0, 1] and Meta-World's
    in [0, 10]: the scale comes from the episodes as the trainer computes it, and the thresholds skip or tie some pairs
    of random-policy segments, never most of them. Measured on these seeds: skip 0 % (walker) to 20 % (cheetah, whose
    random policy barely moves), equal 21-30 %."""
    from framework.teacher import SimulatedTeacher, segment_return_scale

    env, rng, length = make_env(env_id, seed=1), np.random.default_rng(0), 50
    episodes, rewards = [], []
    for seed in range(3):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        done, episode = False, []
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            episode.append(reward)
            done = terminated or truncated
        episodes.append((sum(episode), len(episode)))
        rewards.append(np.array(episode))
    assert all(n == max_episode_steps(env_id) for _, n in episodes)
    top = 1.0 if family(env_id) == "dm_control" else 10.0
    flat = np.concatenate(rewards)
    assert 0.0 <= flat.min() and flat.max() <= top
    scale = segment_return_scale(episodes, length)
    assert 0 < scale < top * length
    starts = rng.integers(0, len(flat) - length, (400, 2))
    a, b = (np.stack([flat[s : s + length] for s in starts[:, k]]) for k in (0, 1))
    perfect = SimulatedTeacher().label(a, b, scale)
    assert not np.isnan(perfect).any() and set(np.unique(perfect)) <= {0.0, 1.0}
    skipped = np.isnan(SimulatedTeacher(skip_threshold=0.1).label(a, b, scale)).mean()
    equal = (SimulatedTeacher(equal_threshold=0.1).label(a, b, scale) == 0.5).mean()
    assert skipped <= 0.3 and 0.1 <= equal <= 0.4, (skipped, equal)
    env.close()
