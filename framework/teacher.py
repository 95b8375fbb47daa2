"""Simulated teachers: B-Pref's scripted teacher, optionally on a user-written reward.

Label convention (used everywhere in prefrl): a label is the probability that the SECOND segment of a pair (B, shown
on the right) is the better one: `PREFER_A = 0.0`, `PREFER_B = 1.0`, `EQUAL = 0.5`, and `SKIP` (NaN) when the teacher
gives no answer. Skipped pairs are not stored.

`SimulatedTeacher` follows B-Pref (Lee et al. 2021, "B-Pref: Benchmarking Preference-Based RL"):
1. skip: if neither segment's (undiscounted) return exceeds `skip_threshold * return_scale`, no label;
2. equal: if the two returns differ by less than `equal_threshold * |return_scale|`, label 0.5;
3. myopia: the last real step of a segment weighs 1, the one before it gamma, then gamma^2, ... (the end of a clip
   is remembered best); the padding after an episode ended inside a segment (reward 0, mask 0) weighs nothing;
4. rationality: Bradley-Terry, P(B) = sigmoid(beta * (R_B - R_A)) on the discounted returns, sampled; beta = inf
   is a perfectly rational teacher (always the higher return);
5. mistakes: each label (other than equal) is flipped with probability `eps_mistake`.

`return_scale` is the typical return of a segment-length stretch of an episode: the trainer computes it from its
last 20 episodes as their total return per step x segment length (`segment_return_scale`) and sends it with each
`QueryBatch`. B-Pref divides the mean episode return by the longest episode instead (mean return x segment length /
max episode length); the two agree when every episode runs to its time limit and differ when episodes end early
(Hopper, Walker2d): there B-Pref's scale is smaller than the return a segment of the policy's actual episodes holds.

Where the scale is not positive (tasks whose rewards are costs, such as Reacher and Pusher, or a policy that has earned
nothing yet), "neither segment earned anything" has no meaning, so the skip teacher answers every pair, as B-Pref's
does (its threshold is then not positive and it skips nothing); the equal teacher compares the difference of returns
with the scale's magnitude, so "equally good" still means "within 10 % of a typical segment" (B-Pref's negative
threshold would silently turn ties off). A zero scale skips and ties nothing. B-Pref's PEBBLE multiplies the
thresholds by the coefficient a second time from its second session on (`set_teacher_thres_*`, called with the
already scaled margin); prefrl applies it once, as in the first session and in B-Pref's paper and README.

Beta acts on raw returns, as in B-Pref, so its useful range depends on the task's reward scale.

Ranking (`ranking=True`, `--teacher-ranking`): instead of answering each pair on its own, the teacher places both clips
of every query into one ordering of all the clips it has seen, by binary insertion (humanFeedback/ranking.py, the
feedback page's ranking mode), each comparison answered by the model above (a skip counts as "as good"); the query's
label is what the ordering says of its two clips. `comparisons` counts the comparisons made. The ordering implies a
label for every pair of placed clips: `implied(known)` hands them out (`ImpliedPairs`), so a trainer learns from more
pairs than it asked about, at the cost of about 2 log2(clips) comparisons per query instead of one.

`make_teacher(args, ...)` builds a run's teacher from its flags: this simulated one, or a person on the feedback page
(`framework.feedback_client.HumanTeacher`). Both follow the `Teacher` protocol.

`load_reward_function("file.py:fn")` or `("package.module:fn")` loads a user's reward, computed from step data, so a
simulated teacher can prefer a behaviour the environment does not reward (hop backwards, spin). The function takes
any of the keyword arguments in `STEP_FIELDS` and returns a float, for example::

    def hop_backwards(qvel):
        return -float(qvel[0])
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np

from framework.envs import qpos_qvel
from framework.runtime import UsageError

PREFER_A = 0.0
PREFER_B = 1.0
EQUAL = 0.5
SKIP = float("nan")

STEP_FIELDS = ("obs", "action", "next_obs", "qpos", "qvel", "info")
"""What a user reward function may ask for: the observation before the step, the action, the observation after it,
the MuJoCo state after the step (qpos, qvel), and the env's info dict."""


