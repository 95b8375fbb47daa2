"""The preference dataset: every pair a run asked about, with its answer, in one documented, versioned format.

Every preference-based run writes `<run>/preferences/`, rewritten after each reward-model update:

    dataset.json     what the data is: format name and version, env id, segment length, observation, action and
                     physics-state sizes, the label convention, the teacher's settings, the prefrl version, the pair
                     count (a reader takes that many rows of the other two files)
    pairs.parquet    one row per pair (`COLUMNS`): its key, the run and env step that asked it, the answer and its
                     label, the labeler, when and how fast they answered, the teacher
    segments.npz     the two segments of every pair (`ARRAYS`), row i of each array = row i of the table

Why two files: the table's columns are scalars and strings, which parquet keeps typed and which pandas, pyarrow and
Hugging Face `datasets` read in one call; the segments are fixed-shape float arrays `(pairs, steps, size)` that
`numpy.load` returns as they are, with no list-of-lists conversion and no prefrl code. Reading without prefrl:

    import json, numpy as np, pyarrow.parquet as pq
    meta = json.load(open("preferences/dataset.json"))
    table = pq.read_table("preferences/pairs.parquet").to_pandas()[: meta["pairs"]]
    segments = np.load("preferences/segments.npz")            # obs_a (pairs, T, obs), act_a, mask_a, ...

Label convention: `label` is the probability that segment B (the RIGHT clip) is better: 0.0 A better, 1.0 B better,
0.5 equally good; NaN when there is no label (`answer` says why: `skip`, a person could not tell or the simulated
teacher skipped; `none`, nobody answered in time). imitation's convention is the opposite (the probability that the
FIRST fragment is better): `to_imitation` / `from_imitation` convert.
"""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np

from framework.checkpoint import atomic_write_bytes
from framework.envs import action_size
from framework.runtime import UsageError

FORMAT = "prefrl-preferences"
VERSION = 1
FOLDER = "preferences"
LABEL_CONVENTION = (
    "label = P(segment B, the right clip, is better): 0.0 A better, 1.0 B better, 0.5 equal; NaN: no label "
    "(answer 'skip': could not tell or skipped; 'none': not answered)"
)
ANSWERS = {0.0: "left", 1.0: "right", 0.5: "equal"}  # label -> answer; A is the left clip, B the right one

COLUMNS = {
    "key": "the pair's key (the feedback server's query key for a person's answers)",
    "run": "the run that asked the pair",
    "asked_step": "env step at which the pair was asked",
    "learned_step": "env step at which the run's reward model first learned from it",
    "feedback_session": "the run's reward-model update that learned from it (from 0); -1: given at the start "
    "(--labels-from)",
    "answer": "left (A better), right (B better), equal, skip (could not tell), none (not answered), soft (an "
    "imported label strictly between 0 and 1)",
    "label": "P(B better): 0, 1, 0.5; NaN for skip and none",
    "labeler": "who answered: the page's labeler name, or 'simulated'",
    "labeler_session": "the page tab that answered (a person's labeling session); empty for simulated labels",
    "answered_at": "when the answer was given, unix seconds (NaN: unknown)",
    "response_time_s": "seconds from the pair appearing on the page to the answer (NaN: unknown or simulated)",
    "teacher": "the teacher's settings as JSON (the simulated teacher's parameters and reward, or the feedback server)",
}
FLOAT_COLUMNS = ("label", "answered_at", "response_time_s")
INT_COLUMNS = ("asked_step", "learned_step", "feedback_session")
ARRAYS = {
    "obs_a": "(pairs, T, obs) float32: observations of segment A (games played from frames: the latest 84x84 frame "
    "of each step, uint8)",
    "act_a": "(pairs, T, action) float32: actions of segment A (discrete: one-hot; uint8 beside frames)",
    "mask_a": "(pairs, T) float32: 1 for steps inside the episode, 0 after it ended inside the segment",
    "reward_a": "(pairs, T) float32: the teacher reward function's per-step reward (the env's unless "
    "--teacher-reward; a person never sees it)",
    "physics_a": "(pairs, T, physics) float64: MuJoCo state (time, qpos, qvel) before each step (NaN for pairs "
    "that came without one); absent when the env has none",
    "obs_b": "segment B, as obs_a",
    "act_b": "as act_a",
    "mask_b": "as mask_a",
    "reward_b": "as reward_a",
    "physics_b": "as physics_a",
}


