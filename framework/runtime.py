"""What every script needs around its algorithm: one-line user errors, the CLI entry point, device and seeding."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


@dataclass
class RunArgs:
    """The flags every script shares (naming, seeding, device, tracking, run folder); each script's `Args`
    extends it with its algorithm's flags."""

    exp_name: str = "run"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """use CUDA when available (falls back to the CPU with a message)"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default)"""
    track: bool = False
    """log to Weights & Biases too (honours WANDB_MODE=offline)"""
    wandb_project_name: str = "prefrl"
    """the W&B project"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""
    runs_dir: str = "runs"
    """folder that holds one sub-folder per run"""
    run_name: str | None = None
    """name of the run folder (default: <env>__<exp>__<seed>__<time>)"""
    capture_video: bool = False
    """record the first episode of every evaluation to <run>/videos"""
    progress_bar: bool = True
    """a progress bar on the console (steps, steps/s, last evaluation, labels); only where stderr is a terminal"""


class UsageError(ValueError):
    """A mistake in what the user asked for (a flag value, a path, an env id).

    Scripts print it as one line, `error: <message>`, and exit with status 2 instead of showing a traceback. The
    message says what was wrong, the value given, and what is allowed.
    """


COMMAND_LINE: list[str] | None = None
"""The arguments `run_cli` parsed; None when a script's main() is called from Python (a sweep in process)."""


def flags_given(argv: list[str]) -> set[str]:
    """Field names of the flags written on a command line: `--feedback-timeout 0`, `--feedback-timeout=0` and
    `--no-feedback-server-autostart` give feedback_timeout and feedback_server_autostart."""
    names = set()
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def resumed_args(args: T, saved: dict, overridable: tuple[str, ...]) -> T:
    """The flags a resumed run was started with (`saved`), except the `overridable` ones given on this command line,
    with whatever value, defaults included (`--feedback-timeout 0` lifts a saved limit). Without a command line
    (main() called from Python) an overridable flag counts as given when it differs from its default."""
    if COMMAND_LINE is not None:
        given = flags_given(COMMAND_LINE) & set(overridable)
    else:
        given = {f.name for f in fields(args) if f.name in overridable and getattr(args, f.name) != f.default}
    return type(args)(
        **{
            f.name: getattr(args, f.name) if f.name in given else saved.get(f.name, getattr(args, f.name))
            for f in fields(args)
        }
    )


def run_cli(args_type: type[T], main: Callable[[T], object], argv: list[str] | None = None) -> None:
    """Parse `args_type` with tyro and run `main(args)` through `run_main`.

    A `UsageError` becomes one line on stderr and exit status 2; any other exception propagates (non-zero exit, so a
    crash never looks like success to a sweep or a batch system).
    """
    import tyro

    global COMMAND_LINE
    COMMAND_LINE = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(args_type, args=argv)
    try:
        run_main(main, args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


_ON_INTERRUPT: list[Callable[[], None]] = []


def on_interrupt(callback: Callable[[], None]) -> None:
    """Have `run_main` call `callback` (save a checkpoint, say how to continue) if this run is interrupted."""
    _ON_INTERRUPT.append(callback)


def run_main(main: Callable[[T], object], args: T) -> object:
    """`main(args)` as a run that can be stopped cleanly: SIGTERM (a batch system's preemption, `kill`) raises
    `Interrupted`; on it or on Ctrl-C the callbacks given to `on_interrupt` run, latest first, with both signals
    ignored until they are done, and the process exits with status 130."""
    _ON_INTERRUPT.clear()
    try:
        with sigterm_raises_interrupted():
            return main(args)
    except (KeyboardInterrupt, Interrupted):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        for callback in reversed(_ON_INTERRUPT):
            callback()
        sys.exit(130)
    finally:
        _ON_INTERRUPT.clear()


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def setup_torch(args: RunArgs) -> torch.device:
    """Seed everything (`--seed`, `--torch-deterministic`), set torch's CPU threads (`--torch-threads`) and pick the
    device (`--cuda`)."""
    seed_everything(args.seed, args.torch_deterministic)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    return pick_device(args.cuda)


def pick_device(cuda: bool) -> torch.device:
    """`cuda:0` when asked for and available; otherwise the CPU, saying so when CUDA was asked for."""
    if cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if cuda:
        print("CUDA was requested but is not available; running on the CPU.", file=sys.stderr)
    return torch.device("cpu")


def compile_steps(args, device: torch.device, *steps):
    """The per-step functions of a run as its flags ask: unchanged; torch.compile'd (`--compile`); or compiled to
    replay as CUDA graphs (`--cudagraphs`, CUDA only: on the CPU it says so and compiles without them)."""
    cudagraphs = getattr(args, "cudagraphs", False)
    if cudagraphs and device.type != "cuda":
        print("CUDA graphs need a GPU; compiling without them on the CPU.", file=sys.stderr)
        cudagraphs = False
    if cudagraphs:
        return [torch.compile(step, mode="reduce-overhead") for step in steps]
    if getattr(args, "compile", False) or getattr(args, "cudagraphs", False):
        return [torch.compile(step) for step in steps]
    return list(steps)


def default_run_name(env_id: str, exp_name: str, seed: int) -> str:
    """`<env>__<exp>__<seed>__<unix time>`, CleanRL's run naming (unique per launch, sortable)."""
    import time

    return f"{env_id.replace('/', '-')}__{exp_name}__{seed}__{int(time.time())}"


def setup_headless_rendering() -> None:
    """Default MuJoCo to EGL off-screen rendering when no display is set (a user's own MUJOCO_GL wins)."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ.get("MUJOCO_GL", "egl"))


class Interrupted(Exception):
    """Raised inside a training loop when the process receives SIGTERM (a batch system's preemption, `kill`)."""


@contextlib.contextmanager
def sigterm_raises_interrupted() -> Iterator[None]:
    """Within this block SIGTERM raises `Interrupted`, so a run can save a checkpoint as it does on Ctrl-C."""

    def handler(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Within this block Ctrl-C and SIGTERM wait: the block finishes, then KeyboardInterrupt or `Interrupted` is
    raised. For a few seconds of work whose state changes must land together (labels stored, reward model trained,
    session counted), so a checkpoint taken on the interrupt never holds half of them."""
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt() if caught[0] == signal.SIGINT else Interrupted()