@dataclass
class QueryBatch:
    """Pairs of segments put to a teacher in one feedback session (A = left clip, B = right clip).

    Rewards are the teacher's per-step rewards (the user reward when one is given, else the environment's), zero
    where the mask is 0 (after an episode ended inside the segment). Physics states let a human teacher's clips be
    rendered from the stored states.
    """

    env_id: str
    step: int
    rewards_a: np.ndarray  # (n, T)
    rewards_b: np.ndarray  # (n, T)
    mask_a: np.ndarray  # (n, T), 1 for steps inside the episode
    mask_b: np.ndarray  # (n, T)
    physics_a: np.ndarray  # (n, T, physics state size), see framework.envs; Atari: (n, T, 210 * 160 * 3) uint8 frames
    physics_b: np.ndarray  # (n, T, physics state size)
    session: int = 0  # feedback session number, from 0
    return_scale: float = 1.0  # the typical return of a segment (`segment_return_scale`)

    def __len__(self) -> int:
        return len(self.rewards_a)


class Teacher(Protocol):
    """What a training script asks of a teacher."""

    def answer(self, queries: QueryBatch) -> np.ndarray:
        """One label per pair, P(B better) in {0, 0.5, 1}, or NaN to skip."""

    def plan(self, sessions: list[tuple[int, int]]) -> None:
        """The run's feedback sessions, (env step, labels asked) each, told once before the first one."""

    def submit(self, queries: QueryBatch) -> list[str]:
        """Asynchronous feedback: hand over queries without waiting; returns one key per pair for `collect`."""

    def collect(self, final: bool = False) -> list[tuple[str, float]]:
        """Asynchronous feedback: the answers that arrived since the last call, (key, label) each, without waiting.
        `final`: the run ends and asks nothing more (answers still open to undo are taken as they stand)."""

    def keys(self, queries: QueryBatch) -> list[str]:
        """The keys `answer` knows the queries by (one per pair)."""

    def label_info(self, keys: list[str]) -> list[dict]:
        """What the teacher knows of each answer, for the preference dataset: `labeler`, `answered_at` (unix
        seconds), and where known `labeler_session`, `response_time_s` and `answer` (left, right, equal, skip, none)."""

    def report(self, step: int, labels: int, reward_updates: int) -> None:
        """Asynchronous feedback: where training stands (env step, labels learned from, reward-model updates), for
        the people answering."""

    def state_dict(self) -> dict:
        """What a checkpoint must hold so that a resumed run's teacher answers as the uninterrupted one would."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    @property
    def ranks(self) -> bool:
        """Whether labels may come from an ordering of clips whose further pairs `implied` hands out."""

    def implied(self, known: Collection[str]) -> list[tuple[str, str, str, str, float]]:
        """Ranking: pairs of clips of the `known` queries (keys whose labels the run has taken) that the teacher's
        ordering implies, beyond the queries themselves, each handed out once: (key_a, side_a, key_b, side_b, P(b
        better)), sides "left" or "right". Empty for a teacher that does not rank."""


class ImpliedPairs:
    """Hands out the pairs an ordering of clips implies, once each: every clip not handed out before is paired with up
    to `per_clip` clips handed out before it (at random; 0: all of them), so the pairs grow linearly with the clips
    and not with their square. The label comes from the ordering's tiers: 1.0 when the second clip's tier is better,
    0.0 when worse, 0.5 when the same. A clip is never paired with the other clip of its own query (that pair is the
    query's label)."""

    def __init__(self, per_clip: int, seed: int):
        if per_clip < 0:
            raise UsageError(f"--ranking-pairs-per-clip must be >= 0 (0: every pair), got {per_clip}")
        self.per_clip = per_clip
        self.rng = np.random.default_rng(seed)
        self.done: list[tuple[str, str]] = []  # clips handed out, (key, side), in order

    def new_pairs(
        self, tiers: dict[tuple[str, str], int], known: Collection[str]
    ) -> list[tuple[str, str, str, str, float]]:
        """`tiers`: each placed clip's tier (higher is better); `known`: the query keys whose clips may be used."""
        seen = set(self.done)
        fresh = [clip for clip in tiers if clip[0] in known and clip not in seen]
        pairs = []
        for clip in fresh:
            partners = [c for c in self.done if c[0] != clip[0]]
            if self.per_clip and len(partners) > self.per_clip:
                partners = [partners[i] for i in sorted(self.rng.choice(len(partners), self.per_clip, replace=False))]
            for other in partners:
                if self.rng.random() < 0.5:  # either clip on either side
                    a, b = other, clip
                else:
                    a, b = clip, other
                diff = tiers[b] - tiers[a]
                pairs.append((*a, *b, PREFER_B if diff > 0 else PREFER_A if diff < 0 else EQUAL))
            self.done.append(clip)
        return pairs

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "done": [list(c) for c in self.done]}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.done = [tuple(c) for c in state["done"]]


