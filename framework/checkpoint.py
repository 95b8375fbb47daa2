"""Checkpoints and resuming, the same for every script.

Files are written atomically: a crash or a kill mid-write leaves the previous file intact, never a torn one. Each
write goes to a temporary file in the same folder, is flushed to disk, and then renamed over the target (a rename
within one filesystem is atomic on POSIX). `resume_args` reads a run's flags back for `--resume`, `rng_states`
captures every random state a run draws from, and `Checkpointer` decides when `<run>/checkpoint.pt` is written.
"""

from __future__ import annotations

import fcntl
import io
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from framework.runtime import UsageError, on_interrupt, resumed_args

T = TypeVar("T")


_claimed: dict[str, Any] = {}  # run folders this process holds: real path -> the open lock file


def claim_run_folder(run_dir: str) -> None:
    """Hold `<run_dir>/.lock` for as long as this process lives (or until `release_run_folder`): a second process
    that opens the same run folder (a `--resume` given twice, a requeued job whose first start still runs) is refused
    in one line instead of writing the same checkpoint, labels and logs as the first. The kernel drops the lock when
    its holder dies, however it dies, so a killed run is never locked out. Where the filesystem has no locks, nothing
    is held."""
    key = os.path.realpath(run_dir)
    if key in _claimed:
        return
    lock = open(os.path.join(run_dir, ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise UsageError(
            f"run folder {run_dir} is in use by another process (pid {holder}); wait for it to end or stop it first"
        ) from None
    except OSError:  # no locks on this filesystem
        lock.close()
        return
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _claimed[key] = lock


def release_run_folder(run_dir: str) -> None:
    """Let another process open the run folder (the run has ended)."""
    lock = _claimed.pop(os.path.realpath(run_dir), None)
    if lock is not None:
        lock.close()


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0o022)  # (read it back: mkstemp makes 0600 files, a plain open() honours the umask)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # lab-mates on a shared cluster can read runs as they read any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(obj: Any, path: str) -> None:
    """`torch.save` of `obj` (tensors, state dicts, NumPy arrays, RNG states) to `path`, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by `save_checkpoint`; a missing or unreadable file is a `UsageError`."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist")
    try:
        # Our own files hold NumPy arrays and RNG states besides tensors, so full unpickling is needed.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UsageError(f"checkpoint {path!r} could not be read: {type(err).__name__}: {err}") from err


RESUME_OVERRIDABLE = ("feedback_server_url", "feedback_server_autostart", "feedback_timeout")
"""Flags that a `--resume` may change (the feedback server can move while a run is stopped); all others come from
the run's checkpoint."""


def resume_args(args: T) -> tuple[T, dict | None]:
    """With `--resume <run folder>`: the flags the run was started with (but the `RESUME_OVERRIDABLE` ones given on
    this command line), pointed at that folder, and its checkpoint. Without: `args` unchanged and no checkpoint."""
    if args.resume is None:
        return args, None
    path = os.path.join(args.resume, "checkpoint.pt")
    if not os.path.isfile(path):
        raise UsageError(f"--resume {args.resume!r}: no checkpoint.pt in that folder")
    checkpoint = load_checkpoint(path)
    folder = os.path.normpath(args.resume)
    args = resumed_args(args, checkpoint["args"], RESUME_OVERRIDABLE)
    args.resume, args.runs_dir, args.run_name = folder, os.path.dirname(folder), os.path.basename(folder)
    return args, checkpoint


def generator_state(generator: np.random.Generator | np.random.RandomState) -> dict | tuple:
    """A NumPy generator's state: a new-style `Generator`'s, or a legacy `RandomState`'s (dm_control's tasks draw
    from one)."""
    if isinstance(generator, np.random.RandomState):
        return generator.get_state()
    return dict(generator.bit_generator.state)


def set_generator_state(generator: np.random.Generator | np.random.RandomState, state: dict | tuple) -> None:
    if isinstance(generator, np.random.RandomState):
        generator.set_state(state)
    else:
        generator.bit_generator.state = state


def rng_states(device: torch.device, **generators: np.random.Generator | dict | tuple) -> dict:
    """Every random state a run draws from: Python's, torch's (CUDA's on a GPU) and the named NumPy generators (a
    dict or tuple is taken as a state already captured, such as an env's RNG before its last reset)."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "numpy": {k: g if isinstance(g, (dict, tuple)) else generator_state(g) for k, g in generators.items()},
    }


def restore_rng_states(saved: dict, device: torch.device, **generators: np.random.Generator) -> None:
    """Put back what `rng_states` captured, into the same named generators."""
    random.setstate(saved["python"])
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved.get("cuda") is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])
    for name, generator in generators.items():
        set_generator_state(generator, saved["numpy"][name])


class Checkpointer:
    """A run's `<run>/checkpoint.pt`, written from what `snapshot()` returns: every `frequency` env steps (at the
    first moment the caller finds it `due`), when interrupted (`save_on_interrupt`) and at the end. `progress` is the
    run's progress record: its `global_step` says where the run is, its `phase_time["checkpoint"]` gets the time
    spent writing."""

    def __init__(self, run_dir: str, frequency: int, snapshot: Callable[[], dict], progress):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, "checkpoint.pt")
        self.frequency, self.snapshot, self.progress = frequency, snapshot, progress
        self.next = self._after(self.step())

    def step(self) -> int:
        return self.progress.global_step

    def _after(self, step: int) -> float:
        return (step // self.frequency + 1) * self.frequency if self.frequency else math.inf

    def due(self) -> bool:
        return self.step() >= self.next

    def save(self, reason: str) -> None:
        start, step = time.perf_counter(), self.step()
        save_checkpoint(self.snapshot(), self.path)
        times = self.progress.phase_time
        times["checkpoint"] = times.get("checkpoint", 0.0) + time.perf_counter() - start
        self.next = self._after(step)
        print(f"saved checkpoint at step {step} ({reason})", flush=True)

    def save_on_interrupt(self, *close: Callable[[], None]) -> None:
        """On Ctrl-C or SIGTERM (see `runtime.run_main`): save, call each of `close`, say how to continue."""

        def stop() -> None:
            self.save("interrupted")
            for fn in close:
                fn()
            print(f"interrupted at step {self.step()}; continue with --resume {self.run_dir}", file=sys.stderr)

        on_interrupt(stop)


@dataclass
class OracleProgress:
    """Where an oracle run (`sac.py`, `ppo.py`) stands, saved in its checkpoints: the env step, its evaluations, the
    time per phase, and whether an episode is under way (periodic checkpoints wait for an episode's end)."""

    global_step: int = 0
    iteration: int = 0  # ppo.py: rollouts collected
    evals: Any = None  # framework.evaluation.EvalHistory
    phase_time: dict[str, float] = field(default_factory=dict)
    mid_episode: bool = True

    def __post_init__(self):
        from framework.evaluation import EvalHistory

        self.evals = self.evals if self.evals is not None else EvalHistory()

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        from framework.evaluation import EvalHistory

        self.__dict__.update({**state, "evals": EvalHistory(**state["evals"])})
