"""Query clips: render stored physics states to frames and encode them as H.264 mp4 for the labeling page.

Clips are rendered after the fact, only for the segments put to a human, from the physics states the replay buffer
keeps (`info["physics_state"]`, laid out by `framework.envs`); training never renders. Rendering is headless
(MUJOCO_GL=egl or osmesa) with one `mujoco.Renderer` per (env, size) and thread, on its own `MjData`: environments
that render and are garbage-collected cannot blank it. Quality is set for speed: no shadows, no reflections, no
multisampling (about 75 frames/s at 480x480 and 140 at 256x256 on a 2-core CPU, against 10-15 at the default quality).

The camera is the family's (`framework.envs.clip_camera`): it follows the body with the model's `track` camera when it
has one (Hopper, Walker2d, HalfCheetah, Ant, Swimmer; Hopper-v5's default view is fixed and the robot walks out of
frame) and dm_control's body-tracking camera (walker, cheetah, quadruped); Meta-World gets a fixed view of the table
that shows the arm, the object and the goal, upright; otherwise the env's default view.

Atari games are not rendered: their clips are the colour frames the ALE showed (`info["screen"]`, 210x160), kept
with the segment and scaled up by a whole factor without smoothing (pixel art stays sharp), at 15 frames/s (one frame
per env step of 4 emulator frames).

Both clips of a pair get the same number of frames and frame rate: steps after an episode ended inside a segment
(mask 0) repeat the last frame, darkened, so the viewer sees that the episode was over.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
import threading

import gymnasium as gym
import mujoco
import numpy as np

from framework.envs import (
    ATARI_FRAME_SKIP,
    check_env_id,
    clip_camera,
    control_timestep,
    family,
    mujoco_model_data,
    physics_state_size,
    write_physics_state,
)
from framework.runtime import UsageError, setup_headless_rendering

_RENDERERS: dict[tuple[str, int, int], ClipRenderer] = {}


class ClipRenderer:
    """Frames of `env_id` from physics states, `size` x `size` pixels, with a camera that follows the body."""

    def __init__(self, env_id: str, size: int = 320):
        if size < 16 or size % 2:
            raise UsageError(f"clip size must be an even number of pixels >= 16, got {size}")
        setup_headless_rendering()
        check_env_id(env_id)
        env = gym.make(env_id)
        model, _ = mujoco_model_data(env)
        if model is None:
            env.close()
            raise UsageError(f"clips can be rendered only for MuJoCo environments; {env_id!r} is not one")
        self.env_id, self.size = env_id, size
        self.model = model
        self.fps = int(round(1.0 / control_timestep(env)))
        cam_config = dict(getattr(getattr(env.unwrapped, "mujoco_renderer", None), "default_cam_config", None) or {})
        env.close()

        self.model.vis.quality.offsamples = 0  # no multisampling
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, size)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, size)
        self.data = mujoco.MjData(self.model)
        self.renderer = mujoco.Renderer(self.model, size, size)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

        camera = clip_camera(env_id, self.model)
        if isinstance(camera, dict):  # a family's fixed view
            cam_config, camera = camera, None
        if camera is not None:
            self.camera: int | mujoco.MjvCamera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        else:
            cam = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(self.model, cam)
            for key, value in cam_config.items():
                if key == "lookat":
                    cam.lookat[:] = value
                elif hasattr(cam, key):
                    setattr(cam, key, value)
            if cam_config.get("trackbodyid", -1) >= 0:
                cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            self.camera = cam

    @property
    def physics_dim(self) -> int:
        return physics_state_size(self.model)

    def render(self, physics: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(T, physics_dim) states -> (T, size, size, 3) uint8 frames; masked steps repeat the last live frame,
        darkened."""
        physics = np.asarray(physics, dtype=np.float64)
        if physics.ndim != 2 or physics.shape[1] != self.physics_dim:
            raise ValueError(f"expected states of shape (T, {self.physics_dim}) for {self.env_id}, got {physics.shape}")
        mask = np.ones(len(physics), bool) if mask is None else np.asarray(mask) > 0
        frames = np.empty((len(physics), self.size, self.size, 3), np.uint8)
        last = None
        for t, state in enumerate(physics):
            if mask[t] or last is None:
                write_physics_state(self.model, self.data, state)
                mujoco.mj_forward(self.model, self.data)
                self.renderer.update_scene(self.data, camera=self.camera)
                self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                last = self.renderer.render(out=frames[t])
                if not mask[t]:
                    frames[t] //= 2
            else:
                frames[t] = last // 2
        return frames