def teacher_settings(args) -> dict:
    """The teacher of a run's flags, as the dataset keeps it."""
    if args.teacher_feedback_mode == "human":
        return {"kind": "human", "feedback_server": args.feedback_server_url, "question": args.feedback_question}
    return {
        "kind": "simulated",
        "beta": args.teacher_beta if math.isfinite(args.teacher_beta) else "inf",  # (JSON has no infinity)
        "gamma": args.teacher_gamma,
        "eps_mistake": args.teacher_eps_mistake,
        "skip_threshold": args.teacher_eps_skip,
        "equal_threshold": args.teacher_eps_equal,
        "reward": args.teacher_reward or "env",
    }


def dataset_metadata(args, observation_space, action_space, physics_size: int, algorithm: str) -> dict:
    """dataset.json of a run (without the pair count, which `PreferenceDataset.save` adds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        prefrl_version = version("prefrl")
    except PackageNotFoundError:
        prefrl_version = "unknown"

    def space(s) -> dict:
        out = {"shape": list(s.shape), "dtype": str(s.dtype)}
        if hasattr(s, "low"):
            out |= {"low": np.asarray(s.low).ravel().tolist(), "high": np.asarray(s.high).ravel().tolist()}
        return out

    return {
        "format": FORMAT,
        "version": VERSION,
        "env_id": args.env_id,
        "segment_length": args.segment_length,
        "observation_space": space(observation_space),
        "action_space": space(action_space),
        "obs_size": int(np.prod(observation_space.shape)),
        "action_size": action_size(action_space),  # a discrete action: one-hot
        "physics_size": physics_size,
        "label_convention": LABEL_CONVENTION,
        "teacher": teacher_settings(args),
        "run": args.run_name,
        "algorithm": algorithm,
        "prefrl_version": prefrl_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "columns": COLUMNS,
        "arrays": ARRAYS,
    }


def answer_of(label: float) -> str:
    return "skip" if math.isnan(label) else ANSWERS.get(float(label), "soft")


class Preferences:
    """A preference dataset in memory: `meta` (dataset.json), `table` (column -> list), `arrays` (name -> array)."""

    def __init__(self, meta: dict, table: dict[str, list] | None = None, arrays: dict[str, np.ndarray] | None = None):
        self.meta = meta
        self.table = table or {c: [] for c in COLUMNS}
        self.arrays = arrays or {}

    def __len__(self) -> int:
        return len(self.table["key"])

    def rows(self, keep: np.ndarray) -> Preferences:
        """The pairs where `keep` (a boolean mask or indices) holds."""
        idx = np.arange(len(self))[keep]
        table = {c: [v[i] for i in idx] for c, v in self.table.items()}
        return Preferences(dict(self.meta), table, {k: a[idx] for k, a in self.arrays.items()})

    def extend(self, other: Preferences) -> None:
        """Append `other`'s pairs. Physics states follow this dataset's `physics_size`: NaN for pairs without them,
        dropped when it has none."""
        physics = self.meta["physics_size"]
        theirs = {k: a for k, a in other.arrays.items() if not k.startswith("physics_")}
        for side in ("a", "b") if physics else ():
            given = other.arrays.get(f"physics_{side}")
            if given is None or given.shape[-1] != physics:
                given = np.full(theirs[f"mask_{side}"].shape + (physics,), np.nan)
            theirs[f"physics_{side}"] = given
        for c in COLUMNS:
            self.table[c] += list(other.table[c])
        mine = self.arrays or {k: a[:0] for k, a in theirs.items()}
        self.arrays = {k: np.concatenate([a, theirs[k]]) for k, a in mine.items()}

    def pairs(self) -> dict[str, np.ndarray]:
        """The labelled pairs (skipped and unanswered left out) as a reward model trains on them: `seg_a` / `seg_b`
        (pairs, T, obs + action), `mask_a` / `mask_b`, `labels`, `steps` (the env step that learned each)."""
        labels = np.asarray(self.table["label"], np.float32)
        keep = ~np.isnan(labels)
        a = self.arrays
        out = {
            "seg_a": np.concatenate([a["obs_a"], a["act_a"]], -1)[keep],
            "seg_b": np.concatenate([a["obs_b"], a["act_b"]], -1)[keep],
            "mask_a": a["mask_a"][keep],
            "mask_b": a["mask_b"][keep],
            "labels": labels[keep],
            "steps": np.asarray(self.table["learned_step"], np.int64)[keep],
        }
        return out

    def save(self, folder: str) -> None:
        """Write the three files atomically: segments first, then the table, then dataset.json with the count, so
        a reader that takes `pairs` rows never sees half a pair."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(folder, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays)
        atomic_write_bytes(os.path.join(folder, "segments.npz"), buffer.getvalue())
        kinds = {c: pa.float64() for c in FLOAT_COLUMNS} | {c: pa.int64() for c in INT_COLUMNS}
        schema = pa.schema([(c, kinds.get(c, pa.string())) for c in COLUMNS])
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pydict(self.table, schema=schema), sink)
        atomic_write_bytes(os.path.join(folder, "pairs.parquet"), sink.getvalue().to_pybytes())
        meta = self.meta | {"pairs": len(self), "labels": int(sum(not math.isnan(x) for x in self.table["label"]))}
        atomic_write_bytes(os.path.join(folder, "dataset.json"), (json.dumps(meta, indent=1) + "\n").encode())


