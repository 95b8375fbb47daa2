"""Query clips: real headless MuJoCo rendering from stored physics states, H.264 mp4 that browsers play."""

from __future__ import annotations

import gc
import re
import subprocess

import gymnasium as gym
import imageio_ffmpeg
import numpy as np
import pytest

from framework.clips import ClipRenderer, encode_mp4, get_clip_renderer, render_pair
from framework.envs import make_env


def rollout_states(env_id: str, steps: int, seed: int = 0, action=None) -> np.ndarray:
    env = make_env(env_id, seed)
    _, info = env.reset(seed=seed)
    states = []
    for _ in range(steps):
        a = env.action_space.sample() if action is None else action
        _, _, terminated, truncated, info = env.step(a)
        states.append(info["physics_state"])
        if terminated or truncated:
            _, info = env.reset()
    env.close()
    return np.array(states)


def robot_pixels(frame: np.ndarray) -> int:
    """Hopper's body is orange-brown: red well above green and blue."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((r > g + 40) & (r > b + 60)).sum())


def test_hopper_frames_show_the_robot_and_the_camera_follows_it():
    renderer = get_clip_renderer("Hopper-v5", 128)
    states = rollout_states("Hopper-v5", 20)
    frames = renderer.render(states)
    assert frames.shape == (20, 128, 128, 3) and frames.dtype == np.uint8
    assert frames.mean() > 20 and robot_pixels(frames[0]) > 40
    far = states[:1].copy()
    far[0, 0] += 25.0  # 25 m further along x: a fixed camera would see nothing of the robot
    seen = robot_pixels(renderer.render(far)[0])
    assert seen > 0.7 * robot_pixels(renderer.render(states[:1])[0])


def test_masked_steps_repeat_the_last_frame_darkened():
    renderer = get_clip_renderer("Hopper-v5", 64)
    states = rollout_states("Hopper-v5", 6)
    mask = np.array([1, 1, 1, 0, 0, 0], np.float32)
    frames = renderer.render(states, mask)
    assert np.array_equal(frames[3], frames[2] // 2) and np.array_equal(frames[5], frames[2] // 2)


def test_an_old_rendering_env_collected_does_not_blank_the_renderer():
    renderer = get_clip_renderer("Hopper-v5", 64)
    states = rollout_states("Hopper-v5", 3)
    before = renderer.render(states)
    env = gym.make("Hopper-v5", render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().mean() > 10
    env.close()
    del env
    gc.collect()
    after = renderer.render(states)
    assert after.mean() > 20 and np.abs(after.astype(int) - before.astype(int)).mean() < 1.0


def probe(data: bytes, tmp_path) -> str:
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    return subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr


def test_pairs_are_h264_yuv420p_faststart_with_equal_length_and_rate(tmp_path):
    renderer = get_clip_renderer("Hopper-v5", 96)
    a, b = rollout_states("Hopper-v5", 50, seed=1), rollout_states("Hopper-v5", 50, seed=2)
    left, right = render_pair(renderer, a, np.ones(50), b, np.r_[np.ones(30), np.zeros(20)], fps=25)
    for clip in (left, right):
        assert clip[4:8] == b"ftyp" and clip.index(b"moov") < clip.index(b"mdat")  # playable before fully loaded
        info = probe(clip, tmp_path)
        assert re.search(r"Video: h264.*yuv420p.*96x96", info), info
        assert "25 fps" in info and "Duration: 00:00:02.00" in info, info


def test_every_locomotion_and_arm_env_renders(tmp_path):
    for env_id in [
        "Walker2d-v5",
        "HalfCheetah-v5",
        "Ant-v5",
        "Swimmer-v5",
        "Reacher-v5",
        "Pusher-v5",
        "InvertedPendulum-v5",
    ]:
        frame = get_clip_renderer(env_id, 64).render(rollout_states(env_id, 1))[0]
        assert frame.std() > 5, env_id  # a picture, not a blank


def test_bad_input_is_explained():
    from framework.runtime import UsageError

    with pytest.raises(UsageError, match="even number"):
        ClipRenderer("Hopper-v5", 101)
    with pytest.raises(UsageError, match="MuJoCo"):
        ClipRenderer("CartPole-v1", 64)
    with pytest.raises(ValueError, match="shape"):
        get_clip_renderer("Hopper-v5", 64).render(np.zeros((3, 5)))
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 63, 64, 3), np.uint8), 30)