class ScreenClips:
    """Clips of an Atari game from its stored colour frames (T, 210, 160, 3): scaled by the whole factor that brings
    the width nearest to `size` (at least 1), nearest-neighbour; the same interface as `ClipRenderer`."""

    SCREEN = (210, 160)

    def __init__(self, env_id: str, size: int = 320):
        if size < 16 or size % 2:
            raise UsageError(f"clip size must be an even number of pixels >= 16, got {size}")
        self.env_id, self.size = env_id, size
        self.scale = max(1, round(size / self.SCREEN[1]))
        self.fps = int(round(60 / ATARI_FRAME_SKIP))
        self.physics_dim = self.SCREEN[0] * self.SCREEN[1] * 3  # what one step keeps for its clip

    def render(self, screens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(T, 210, 160, 3) colour frames -> (T, 210 k, 160 k, 3) uint8; masked steps repeat the last live frame,
        darkened."""
        screens = np.asarray(screens, dtype=np.uint8)
        if screens.ndim == 2 and screens.shape[1] == self.physics_dim:  # as segments keep them, one row per step
            screens = screens.reshape(len(screens), *self.SCREEN, 3)
        if screens.ndim != 4 or screens.shape[1:] != (*self.SCREEN, 3):
            raise ValueError(f"expected screens of shape (T, 210, 160, 3) for {self.env_id}, got {screens.shape}")
        mask = np.ones(len(screens), bool) if mask is None else np.asarray(mask) > 0
        live = np.maximum.accumulate(np.where(mask, np.arange(len(mask)), 0))  # the last live step at or before t
        shown = screens[live]
        shown[~mask] //= 2
        return shown.repeat(self.scale, axis=1).repeat(self.scale, axis=2)


def get_clip_renderer(env_id: str, size: int = 320) -> ClipRenderer | ScreenClips:
    """The calling thread's renderer for (env_id, size), made on first use and kept (one GL context each: a GL
    context is current in one thread at a time, and clips are rendered on a background thread while people label
    asynchronously)."""
    if family(env_id) == "atari":
        return ScreenClips(env_id, size)
    key = (env_id, size, threading.get_ident())
    if key not in _RENDERERS:
        _RENDERERS[key] = ClipRenderer(env_id, size)
        atexit.unregister(close_clip_renderers)
        atexit.register(close_clip_renderers)
    return _RENDERERS[key]


def close_clip_renderers(this_thread: bool = False) -> None:
    """Free the GL contexts before EGL shuts down at exit (registered after the first context, so it runs first), or
    only the calling thread's, by a thread that rendered and ends."""
    for key in [k for k in _RENDERERS if not this_thread or k[2] == threading.get_ident()]:
        clip_renderer = _RENDERERS.pop(key)
        try:
            clip_renderer.renderer.close()
        except Exception:
            pass


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """(T, H, W, 3) uint8 frames -> H.264 mp4 bytes (yuv420p, moov atom first: browsers start playing at once)."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2 or t == 0:
        raise ValueError(f"expected (T>0, even H, even W, 3) frames, got {frames.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            f"{fps:g}",
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            path,
        ]
        result = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed to encode a clip: {result.stderr.decode(errors='replace').strip()}")
        with open(path, "rb") as f:
            return f.read()


def render_pair(
    renderer: ClipRenderer | ScreenClips,
    physics_a: np.ndarray,
    mask_a: np.ndarray,
    physics_b: np.ndarray,
    mask_b: np.ndarray,
    fps: float,
) -> tuple[bytes, bytes]:
    """The two clips of one query (A left, B right), same length and frame rate."""
    if len(physics_a) != len(physics_b):
        raise ValueError(f"the two segments differ in length: {len(physics_a)} and {len(physics_b)}")
    return (encode_mp4(renderer.render(physics_a, mask_a), fps), encode_mp4(renderer.render(physics_b, mask_b), fps))
