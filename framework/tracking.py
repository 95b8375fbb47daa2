"""Run tracking: TensorBoard always (`runs/<run_name>/`), Weights & Biases with `--track`.

W&B honours its usual environment variables; `WANDB_MODE=offline` writes the run under `runs/<run_name>/wandb/`
without any server or account (`wandb sync` uploads it later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from framework.checkpoint import atomic_write_bytes, claim_run_folder, release_run_folder

BAR_FACTS = {
    "eval/episodic_return": "eval",
    "eval/teacher_return": "teacher",
    "feedback/labels_used": "labels",
}
"""What the progress bar shows besides steps and steps/s: the last value of these tags, under these names."""


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
        claim_run_folder(self.run_dir)  # before anything is written there
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
        print(f"run folder: {self.run_dir} (tensorboard --logdir {runs_dir})", flush=True)
        # a bar where a person watches (a terminal, and no feedback session drawing its own bar); logs stay clean
        show = config.get("progress_bar", True) and config.get("teacher_feedback_mode") != "human"
        self.bar = tqdm(
            total=config.get("total_timesteps"),
            unit="step",
            disable=not (show and sys.stderr.isatty()),
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )
        self.bar_facts: dict[str, str] = {}

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        for tag, fact in BAR_FACTS.items():
            if tag in values:
                self.bar_facts[fact] = f"{values[tag]:.1f}" if isinstance(values[tag], float) else str(values[tag])

    def steps_per_second(self, step: int, tag: str = "charts/SPS") -> float:
        """Log and return env steps per second since the previous call (or since the start)."""
        now = time.perf_counter()
        sps = (step - self._sps_step) / max(now - self._sps_time, 1e-9)
        self._sps_time, self._sps_step = now, step
        self.writer.add_scalar(tag, sps, step)
        if not self.bar.disable:
            self.bar.n = step
            facts = [f"{sps:.0f} steps/s", *(f"{k} {v}" for k, v in self.bar_facts.items())]
            self.bar.set_postfix_str(", ".join(facts))
        return sps

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.finish()
            wandb.teardown()  # waits until W&B's service process has written everything (finish() may return first)
        release_run_folder(self.run_dir)


@contextlib.contextmanager
def timed(totals: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the block to `totals[phase]` (seconds per phase of a run, logged as time/<phase>)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[phase] = totals.get(phase, 0.0) + time.perf_counter() - start


SUMMARY_KEYS = {
    "algorithm": "the script's name: sac, ppo, sac_rlhf or pref_ppo",
    "env_id": "the Gymnasium environment id",
    "seed": "--seed",
    "total_timesteps": "environment steps taken (fewer than --total-timesteps after an early stop)",
    "stop_reason": "budget, or why the run stopped early",
    "final_eval_return": "mean TRUE return of the last evaluation",
    "best_eval_return": "the best evaluation's mean TRUE return",
    "eval_history": "[env step, mean TRUE return] of every evaluation",
    "labels_used": "labels the teacher gave (skipped pairs cost none; 0 for the oracles)",
    "sps": "env steps per second over the run, evaluation and checkpoint writing excluded (a resumed run: over the "
    "steps since it resumed; NaN when it resumed at its end)",
    "learning_sps": "env steps per second from the first step the agent learns from its reward to the end (after "
    "random steps and pre-exploration; feedback sessions included), evaluation and checkpoint writing excluded",
    "wall_time_s": "seconds from the start of training (a resumed run: of the resumed invocation) to its end",
    "phase_time_s": "seconds spent in each phase (evaluation, checkpoint, query, label, reward_training, ...)",
    "run_dir": "the run folder",
}
"""The keys every script writes to `<run>/summary.json`, with their meaning; scripts add their own after these."""


TENSORBOARD_TAGS = {
    "charts/episodic_return": "TRUE return of each training episode",
    "charts/episodic_length": "length of each training episode",
    "charts/episodic_teacher_return": "the user-written teacher reward's return of each training episode",
    "charts/SPS": "env steps per second since the previous log",
    "charts/learning_rate": "PPO's learning rate (annealed)",
    "charts/agent_reward_mean": "mean reward the agent learns from (learned, exploration or RUNE-augmented)",
    "eval/episodic_return": "mean TRUE return of an evaluation (deterministic policy)",
    "eval/episodic_return_std": "std of the evaluation returns",
    "eval/episodic_length": "mean evaluation episode length",
    "eval/teacher_return": "mean teacher-reward return of an evaluation",
    "losses/qf_loss": "SAC critic loss (mean of the two critics)",
    "losses/qf1_values": "SAC first critic's mean Q value",
    "losses/actor_loss": "SAC actor loss",
    "losses/alpha": "SAC entropy coefficient",
    "losses/value_loss": "PPO value loss",
    "losses/policy_loss": "PPO clipped surrogate loss",
    "losses/entropy": "PPO policy entropy",
    "losses/approx_kl": "PPO approximate KL divergence",
    "losses/clipfrac": "PPO fraction of clipped ratios",
    "losses/explained_variance": "PPO explained variance of the value function",
    "feedback/labels_used": "labels given so far (skipped pairs excluded: they cost no label)",
    "feedback/labels_stored": "labelled pairs the reward model trains on",
    "feedback/skipped": "pairs the teacher skipped in the session",
    "feedback/sessions": "feedback sessions done",
    "feedback/teacher_prefers_b": "share of labels preferring the right clip (a position bias shows here)",
    "feedback/labels_used_at_eval": "labels given before an evaluation (plots return against labels)",
    "feedback/answer_delay_steps": "asynchronous feedback: mean env steps the agent took between asking and learning",
    "reward/train_loss": "reward-model loss in the session's last epoch",
    "reward/train_accuracy": "reward-model accuracy on its training pairs",
    "reward/val_accuracy": "reward-model accuracy on held-out pairs",
    "reward/epochs": "epochs the reward model trained in the session",
    "reward/pearson": "Pearson correlation of learned and true per-step rewards on recent steps",
    "reward/spearman": "Spearman correlation of learned and true per-step rewards on recent steps",
    "reward/rime_trusted": "--rime: share of the training labels trusted in the session's last epoch",
    "reward/rime_flipped": "--rime: training labels flipped in the session's last epoch",
    "reward/warm_start_loss": "--reward-warm-start: squared error of the reward model against the exploration reward",
    "time/<phase>": "seconds spent so far in each phase (rollout, agent_update, query, label, reward_training, ...)",
}
"""Every TensorBoard tag the scripts write, one per quantity, with its meaning (`time/` takes any phase name)."""


class RunClock:
    """Wall time of a run for its summary: steps per second over the whole run and over named stretches of it
    (`begin`), with the time of the `EXCLUDED` phases of `times` (evaluation, checkpoint writing) taken out. A resumed
    run's clock starts at the resume (`step`): its rates are those of the steps it takes itself, on the machine it
    runs on, which after a SLURM requeue may not be the first one's."""

    EXCLUDED = ("evaluation", "checkpoint")

    def __init__(self, times: dict[str, float], step: int = 0):
        self.times = times
        self.marks: dict[str, tuple[float, int, float]] = {"run": (time.perf_counter(), step, self._excluded())}

    def _excluded(self) -> float:
        return sum(self.times.get(phase, 0.0) for phase in self.EXCLUDED)

    def begin(self, name: str, step: int) -> None:
        """Start the stretch `name` after env step `step` (later calls for the same name are ignored)."""
        if name not in self.marks:
            self.marks[name] = (time.perf_counter(), step, self._excluded())

    def rate(self, name: str, step: int) -> float:
        """Env steps per second from the start of `name` to env step `step`, now (NaN if it never began)."""
        if name not in self.marks or step <= self.marks[name][1]:
            return math.nan
        start, first, excluded = self.marks[name]
        return (step - first) / max(time.perf_counter() - start - (self._excluded() - excluded), 1e-9)

    def summary(self, step: int) -> dict:
        """The summary.json keys of the clock: `sps`, `learning_sps` (from `begin("learning", ...)`), `wall_time_s`
        and `phase_time_s`."""
        return {
            "sps": self.rate("run", step),
            "learning_sps": self.rate("learning", step),
            "wall_time_s": time.perf_counter() - self.marks["run"][0],
            "phase_time_s": self.times,
        }


def write_summary(run_dir: str, summary: dict) -> dict:
    """Write `<run>/summary.json` atomically: the `SUMMARY_KEYS` first (all of them must be in `summary` but
    `run_dir`), then the script's own."""
    summary = {**summary, "run_dir": run_dir}
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise KeyError(f"summary.json lacks {missing}")
    ordered = {**{k: summary[k] for k in SUMMARY_KEYS}, **summary}
    atomic_write_bytes(os.path.join(run_dir, "summary.json"), json.dumps(ordered, indent=2).encode())
    labels = f", {summary['labels_used']} labels" if summary["labels_used"] else ""
    print(
        f"done: {summary['total_timesteps']} steps in {summary['wall_time_s']:.0f} s, final evaluation return "
        f"{summary['final_eval_return']:.1f} (best {summary['best_eval_return']:.1f}){labels}; {run_dir}/summary.json",
        flush=True,
    )
    return ordered
