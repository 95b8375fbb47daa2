"""Run tracking: TensorBoard always (`runs/<run_name>/`), Weights & Biases with `--track`.

W&B honours its usual environment variables; `WANDB_MODE=offline` writes the run under `runs/<run_name>/wandb/`
without any server or account (`wandb sync` uploads it later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Iterator

from torch.utils.tensorboard import SummaryWriter


def hyperparameter_table(config: dict) -> str:
    """A markdown table of the run's settings, shown in TensorBoard's text tab."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in sorted(config.items()))
    return f"|param|value|\n|-|-|\n{rows}"


class Tracker:
    """One run's logger: scalars to TensorBoard (and W&B when `track`), plus steps-per-second bookkeeping."""

    def __init__(
        self,
        run_name: str,
        config: dict | object,
        runs_dir: str = "runs",
        track: bool = False,
        wandb_project: str = "prefrl",
        wandb_entity: str | None = None,
    ):
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        self.run_name = run_name
        self.run_dir = os.path.join(runs_dir, run_name)
        os.makedirs(self.run_dir, exist_ok=True)
        self.wandb_run = None
        if track:
            import wandb

            self.wandb_run = wandb.init(
                project=wandb_project,
                entity=wandb_entity,
                name=run_name,
                config=config,
                dir=self.run_dir,
                sync_tensorboard=True,
                save_code=True,
                reinit="finish_previous",
            )
        self.writer = SummaryWriter(self.run_dir)
        self.writer.add_text("hyperparameters", hyperparameter_table(config))
        self._sps_time = time.perf_counter()
        self._sps_step = 0

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def steps_per_second(self, step: int, tag: str = "charts/SPS") -> float:
        """Log and return env steps per second since the previous call (or since the start)."""
        now = time.perf_counter()
        sps = (step - self._sps_step) / max(now - self._sps_time, 1e-9)
        self._sps_time, self._sps_step = now, step
        self.writer.add_scalar(tag, sps, step)
        return sps

    def close(self) -> None:
        self.writer.close()
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.finish()
            wandb.teardown()  # waits until W&B's service process has written everything (finish() may return first)


@contextlib.contextmanager
def timed(totals: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the block to `totals[phase]` (seconds per phase of a run, logged as time/<phase>)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[phase] = totals.get(phase, 0.0) + time.perf_counter() - start
