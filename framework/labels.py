"""What a preference-based run keeps of its labels besides the dataset, the same for every algorithm.

- `<run>/preferences/`: every pair asked with its answer (`framework.preferences`);
- `<run>/label_schedule.png`: when the feedback sessions come and how many labels each asks (`plot_label_schedule`);
- `<run>/asked/`: with asynchronous feedback, every batch of queries put to the teacher (`save_asked` / `load_asked`);
- `reward_correlations`: how well the learned per-step reward tracks the true one, logged after each session.

Label convention: a label is P(second segment better): 0 (A, the left clip), 1 (B, the right clip), 0.5 (equal).
"""

from __future__ import annotations

import io
import os

import numpy as np

from framework.checkpoint import atomic_write_bytes


def reward_correlations(learned: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of learned and true per-step rewards (empty when undefined)."""
    from scipy.stats import pearsonr, spearmanr

    if len(learned) < 3 or np.std(learned) == 0 or np.std(true) == 0:
        return {}
    return {"reward/pearson": float(pearsonr(learned, true)[0]), "reward/spearman": float(spearmanr(learned, true)[0])}


def plot_label_schedule(sessions: list[tuple[int, int]], total_timesteps: int, path: str) -> None:
    """A step plot of the labels asked so far against the environment step, one step per session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [0] + [s for s, _ in sessions] + [total_timesteps]
    cumulative = [0] + list(np.cumsum([n for _, n in sessions])) + [sum(n for _, n in sessions)]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.step(steps, cumulative, where="post")
    ax.set_xlabel("environment step")
    ax.set_ylabel("labels asked (cumulative)")
    ax.set_title(f"{len(sessions)} feedback sessions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_asked(run_dir: str, number: int, q: dict[str, np.ndarray]) -> None:
    """Asynchronous feedback: the queries of one batch put to the teacher (the arrays a script keeps of them), as
    `<run>/asked/<number>.npz`, written before they go out: a run stopped before its next checkpoint finds them
    when it is resumed and waits for their answers again."""
    buffer = io.BytesIO()
    np.savez(buffer, **q)
    atomic_write_bytes(os.path.join(run_dir, "asked", f"{number:06d}.npz"), buffer.getvalue())


def load_asked(run_dir: str, first: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The batches `save_asked` wrote from number `first` on, in order: (number, arrays) each."""
    folder = os.path.join(run_dir, "asked")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz")) if os.path.isdir(folder) else []
    batches = []
    for name in names:
        if int(name.split(".")[0]) >= first:
            with np.load(os.path.join(folder, name)) as saved:
                batches.append((int(name.split(".")[0]), {k: saved[k] for k in saved.files}))
    return batches