def implied_pairs(q: dict[str, np.ndarray], teacher: Teacher, clips: dict[str, dict]) -> dict[str, np.ndarray] | None:
    """Ranking: remember the segments of the answered queries in `q` (the trainer's `clips`, by "<key>:<side>") and
    return the pairs the teacher's ordering implies between remembered clips (None if none): x_a, mask_a, x_b,
    mask_b, labels, as a session stores its asked pairs."""
    for i, key in enumerate(q["key"]):
        if not np.isnan(q["labels"][i]):
            clips[f"{key}:left"] = {"x": q["x_a"][i], "mask": q["mask_a"][i]}
            clips[f"{key}:right"] = {"x": q["x_b"][i], "mask": q["mask_b"][i]}
    known = {name.rsplit(":", 1)[0] for name in clips}
    pairs = [p for p in teacher.implied(known) if f"{p[0]}:{p[1]}" in clips and f"{p[2]}:{p[3]}" in clips]
    if not pairs:
        return None
    a = [clips[f"{p[0]}:{p[1]}"] for p in pairs]
    b = [clips[f"{p[2]}:{p[3]}"] for p in pairs]
    return {
        "x_a": np.stack([c["x"] for c in a]),
        "mask_a": np.stack([c["mask"] for c in a]),
        "x_b": np.stack([c["x"] for c in b]),
        "mask_b": np.stack([c["mask"] for c in b]),
        "labels": np.array([p[4] for p in pairs], np.float32),
    }


def query_keys(queries: QueryBatch) -> list[str]:
    """Keys of asynchronous queries: their env step, their place in the batch and a digest of the two segments, so
    a query asked again after a resume (the same pair) has the same key, and a different pair never does."""
    keys = []
    for i in range(len(queries)):
        digest = hashlib.blake2b(digest_size=6)
        for part in (queries.physics_a[i], queries.mask_a[i], queries.physics_b[i], queries.mask_b[i]):
            part = np.asarray(part)
            kept = part.dtype if part.dtype == np.uint8 else np.float64  # (Atari frames: as they are)
            digest.update(np.ascontiguousarray(part, dtype=kept).tobytes())
        keys.append(f"a{queries.step}-q{i}-{digest.hexdigest()}")
    return keys


def segment_return_scale(recent_episodes: list[tuple[float, int]], segment_length: int) -> float:
    """The typical teacher return of a `segment_length` stretch: the per-step return of the recent episodes, given as
    (return, length) pairs, times the segment length; 1 before any episode has ended."""
    if not recent_episodes:
        return 1.0
    per_step = sum(r for r, _ in recent_episodes) / max(sum(n for _, n in recent_episodes), 1)
    return per_step * segment_length


