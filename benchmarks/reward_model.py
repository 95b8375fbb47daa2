"""Reward-model settings, offline: how well PEBBLE's reward ensemble ranks behaviour it never saw, per setting.

Each setting is a set of `sac_rlhf.py` reward-model flags. For each pair of replay buffers (train, test), the model
learns as a run would: the label budget is asked in sessions spread like a run's (the first after pre-exploration,
then evenly), each session's pairs drawn uniformly from the part of the training buffer filled by then, labelled by
B-Pref's simulated teacher (perfect unless the setting says otherwise) and learned with `sac_rlhf.py`'s own
`train_reward_model`. The trained model then meets the TEST buffer, another run's:
- pairs right: the fraction of 4,000 random segment pairs it orders as their true returns do (ties left out);
- closer half: the same over the half of those pairs whose true returns are closest (what query selection asks about);
- Pearson: the correlation of its per-step reward (ensemble mean) with the true reward over the whole test buffer.

The buffers are those of finished `sac_rlhf.py` runs (`--runs`, each holding checkpoint.pt; buffer i trains, buffer
i + 1 tests, round the list), which is the data a reward model meets in training. Without `--runs`, buffers of random
actions around a per-episode bias stand in (quick, but easier than an agent's data).

Query selection is uniform here (a run's disagreement sampling needs the run's own model at each session), so settings
may only change the reward model, its training, RIME, SURF and the teacher's beta, gamma and mistakes.

    python benchmarks/reward_model.py --runs R1 R2 R3                      # the default settings below
    python benchmarks/reward_model.py --runs R1 R2 --settings "default=" "norm=--reward-input-norm"
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import tyro

from common import RESULTS, ROOT, machine_description, markdown_table, save_markdown

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from data_helpers import biased_random_buffer  # noqa: E402
from framework import sac_rlhf as algo  # noqa: E402
from framework.checkpoint import load_checkpoint  # noqa: E402
from framework.teacher import SimulatedTeacher  # noqa: E402
from toolbox.reward_ranking import saved_replay_buffer  # noqa: E402

SETTINGS = (
    "default=",
    "50 epochs every session=--reward-target-accuracy 1.01",
    "input norm=--reward-input-norm",
    "input norm + 50 epochs=--reward-input-norm --reward-target-accuracy 1.01",
)
ALLOWED = ("reward_", "rime", "surf", "teacher_beta", "teacher_gamma", "teacher_eps_mistake")


@dataclass
class Args:
    runs: tuple[str, ...] = ()
    """finished sac_rlhf.py run folders whose replay buffers (checkpoint.pt) are used, at least two (default: random
    HalfCheetah-v5 buffers)"""
    settings: tuple[str, ...] = SETTINGS
    """settings to compare, each "name=flags" with sac_rlhf.py's reward-model flags ("default=": none)"""
    labels: int = 300
    """label budget of each model"""
    sessions: int = 10
    """feedback sessions the budget is spread over"""
    first_session: int = 5000
    """env step of the first session (sac_rlhf.py: --learning-starts + --unsupervised-steps); later ones are spread
    evenly over the rest of the training buffer"""
    test_pairs: int = 4000
    """random segment pairs of the test buffer to rank"""
    seed: int = 1
    """seed of the pairs drawn, the teacher and the models"""
    random_steps: int = 50_000
    """steps of each random buffer, without --runs"""
    name: str = "reward_model"
    """results file: benchmarks/results/<name>.md and .png"""


def parse_setting(text: str) -> tuple[str, algo.Args]:
    """ "name=flags" -> (name, sac_rlhf.py's Args with those flags); one-line errors for anything else."""
    if "=" not in text:
        raise SystemExit(f"--settings {text!r}: write name=flags, e.g. 'norm=--reward-input-norm'")
    name, flags = text.split("=", 1)
    try:
        parsed = tyro.cli(algo.Args, args=shlex.split(flags), console_outputs=False)
    except SystemExit:
        raise SystemExit(f"--settings {text!r}: not flags of sac_rlhf.py") from None
    default = algo.Args()
    changed = [f.name for f in fields(algo.Args) if getattr(parsed, f.name) != getattr(default, f.name)]
    other = [c for c in changed if not c.startswith(ALLOWED)]
    if other:
        raise SystemExit(
            f"--settings {name!r}: {', '.join('--' + c.replace('_', '-') for c in other)} is not a reward-model, "
            f"RIME, SURF or teacher flag (queries here are drawn uniformly, without a run)"
        )
    return name.strip() or "default", parsed