def dataset_folder(path: str) -> str:
    """The dataset folder of a run folder (`<run>/preferences`) or of the dataset folder itself."""
    if os.path.isfile(os.path.join(path, FOLDER, "dataset.json")):
        return os.path.join(path, FOLDER)
    return path


def read_preferences(path: str) -> Preferences:
    """A dataset written by `Preferences.save`, from its folder or a run folder; one-line `UsageError`s for what is
    not one (a missing folder, another format, a newer version)."""
    import pyarrow.parquet as pq

    folder = dataset_folder(path)
    meta_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(meta_path):
        raise UsageError(f"{path!r} is not a preference dataset or a run folder with one (no dataset.json)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta_path} is not readable JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{meta_path} is not a {FORMAT} dataset (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise UsageError(f"{meta_path} is version {meta['version']}; this prefrl reads up to {VERSION}: upgrade")
    n = int(meta["pairs"])
    try:
        columns = pq.read_table(os.path.join(folder, "pairs.parquet")).to_pydict()
        with np.load(os.path.join(folder, "segments.npz")) as saved:
            arrays = {k: saved[k][:n] for k in saved.files}
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{folder}: the dataset's files are not readable: {e}") from None
    return Preferences(meta, {c: list(columns[c][:n]) for c in COLUMNS}, arrays)


class PreferenceDataset:
    """A run's `<run>/preferences/`, grown by `add` after every reward-model update. Per-pair facts the run does not
    know (who answered, when, how fast) come from the teacher's `label_info`."""

    def __init__(self, run_dir: str, meta: dict, teacher):
        self.folder, self.teacher = os.path.join(run_dir, FOLDER), teacher
        self.data = Preferences(meta)

    def resume(self, sessions_done: int) -> None:
        """A resumed run: the pairs on disk learned by the updates its checkpoint holds (later ones are asked again)."""
        if os.path.isfile(os.path.join(self.folder, "dataset.json")):
            saved = read_preferences(self.folder)
            self.data = saved.rows(np.asarray(saved.table["feedback_session"], np.int64) < sessions_done)
            self.data.meta = saved.meta | {k: v for k, v in self.data.meta.items() if k != "created"}

    def add(self, q: dict[str, np.ndarray], session: int) -> None:
        """The pairs of a reward-model update: `q` as the algorithm keeps it (`x_a`, `x_b` = observation and action
        side by side, masks, teacher rewards, physics states, `labels`, `key`, `step` and, asynchronously, `asked`)."""
        obs_size, n = self.data.meta["obs_size"], len(q["labels"])
        keys = [str(k) for k in q["key"]]
        info = self.teacher.label_info(keys)
        asked = q.get("asked", np.full(n, int(q["step"])))
        settings = json.dumps(self.data.meta["teacher"], sort_keys=True)
        rows = Preferences(self.data.meta)
        for i, key in enumerate(keys):
            label = float(q["labels"][i])
            row = {
                "key": key,
                "run": self.data.meta["run"],
                "asked_step": int(asked[i]),
                "learned_step": int(q["step"]),
                "feedback_session": session,
                "answer": info[i].get("answer") or answer_of(label),
                "label": label,
                "labeler": info[i].get("labeler", ""),
                "labeler_session": info[i].get("labeler_session", ""),
                "answered_at": float(info[i].get("answered_at", math.nan)),
                "response_time_s": float(info[i].get("response_time_s", math.nan)),
                "teacher": settings,
            }
            for c in COLUMNS:
                rows.table[c].append(row[c])
        for side in ("a", "b"):
            x = np.asarray(q[f"x_{side}"])
            x = x if x.dtype == np.uint8 else x.astype(np.float32)  # frames stay uint8
            rows.arrays |= {f"obs_{side}": x[..., :obs_size], f"act_{side}": x[..., obs_size:]}
            rows.arrays |= {f"mask_{side}": np.asarray(q[f"mask_{side}"], np.float32)}
            rows.arrays |= {f"reward_{side}": np.asarray(q[f"teacher_rewards_{side}"], np.float32)}
            if self.data.meta["physics_size"] > 0:
                physics = np.asarray(q[f"physics_{side}"])  # (Atari: the colour frames, uint8)
                physics = physics if physics.dtype == np.uint8 else physics.astype(np.float64)
                rows.arrays |= {f"physics_{side}": physics}
        self.data.extend(rows)
        self.data.save(self.folder)

    def add_given(self, given: Preferences) -> None:
        """--labels-from: another dataset's pairs, learned at the start (feedback_session -1)."""
        rows = given.rows(slice(None))
        rows.table["feedback_session"] = [-1] * len(rows)
        rows.table["learned_step"] = [0] * len(rows)
        self.data.extend(rows)
        self.data.save(self.folder)


def given_preferences(path: str, env_id: str, segment_length: int, in_dim: int) -> Preferences:
    """--labels-from: a dataset (or a finished run's), checked against this run: the same env, segment length and
    observation + action size; one-line `UsageError`s otherwise."""
    try:
        given = read_preferences(path)
    except UsageError as e:
        raise UsageError(f"--labels-from: {e}") from None
    meta = given.meta
    if meta["env_id"] != env_id:
        raise UsageError(f"--labels-from {path!r} holds labels of {meta['env_id']}, not of {env_id}")
    size = meta["obs_size"] + meta["action_size"]
    if (meta["segment_length"], size) != (segment_length, in_dim):
        raise UsageError(
            f"--labels-from {path!r} has segments of {meta['segment_length']} steps x {size} numbers; this run needs "
            f"{segment_length} x {in_dim} (--segment-length {meta['segment_length']} takes them)"
        )
    if not np.any(~np.isnan(np.asarray(given.table["label"], np.float64))):
        raise UsageError(f"--labels-from {path!r} holds no labelled pair")
    return given


# ------------------------------------------------------------------------------------------------ imitation's format
def to_imitation(data: Preferences) -> dict[str, np.ndarray]:
    """The labelled pairs in imitation's preference convention, as arrays (skipped and unanswered pairs left out,
    imitation has no such answer): `preferences` (n,) = P(FIRST fragment better) = 1 - label; per fragment k in 1, 2:
    `fragments{k}_obs` (n, T + 1, obs) (imitation keeps the observation after the last step; a prefrl segment does
    not, so its last observation is repeated), `fragments{k}_acts` (n, T, action), `fragments{k}_rews` (n, T),
    `fragments{k}_len` (n,) the steps inside the episode (the rest is padding), `fragments{k}_terminal` (n,) whether
    the episode ended inside the fragment. `imitation.data.types.TrajectoryWithRew(obs[:len + 1], acts[:len], None,
    terminal, rews[:len])` rebuilds each fragment."""
    labels = np.asarray(data.table["label"], np.float64)
    keep = ~np.isnan(labels)
    out = {"preferences": (1.0 - labels[keep]).astype(np.float32)}
    for k, side in (("1", "a"), ("2", "b")):
        obs, mask = data.arrays[f"obs_{side}"][keep], data.arrays[f"mask_{side}"][keep]
        out[f"fragments{k}_obs"] = np.concatenate([obs, obs[:, -1:]], 1)
        out[f"fragments{k}_acts"] = data.arrays[f"act_{side}"][keep]
        out[f"fragments{k}_rews"] = data.arrays[f"reward_{side}"][keep]
        out[f"fragments{k}_len"] = mask.sum(1).astype(np.int64)
        out[f"fragments{k}_terminal"] = mask[:, -1] == 0
    return out


def from_imitation(arrays: dict[str, np.ndarray], meta: dict) -> Preferences:
    """A dataset from `to_imitation`'s arrays (for example pairs labelled with imitation): labels = 1 - preferences;
    `meta` gives what the arrays do not say (at least env_id; sizes and segment length are taken from the arrays)."""
    prefs = np.asarray(arrays["preferences"], np.float64)
    n, steps = arrays["fragments1_acts"].shape[:2]
    out = {
        "format": FORMAT,
        "version": VERSION,
        "segment_length": steps,
        "obs_size": int(arrays["fragments1_obs"].shape[-1]),
        "action_size": int(arrays["fragments1_acts"].shape[-1]),
        "physics_size": 0,
        "label_convention": LABEL_CONVENTION,
        "teacher": {"kind": "imported", "from": "imitation"},
        "run": "imitation",
    } | meta
    data = Preferences(out)
    labels = 1.0 - prefs
    settings = json.dumps(out["teacher"], sort_keys=True)
    data.table = {
        "key": [f"imitation-{i}" for i in range(n)],
        "run": [out["run"]] * n,
        "asked_step": [0] * n,
        "learned_step": [0] * n,
        "feedback_session": [0] * n,
        "answer": [answer_of(x) for x in labels],
        "label": [float(x) for x in labels],
        "labeler": [""] * n,
        "labeler_session": [""] * n,
        "answered_at": [math.nan] * n,
        "response_time_s": [math.nan] * n,
        "teacher": [settings] * n,
    }
    for k, side in (("1", "a"), ("2", "b")):
        length = np.asarray(arrays[f"fragments{k}_len"])
        data.arrays[f"obs_{side}"] = np.asarray(arrays[f"fragments{k}_obs"][:, :steps], np.float32)
        data.arrays[f"act_{side}"] = np.asarray(arrays[f"fragments{k}_acts"], np.float32)
        data.arrays[f"mask_{side}"] = (np.arange(steps)[None] < length[:, None]).astype(np.float32)
        data.arrays[f"reward_{side}"] = np.asarray(arrays[f"fragments{k}_rews"], np.float32)
    return data