class SimulatedTeacher:
    """B-Pref's scripted teacher; see the module docstring for the model and the label convention."""

    def __init__(
        self,
        beta: float = math.inf,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        skip_threshold: float = 0.0,
        equal_threshold: float = 0.0,
        seed: int = 0,
        latency: float = 0.0,
        ranking: bool = False,
        ranking_pairs_per_clip: int = 10,
    ):
        if not beta > 0:
            raise UsageError(f"teacher beta must be > 0 (inf for a perfectly rational teacher), got {beta}")
        if not 0 < gamma <= 1:
            raise UsageError(f"teacher gamma must be in (0, 1], got {gamma}")
        if not 0 <= eps_mistake <= 1:
            raise UsageError(f"teacher mistake probability must be in [0, 1], got {eps_mistake}")
        if skip_threshold < 0 or equal_threshold < 0:
            raise UsageError(
                f"teacher skip and equal thresholds must be >= 0, got skip={skip_threshold}, equal={equal_threshold}"
            )
        self.beta = beta
        self.gamma = gamma
        self.eps_mistake = eps_mistake
        self.skip_threshold = skip_threshold
        self.equal_threshold = equal_threshold
        self.rng = np.random.default_rng(seed)
        if not latency >= 0 or math.isinf(latency):
            raise UsageError(f"teacher latency must be >= 0 seconds, got {latency}")
        self.latency = latency
        self.latency_rng = np.random.default_rng(seed + 1)  # delays never change which labels are given
        self.waiting: list[tuple[float, str, float]] = []  # submitted answers: (time due, key, label), in order
        self.idle_s = 0.0  # with a latency: time a person at this pace would have had nothing to answer
        self.free_at: float | None = None  # when the last answer asked so far is (or will be) given
        self.ranking = None
        if ranking:
            from humanFeedback.ranking import Ranking

            self.ranking = Ranking()  # clips "<key>:<side>"
        self.clip_rewards: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}  # ranking: rewards, mask, scale
        self.comparisons = 0
        self.pairs = ImpliedPairs(ranking_pairs_per_clip, seed + 2)

    @property
    def ranks(self) -> bool:
        """Whether the labels come from an ordering that implies more pairs (`implied`)."""
        return self.ranking is not None

    def implied(self, known: Collection[str]) -> list[tuple[str, str, str, str, float]]:
        if self.ranking is None:
            return []
        tiers = {}
        for i, tier in enumerate(self.ranking.tiers):
            for clip in tier:
                key, side = clip.rsplit(":", 1)
                tiers[(key, side)] = i
        return self.pairs.new_pairs(tiers, known)

    def plan(self, sessions: list[tuple[int, int]]) -> None:
        """A simulated teacher needs no notice of the sessions to come."""

    def submit(self, queries: QueryBatch) -> list[str]:
        """Label the queries now; each answer becomes available `latency` seconds (exponentially distributed around
        it) after the previous one, as from a person answering one pair after another."""
        keys = query_keys(queries)
        now = time.monotonic()
        self._count_idle(now)
        due = max(now, self.free_at or now)
        for key, label in zip(keys, self.label_batch(queries, keys)):
            due += self.latency_rng.exponential(self.latency) if self.latency > 0 else 0.0
            self.waiting.append((due, key, float(label)))
        self.free_at = due
        return keys

    def collect(self, final: bool = False) -> list[tuple[str, float]]:
        now = time.monotonic()
        ready = [(key, label) for due, key, label in self.waiting if due <= now]
        self.waiting = self.waiting[len(ready) :]
        return ready

    def report(self, step: int, labels: int, reward_updates: int) -> None:
        """Nobody to tell."""

    def keys(self, queries: QueryBatch) -> list[str]:
        return query_keys(queries)

    def label_info(self, keys: list[str]) -> list[dict]:
        now = time.time()
        return [{"labeler": "simulated", "answered_at": now} for _ in keys]

    def state_dict(self) -> dict:
        if self.ranking is not None:
            from humanFeedback.ranking import event_to_dict
        now = time.monotonic()  # answers still on their way keep the delay they had left
        waiting = [(max(due - now, 0.0), key, label) for due, key, label in self.waiting]
        return {
            "rng": self.rng.bit_generator.state,
            "latency_rng": self.latency_rng.bit_generator.state,
            "waiting": waiting,
            "idle_s": self.idle_s,
            "comparisons": self.comparisons,
            "ranking": None if self.ranking is None else [event_to_dict(e) for e in self.ranking.events],
            "clip_rewards": self.clip_rewards,
            "pairs": self.pairs.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.latency_rng.bit_generator.state = state["latency_rng"]
        now = time.monotonic()
        self.waiting = [(now + left, key, label) for left, key, label in state["waiting"]]
        self.idle_s = state["idle_s"]  # (the time the run was stopped does not count)
        self.free_at = self.waiting[-1][0] if self.waiting else None
        self.comparisons = state.get("comparisons", 0)
        if self.ranking is not None and state.get("ranking") is not None:
            from humanFeedback.ranking import Ranking, event_from_dict

            self.ranking = Ranking.replay(event_from_dict(e) for e in state["ranking"])
            self.clip_rewards = state["clip_rewards"]
        if "pairs" in state:
            self.pairs.load_state_dict(state["pairs"])

    def answer(self, queries: QueryBatch) -> np.ndarray:
        """The `Teacher` interface: label a session's queries from their rewards (taking `latency` seconds per pair,
        exponentially distributed around it, when one is set)."""
        labels = self.label_batch(queries, query_keys(queries))
        if self.latency > 0:
            self._count_idle(time.monotonic())
            time.sleep(float(self.latency_rng.exponential(self.latency, len(labels)).sum()))
            self.free_at = time.monotonic()
        return labels

    def _count_idle(self, now: float) -> None:
        if self.free_at is not None and now > self.free_at:
            self.idle_s += now - self.free_at

    def label_batch(self, queries: QueryBatch, keys: list[str] | None = None) -> np.ndarray:
        """`label` on a `QueryBatch`: its rewards, masks and return scale. Ranking: both clips of each query (`keys`)
        are placed into the ordering, and the query's label is the ordering's."""
        if self.ranking is None:
            return self.label(
                queries.rewards_a, queries.rewards_b, queries.return_scale, queries.mask_a, queries.mask_b
            )
        keys = query_keys(queries) if keys is None else keys
        labels = np.empty(len(keys))
        for i, key in enumerate(keys):
            for side, rewards, mask in (
                ("left", queries.rewards_a, queries.mask_a),
                ("right", queries.rewards_b, queries.mask_b),
            ):
                self._place(f"{key}:{side}", rewards[i], mask[i], queries.return_scale)
            labels[i] = self.ranking.label(f"{key}:left", f"{key}:right")
        return labels

    def _place(self, clip: str, rewards: np.ndarray, mask: np.ndarray, scale: float) -> None:
        """Insert a clip into the ordering by binary insertion, each comparison answered by `label` (a skip: equal)."""
        if clip in self.ranking.placed:  # (a query asked again after a resume)
            return
        self.clip_rewards[clip] = (np.asarray(rewards, np.float64), np.asarray(mask, np.float64), float(scale))
        self.ranking.start(clip)
        while (against := self.ranking.next_comparison()) is not None:
            r_old, m_old, _ = self.clip_rewards[against]
            p_new = self.label(r_old[None], np.asarray(rewards)[None], scale, m_old[None], np.asarray(mask)[None])[0]
            self.ranking.answer(
                "equal" if np.isnan(p_new) or p_new == EQUAL else "better" if p_new > 0.5 else "worse", against
            )
            self.comparisons += 1

    def label(
        self,
        rewards_a: np.ndarray,
        rewards_b: np.ndarray,
        return_scale: float = 1.0,
        mask_a: np.ndarray | None = None,
        mask_b: np.ndarray | None = None,
    ) -> np.ndarray:
        """Labels for pairs of segments given their per-step rewards, each `(n_pairs, seg_len)`, and their masks (1
        for the steps inside the episode; default: all). The skip threshold is multiplied by `return_scale` (no skip
        when it is not positive), the equal threshold by its magnitude.

        Returns a float array `(n_pairs,)` of P(B better) answers: 0, 1, 0.5 (equal) or NaN (skipped).
        """
        scale = float(return_scale)
        rewards_a = np.asarray(rewards_a, dtype=np.float64)
        rewards_b = np.asarray(rewards_b, dtype=np.float64)
        if rewards_a.shape != rewards_b.shape or rewards_a.ndim != 2:
            raise ValueError(f"expected two (n_pairs, seg_len) arrays, got {rewards_a.shape} and {rewards_b.shape}")
        return_a, return_b = rewards_a.sum(1), rewards_b.sum(1)

        def discounted(rewards: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
            mask = np.ones_like(rewards) if mask is None else (np.asarray(mask) > 0).astype(np.float64)
            later = np.cumsum(mask[:, ::-1], 1)[:, ::-1] - mask  # real steps after each step
            return (rewards * mask * self.gamma**later).sum(1)  # the last real step weighs 1

        diff = discounted(rewards_b, mask_b) - discounted(rewards_a, mask_a)  # (n_pairs,) discounted R_B - R_A
        if math.isinf(self.beta):
            labels = (diff > 0).astype(np.float64)
        else:
            p_b = 1.0 / (1.0 + np.exp(-np.clip(self.beta * diff, -50, 50)))
            labels = (self.rng.random(len(diff)) < p_b).astype(np.float64)

        flip = self.rng.random(len(labels)) < self.eps_mistake
        labels[flip] = 1.0 - labels[flip]

        labels[np.abs(return_a - return_b) < self.equal_threshold * abs(scale)] = EQUAL
        if self.skip_threshold > 0 and scale > 0:
            labels[np.maximum(return_a, return_b) <= self.skip_threshold * scale] = SKIP
        return labels


def validate_teacher_args(args) -> None:
    """One-line errors for the teacher flags of a run (`--teacher-feedback-mode` and what goes with it); settles
    `--feedback-async auto` as `on` (a person labels) or `off` (a simulated teacher)."""
    from framework.feedback_client import validate_feedback_args

    if args.feedback_async in ("auto", True, False):  # (True and False: the saved flags of older runs)
        on = args.feedback_async is True or (args.feedback_async == "auto" and args.teacher_feedback_mode == "human")
        args.feedback_async = "on" if on else "off"
    if args.teacher_latency < 0 or math.isinf(args.teacher_latency):
        raise UsageError(f"--teacher-latency must be >= 0 seconds, got {args.teacher_latency}")
    if args.teacher_feedback_mode == "human" and args.teacher_reward is not None:
        raise UsageError(
            "--teacher-reward sets the simulated teacher's reward; with --teacher-feedback-mode human "
            "the person on the feedback page judges"
        )
    validate_feedback_args(args)


def make_teacher(args, run_name: str, run_dir: str) -> Teacher:
    """The teacher a run's flags ask for: a person on the feedback page (`--teacher-feedback-mode human`, see
    `framework.feedback_client`) or B-Pref's simulated teacher (the `--teacher-*` flags), seeded from `--seed`."""
    if args.teacher_feedback_mode == "human":
        from framework.feedback_client import make_human_teacher

        return make_human_teacher(args, run_name, args.env_id, run_dir)
    return SimulatedTeacher(
        args.teacher_beta,
        args.teacher_gamma,
        args.teacher_eps_mistake,
        args.teacher_eps_skip,
        args.teacher_eps_equal,
        seed=args.seed + 1,
        latency=args.teacher_latency,
        ranking=args.teacher_ranking,
        ranking_pairs_per_clip=args.ranking_pairs_per_clip,
    )


class RewardFunction:
    """A user-written step reward, called with only the `STEP_FIELDS` its signature asks for."""

    def __init__(self, fn: Callable, spec: str):
        self.fn = fn
        self.spec = spec
        params = inspect.signature(fn).parameters.values()
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        names = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        unknown = [n for n in names if n not in STEP_FIELDS]
        if unknown:
            raise UsageError(
                f"teacher reward {spec!r} has parameter(s) {', '.join(unknown)}; "
                f"a reward function may take only {', '.join(STEP_FIELDS)} (by name)"
            )
        self.wants = STEP_FIELDS if takes_all else tuple(names)

    def __call__(self, **step) -> float:
        try:
            value = self.fn(**{k: step[k] for k in self.wants})
            value = float(value)
        except Exception as err:  # user code: report where it failed in one line
            frame = traceback.extract_tb(err.__traceback__)[-1]
            raise UsageError(
                f"teacher reward {self.spec!r} failed: {type(err).__name__}: {err} (at {frame.filename}:{frame.lineno})"
            ) from err
        if not math.isfinite(value):
            raise UsageError(f"teacher reward {self.spec!r} returned {value}; it must return a finite number")
        return value


def load_reward_function(spec: str) -> RewardFunction:
    """Load `path/to/file.py:function` or `package.module:function` as a `RewardFunction`."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UsageError(f"teacher reward must look like path/to/file.py:function or module:function, got {spec!r}")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise UsageError(f"teacher reward file {target!r} does not exist (from {spec!r})")
        module_name = f"prefrl_user_reward_{abs(hash(os.path.abspath(target)))}"
        module_spec = importlib.util.spec_from_file_location(module_name, target)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise UsageError(f"could not load teacher reward file {target!r}: {type(err).__name__}: {err}") from err
        sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise UsageError(f"could not import teacher reward module {target!r}: {type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        available = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UsageError(f"{target!r} has no function {name!r}; functions there: {', '.join(available) or 'none'}")
    if not callable(fn):
        raise UsageError(f"{spec!r} is a {type(fn).__name__}, not a function")
    return RewardFunction(fn, spec)


class TeacherRewardWrapper(gym.Wrapper):
    """Adds `info["teacher_reward"]`: the user reward of each step (the env's own reward is left untouched)."""

    def __init__(self, env: gym.Env, reward_fn: RewardFunction):
        super().__init__(env)
        self.reward_fn = reward_fn
        self._last_obs = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        qpos, qvel = qpos_qvel(self.env)
        info["teacher_reward"] = self.reward_fn(
            obs=self._last_obs, action=action, next_obs=obs, qpos=qpos, qvel=qvel, info=info
        )
        self._last_obs = obs
        return obs, reward, terminated, truncated, info