def run_buffer(folder: str):
    """The replay buffer a finished sac_rlhf.py run saved in its checkpoint.pt, with the env it ran."""
    path = Path(folder) / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"--runs {folder!r}: no checkpoint.pt there (a finished sac_rlhf.py run writes one)")
    checkpoint = load_checkpoint(str(path))
    return saved_replay_buffer(checkpoint), checkpoint["args"]["env_id"]


def with_x(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return s | {"x": np.concatenate([s["obs"], s["actions"]], -1)}


def session_steps(args: Args, size: int) -> list[int]:
    """How much of the training buffer is filled at each session."""
    if not args.first_session < size:
        raise SystemExit(f"--first-session {args.first_session} must be below the buffers' size ({size})")
    return [args.first_session + k * ((size - args.first_session) // args.sessions) for k in range(args.sessions)]


def train(setting: algo.Args, train_rb, steps: list[int], budget: int, seed: int):
    """A reward ensemble trained as a run trains it, on uniformly drawn pairs labelled session by session."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_dim = train_rb.obs.shape[1] + train_rb.actions.shape[1]
    ensemble = algo.RewardEnsemble(
        in_dim, setting.reward_ensemble_size, setting.reward_hidden_size, setting.reward_depth, setting.reward_dropout,
        input_norm=setting.reward_input_norm,
    )  # fmt: skip
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=setting.reward_lr, weight_decay=setting.reward_weight_decay)
    prefs = algo.PreferenceBuffer(budget, setting.segment_length, in_dim, setting.reward_val_fraction)
    teacher = SimulatedTeacher(setting.teacher_beta, setting.teacher_gamma, setting.teacher_eps_mistake, seed=seed)
    per_session, size = -(-budget // len(steps)), train_rb.size
    for step in steps:
        n = min(per_session, budget - prefs.size)
        if n <= 0:
            break
        train_rb.size = step  # the run had only this much at that session
        a, b = (with_x(train_rb.sample_segments(n, setting.segment_length, rng)) for _ in range(2))
        unlabeled = None
        if setting.surf:
            u = [with_x(train_rb.sample_segments(n * setting.surf_mu, setting.segment_length, rng)) for _ in "ab"]
            unlabeled = {"seg_a": u[0]["x"], "mask_a": u[0]["mask"], "seg_b": u[1]["x"], "mask_b": u[1]["mask"]}
        train_rb.size = size
        labels = teacher.label(a["teacher_rewards"], b["teacher_rewards"], 1.0, a["mask"], b["mask"])
        keep = ~np.isnan(labels)
        prefs.add(a["x"][keep], a["mask"][keep], b["x"][keep], b["mask"][keep], labels[keep], step, rng)
        algo.train_reward_model(ensemble, optimizer, prefs, setting, rng, torch.device("cpu"), unlabeled)
    return ensemble


@torch.no_grad()
def scores(ensemble, test_rb, n: int, seg_len: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(10_000 + seed)  # the same test pairs for every setting
    a, b = (with_x(test_rb.sample_segments(n, seg_len, rng)) for _ in range(2))
    t = torch.from_numpy
    probs = algo.preference_probabilities(ensemble, t(a["x"]), t(a["mask"]), t(b["x"]), t(b["mask"])).mean(0).numpy()
    return_a, return_b = a["true_rewards"].sum(1), b["true_rewards"].sum(1)
    gap = np.abs(return_b - return_a)
    keep = gap > 0
    right = (probs > 0.5) == (return_b > return_a)
    close = keep & (gap <= np.median(gap[keep]))
    x = np.concatenate([test_rb.obs[: test_rb.size], test_rb.actions[: test_rb.size]], 1)
    predicted = ensemble.predict(torch.from_numpy(x))[0].numpy()
    return {
        "pairs right": float(right[keep].mean()),
        "closer half": float(right[close].mean()),
        "Pearson": float(np.corrcoef(predicted, test_rb.true_rewards[: test_rb.size])[0, 1]),
    }


def plot(names: list[str], means: dict[str, list[float]], path: Path) -> None:
    metrics = list(means)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        ax.bar(np.arange(len(names)) + (i - (len(metrics) - 1) / 2) * width, means[metric], width, label=metric)
    ax.set_xticks(np.arange(len(names)), names, rotation=15, ha="right")
    ax.set(ylim=(0, 1.2), ylabel="on held-out data (mean over buffer pairs)")
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(metrics), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args: Args) -> None:
    if not re.fullmatch(r"[a-z0-9_]+", args.name):
        raise SystemExit(f"--name {args.name!r}: use lower-case letters, digits and _ (it becomes a file name)")
    settings = [parse_setting(s) for s in args.settings]
    if len(args.runs) == 1:
        raise SystemExit("--runs: give at least two runs (one trains the model, the next tests it)")
    torch.set_num_threads(1)
    t0 = time.time()
    if args.runs:
        loaded = [run_buffer(r) for r in args.runs]
        envs = {env for _, env in loaded}
        if len(envs) > 1:
            raise SystemExit(f"--runs: the runs are on different envs ({', '.join(sorted(envs))})")
        buffers, env_id = [rb for rb, _ in loaded], envs.pop()
        source = f"the replay buffers of {len(buffers)} sac_rlhf.py runs ({', '.join(Path(r).name for r in args.runs)})"
    else:
        env_id = "HalfCheetah-v5"
        buffers = [biased_random_buffer(algo, env_id, 100 + i, args.random_steps) for i in range(3)]
        source = f"3 buffers of {args.random_steps:,} biased random-action steps"
    pairs = [(i, (i + 1) % len(buffers)) for i in range(len(buffers) if len(buffers) > 2 else 1)]
    results = {}  # setting -> metric -> per buffer pair
    for name, setting in settings:
        for i, j in pairs:
            steps = session_steps(args, buffers[i].size)
            ensemble = train(setting, buffers[i], steps, args.labels, args.seed + i)
            got = scores(ensemble, buffers[j], args.test_pairs, setting.segment_length, args.seed)
            for metric, value in got.items():
                results.setdefault(name, {}).setdefault(metric, []).append(value)
            print(f"{name:>28}, train {i} test {j}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items())
                  + f" [{time.time() - t0:.0f} s]", flush=True)  # fmt: skip
    metrics = list(next(iter(results.values())))
    rows = [
        [name, f"`{text.split('=', 1)[1] or '(none)'}`"]
        + [f"{np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for v in results[name].values()]
        for (name, _), text in zip(settings, args.settings)
    ]
    table = markdown_table(["setting", "flags", *(f"{m} (mean [min, max])" for m in metrics)], rows)
    print(table)
    quoted = lambda v: " ".join(shlex.quote(str(x)) for x in v) if isinstance(v, tuple) else str(v)
    command = "python benchmarks/reward_model.py " + " ".join(
        f"--{f.name.replace('_', '-')} {quoted(v)}" for f in fields(Args) if (v := getattr(args, f.name)) != f.default
    )
    body = (
        f"{__doc__.split(chr(10) + chr(10) + '    python')[0]}\n\n{env_id}: {source}; {len(pairs)} train/test pair(s); "
        f"{args.labels} labels in {args.sessions} sessions from step {args.first_session:,}; {args.test_pairs:,} test "
        f"pairs; seed {args.seed}; {time.time() - t0:.0f} s on {machine_description()}.\n\nCommand: "
        f"`{command.strip()}`\n\n{table}\n\n![held-out ranking per setting]({args.name}.png)\n"
    )
    path = save_markdown(args.name, "Reward-model settings on held-out data", body)
    plot([n for n, _ in settings], {m: [np.mean(results[n][m]) for n, _ in settings] for m in metrics},
         RESULTS / f"{args.name}.png")  # fmt: skip
    print(f"saved {path} and {RESULTS / (args.name + '.png')}")


if __name__ == "__main__":
    main(tyro.cli(Args))
