"""Ranking mode: a labeler sorts clips into an ordering instead of answering blind pairs (as in rl-teacher-atari).

Each new clip is inserted into the run's ordering by binary search: the page shows the new (pending) clip beside a
placed one, and the labeler says whether the new clip is better, worse, or as good ("equal": it joins that clip's
tier). Inserting into T tiers takes at most ceil(log2(T + 1)) comparisons, and the ordering implies a label for every
pair of placed clips: n * (n - 1) / 2 labels for n clips.

The ordering is a list of tiers, worst first, each a list of clip ids that are equally good. It is never stored: it is
derived by replaying an append-only list of events, so a server keeps only the events (one row each) and a kill -9
loses no placement. Undo drops the last event: it re-asks the last comparison, reopens a finished insertion, or takes
back a start.

Events (frozen dataclasses; `event_to_dict` and `event_from_dict` give their JSON form, with a `kind` field):
    Start(clip)                        kind "start": begin inserting `clip`; into an empty ordering it is placed at once
    Comparison(clip, against, answer)  kind "comparison": the pending `clip` is "better" than / "worse" than /
                                       "equal" to (as good as) the placed clip `against`; the clip is placed as soon
                                       as that leaves one place for it
    Cancel(clip)                       kind "cancel": give up inserting the pending `clip` (it stays unplaced and may
                                       be started again later)
A comparison narrows the search by the tier that `against` is in, whichever clip of the tier was shown, so events stay
valid if the choice of the clip to show changes.

Labels follow the feedback server's convention: the probability that the second clip of a pair is better (1.0 better,
0.0 worse, 0.5 as good).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

ANSWERS = ("better", "worse", "equal")


def _check_clip(clip: object, field: str = "clip") -> None:
    if not isinstance(clip, str) or not clip:
        raise ValueError(f"{field} must be a non-empty string, got {clip!r}")


@dataclass(frozen=True)
class Start:
    """Begin inserting `clip`; into an empty ordering it is placed at once, as the only tier."""

    clip: str

    def __post_init__(self) -> None:
        _check_clip(self.clip)


@dataclass(frozen=True)
class Comparison:
    """The pending `clip` is better than / worse than / as good as ("equal") the placed clip `against`."""

    clip: str
    against: str
    answer: str

    def __post_init__(self) -> None:
        _check_clip(self.clip)
        _check_clip(self.against, "against")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}")
        if self.clip == self.against:
            raise ValueError(f"clip {self.clip!r} cannot be compared with itself")


@dataclass(frozen=True)
class Cancel:
    """Give up inserting the pending `clip`: it stays unplaced."""

    clip: str

    def __post_init__(self) -> None:
        _check_clip(self.clip)


Event = Start | Comparison | Cancel
KINDS: dict[str, type] = {"start": Start, "comparison": Comparison, "cancel": Cancel}
FIELDS = {"start": ("clip",), "comparison": ("clip", "against", "answer"), "cancel": ("clip",)}


def event_to_dict(event: Event) -> dict[str, str]:
    """The JSON form of an event: {"kind": ..., and its fields}."""
    kind = next((k for k, cls in KINDS.items() if type(event) is cls), None)
    if kind is None:
        raise ValueError(f"not a ranking event: {event!r}")
    return {"kind": kind, **{f: getattr(event, f) for f in FIELDS[kind]}}


def event_from_dict(data: dict) -> Event:
    """The event of a JSON form written by `event_to_dict`; ValueError for an unknown kind or missing/extra fields."""
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise ValueError(f"unknown ranking event: {data!r}")
    kind = data["kind"]
    fields = set(data) - {"kind"}
    if fields != set(FIELDS[kind]):
        raise ValueError(f"a {kind} event has the fields {', '.join(FIELDS[kind])}, got {', '.join(sorted(fields))}")
    return KINDS[kind](**{f: data[f] for f in FIELDS[kind]})


def comparisons_needed(tiers: int) -> int:
    """The most comparisons that inserting a clip into `tiers` tiers takes: ceil(log2(tiers + 1))."""
    if tiers < 0:
        raise ValueError(f"tiers must be >= 0, got {tiers}")
    return int(tiers).bit_length()


class Pairs(NamedTuple):
    """Every pair of placed clips once: pair k is (clips[a[k]], clips[b[k]]), a[k] < b[k], in row-major order (by a,
    then b); labels[k] is the probability that clips[b[k]] is better: 1.0 higher tier, 0.0 lower, 0.5 the same."""

    clips: list[str]  # the placed clips in the order they were placed
    a: np.ndarray  # int32
    b: np.ndarray  # int32
    labels: np.ndarray  # float32


class Ranking:
    """An ordering of clips into tiers (worst first), derived from its events, with at most one insertion pending.

    While a clip is pending, `interval` (lo, hi) says where it may still go: above tiers 0..lo-1, below tiers hi and
    up, so it is still to be compared with tiers lo..hi-1. It is placed into a new tier at lo when lo == hi.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._events: list[Event] = []
        self._tiers: list[list[str]] = []
        self._tier_of: dict[str, int] = {}  # placed clip -> index of its tier
        self._order: list[str] = []  # placed clips in the order they were placed
        self._pending: str | None = None
        self._lo = self._hi = 0

    @classmethod
    def replay(cls, events: Iterable[Event]) -> Ranking:
        """The ranking that these events, applied in order, give; ValueError at the first event that does not fit."""
        ranking = cls()
        for event in events:
            ranking.apply(event)
        return ranking

    @property
    def events(self) -> tuple[Event, ...]:
        """Every event so far, oldest first: what to store."""
        return tuple(self._events)

    @property
    def tiers(self) -> list[list[str]]:
        """The ordering: tiers worst first, each tier's clips in the order they joined it (a copy)."""
        return [list(tier) for tier in self._tiers]

    @property
    def placed(self) -> frozenset[str]:
        """The placed clips."""
        return frozenset(self._tier_of)

    @property
    def order(self) -> list[str]:
        """The placed clips in the order they were placed (the clip order of `implied_pairs`)."""
        return list(self._order)

    @property
    def pending(self) -> str | None:
        """The clip being inserted, or None."""
        return self._pending

    @property
    def interval(self) -> tuple[int, int] | None:
        """(lo, hi): the pending clip is better than tiers below lo and worse than tiers from hi on; None if none."""
        return None if self._pending is None else (self._lo, self._hi)

    @property
    def comparisons_left(self) -> int:
        """The most comparisons the pending insertion may still ask (0 when nothing is pending)."""
        return 0 if self._pending is None else comparisons_needed(self._hi - self._lo)

    def tier_of(self, clip: str) -> int | None:
        """The index of the clip's tier (0 is the worst), or None if it is not placed."""
        return self._tier_of.get(clip)

    def next_comparison(self) -> str | None:
        """The placed clip to show beside the pending one: the first clip of the middle tier still in question."""
        if self._pending is None:
            return None
        return self._tiers[(self._lo + self._hi) // 2][0]

    def start(self, clip: str) -> Start:
        """Begin inserting `clip` (placed at once into an empty ordering); returns the event to store."""
        event = Start(clip)
        self.apply(event)
        return event

    def answer(self, answer: str, against: str | None = None) -> Comparison:
        """Record that the pending clip is `answer` ("better", "worse", "equal") than `against` (default: the clip of
        `next_comparison`, pass the clip that was shown to catch a stale page); returns the event to store."""
        if self._pending is None:
            raise ValueError("no clip is being inserted")
        event = Comparison(self._pending, self.next_comparison() if against is None else against, answer)
        self.apply(event)
        return event

    def cancel(self) -> Cancel:
        """Give up inserting the pending clip; returns the event to store."""
        if self._pending is None:
            raise ValueError("no clip is being inserted")
        event = Cancel(self._pending)
        self.apply(event)
        return event

    def undo(self) -> Event:
        """Drop the last event and rebuild from the others; returns the dropped event (to delete from storage)."""
        if not self._events:
            raise ValueError("nothing to undo")
        events = self._events[:-1]
        dropped = self._events[-1]
        self._reset()
        for event in events:
            self.apply(event)
        return dropped

    def apply(self, event: Event) -> None:
        """Apply one event and append it to `events`; ValueError (and nothing changes) if it does not fit."""
        if isinstance(event, Start):
            self._apply_start(event)
        elif isinstance(event, Comparison):
            self._apply_comparison(event)
        elif isinstance(event, Cancel):
            if self._pending != event.clip:
                raise ValueError(f"cannot cancel {event.clip!r}: it is not the clip being inserted")
            self._pending = None
            self._lo = self._hi = 0
        else:
            raise ValueError(f"not a ranking event: {event!r}")
        self._events.append(event)

    def _apply_start(self, event: Start) -> None:
        if event.clip in self._tier_of:
            raise ValueError(f"cannot start {event.clip!r}: it is already placed")
        if self._pending is not None:
            raise ValueError(f"cannot start {event.clip!r}: {self._pending!r} is still being inserted")
        if self._tiers:
            self._pending, self._lo, self._hi = event.clip, 0, len(self._tiers)
        else:
            self._place(event.clip, 0, new_tier=True)

    def _apply_comparison(self, event: Comparison) -> None:
        if self._pending is None:
            raise ValueError("no clip is being inserted")
        if event.clip != self._pending:
            raise ValueError(f"{event.clip!r} is not the clip being inserted ({self._pending!r} is)")
        tier = self._tier_of.get(event.against)
        if tier is None:
            raise ValueError(f"unknown clip {event.against!r}: it is not placed")
        if not self._lo <= tier < self._hi:
            raise ValueError(f"{event.against!r} is outside the search interval of {event.clip!r} (already decided)")
        if event.answer == "equal":
            self._place(event.clip, tier, new_tier=False)
            return
        if event.answer == "better":
            self._lo = tier + 1
        else:
            self._hi = tier
        if self._lo == self._hi:
            self._place(event.clip, self._lo, new_tier=True)

    def _place(self, clip: str, tier: int, new_tier: bool) -> None:
        if new_tier:
            self._tiers.insert(tier, [clip])
            for above in range(tier + 1, len(self._tiers)):
                for other in self._tiers[above]:
                    self._tier_of[other] = above
        else:
            self._tiers[tier].append(clip)
        self._tier_of[clip] = tier
        self._order.append(clip)
        self._pending = None
        self._lo = self._hi = 0

    def label(self, a: str, b: str) -> float | None:
        """The probability that `b` is better than `a` from the ordering (1.0, 0.0 or 0.5), or None if either is not
        placed."""
        ta, tb = self._tier_of.get(a), self._tier_of.get(b)
        if ta is None or tb is None:
            return None
        return 1.0 if tb > ta else 0.0 if tb < ta else 0.5

    def implied_pairs(self) -> Pairs:
        """Every pair of placed clips once, with its label, as numpy arrays (see `Pairs`): n * (n - 1) / 2 pairs."""
        n = len(self._order)
        ranks = np.fromiter((self._tier_of[c] for c in self._order), dtype=np.int64, count=n)
        a, b = (idx.astype(np.int32) for idx in np.triu_indices(n, k=1))
        labels = (np.sign(ranks[b] - ranks[a]) * 0.5 + 0.5).astype(np.float32)
        return Pairs(list(self._order), a, b, labels)


def insert_all(values: dict[str, float], order: list[str], equal_within: float = 0.0) -> tuple[Ranking, int]:
    """Insert the clips of `order` one by one, answering each comparison from the true `values` ("equal" when they
    differ by at most `equal_within`): a simulated labeler. Returns the ranking and how many comparisons it asked."""
    missing = next((clip for clip in order if clip not in values), None)
    if missing is not None:
        raise ValueError(f"clip {missing!r} has no value")
    ranking, asked = Ranking(), 0
    for clip in order:
        ranking.start(clip)
        while (against := ranking.next_comparison()) is not None:
            diff = values[clip] - values[against]
            ranking.answer("equal" if abs(diff) <= equal_within else "better" if diff > 0 else "worse", against)
            asked += 1
    return ranking, asked
