"""Ranking mode's logic: binary insertion into tiers, its comparison bound, replay, undo, and the implied pairs."""

from __future__ import annotations

import json
import math
import random
import time

import numpy as np
import pytest

from humanFeedback.ranking import (
    Cancel,
    Comparison,
    Ranking,
    Start,
    comparisons_needed,
    event_from_dict,
    event_to_dict,
    insert_all,
)

LEVELS = [0.0, 1.0, 2.5, 4.0, 7.0]


def distinct_values(n: int, seed: int) -> dict[str, float]:
    """n clips with distinct random values."""
    rng = random.Random(seed)
    return {f"c{i}": v for i, v in enumerate(rng.sample(range(10 * n), n))}


def level_values(n: int, seed: int) -> dict[str, float]:
    """n clips, each at one of LEVELS (every level used), plus noise far below `equal_within=0.1`."""
    rng = random.Random(seed)
    return {f"c{i}": LEVELS[i % len(LEVELS)] + rng.uniform(-0.01, 0.01) for i in range(n)}


def shuffled(values: dict[str, float], seed: int) -> list[str]:
    order = list(values)
    random.Random(seed).shuffle(order)
    return order


def state(r: Ranking) -> tuple:
    """Everything a page or a trainer sees of a ranking."""
    return r.tiers, r.placed, r.order, r.pending, r.interval, r.next_comparison(), r.comparisons_left


def answer_for(values: dict[str, float], clip: str, against: str, equal_within: float = 0.0) -> str:
    diff = values[clip] - values[against]
    return "equal" if abs(diff) <= equal_within else "better" if diff > 0 else "worse"


def pending_after(values: dict[str, float], clip: str, answers: int) -> Ranking:
    """Clips 0..9 with values 0..9 placed, then `clip` started and `answers` comparisons answered from `values`."""
    r, _ = insert_all(values, [f"p{i}" for i in range(10)])
    r.start(clip)
    for _ in range(answers):
        r.answer(answer_for(values, clip, r.next_comparison()))
    return r


PLACED_0_TO_9 = {f"p{i}": float(i) for i in range(10)} | {"x": 4.5}


def test_distinct_values_give_exactly_sorted_tiers():
    values = distinct_values(200, seed=1)
    r, _ = insert_all(values, shuffled(values, seed=2))
    assert r.tiers == [[c] for c in sorted(values, key=values.get)]
    assert r.placed == set(values) and r.pending is None and r.next_comparison() is None


def test_ties_give_one_tier_per_level():
    values = level_values(150, seed=3)
    r, _ = insert_all(values, shuffled(values, seed=4), equal_within=0.1)
    assert len(r.tiers) == len(LEVELS)
    for level, tier in zip(LEVELS, r.tiers):
        assert set(tier) == {c for c, v in values.items() if abs(v - level) < 0.1}


def test_comparisons_stay_within_the_binary_search_bound():
    assert [comparisons_needed(t) for t in range(1025)] == [math.ceil(math.log2(t + 1)) for t in range(1025)]
    values = distinct_values(500, seed=5)
    order = shuffled(values, seed=6)
    r, total = Ranking(), 0
    for clip in order:
        tiers = len(r.tiers)
        r.start(clip)
        assert r.comparisons_left == comparisons_needed(tiers)
        asked = 0
        while (against := r.next_comparison()) is not None:
            r.answer(answer_for(values, clip, against), against)
            asked += 1
            assert r.pending is None or r.comparisons_left <= comparisons_needed(tiers) - asked
        assert asked <= comparisons_needed(tiers)
        total += asked
    assert total == insert_all(values, order)[1]
    assert total <= sum(comparisons_needed(t) for t in range(500)) <= 500 * 9
    assert total < 500 * 499 / 2 / 25


def test_replay_gives_the_same_state_after_every_event():
    values = level_values(30, seed=7)
    r = Ranking()
    for clip in shuffled(values, seed=8):
        r.start(clip)
        while True:
            stored = [json.loads(json.dumps(event_to_dict(e))) for e in r.events]  # as a server stores them
            assert state(Ranking.replay(event_from_dict(d) for d in stored)) == state(r)
            against = r.next_comparison()
            if against is None:
                break
            r.answer(answer_for(values, clip, against, equal_within=0.1))
    assert len(r.tiers) == len(LEVELS)


def test_undo_in_the_middle_of_an_insertion():
    r = pending_after(PLACED_0_TO_9, "x", answers=1)
    before_second = state(r)
    n_events = len(r.events)
    r.answer(answer_for(PLACED_0_TO_9, "x", r.next_comparison()))
    assert r.pending == "x" and state(r) != before_second
    assert isinstance(r.undo(), Comparison)
    assert state(r) == before_second and len(r.events) == n_events
    assert r.undo() == Comparison("x", "p5", "worse")
    assert r.pending == "x" and r.interval == (0, 10) and r.next_comparison() == "p5"
    assert r.undo() == Start("x")
    assert r.pending is None and "x" not in r.placed and r.tiers == [[f"p{i}"] for i in range(10)]


def test_undo_reopens_a_finished_insertion():
    r = pending_after(PLACED_0_TO_9, "x", answers=2)  # 5 worse, 2 better: 4 is the last to ask
    before_last = state(r)
    assert r.interval == (3, 5) and r.next_comparison() == "p4"
    r.answer("better")
    assert r.pending is None and r.tier_of("x") == 5 and r.tiers[5] == ["x"]
    assert r.undo() == Comparison("x", "p4", "better")
    assert state(r) == before_last and "x" not in r.placed
    r.answer("equal", against="p4")  # a different answer this time: x joins p4's tier
    assert r.tiers[4] == ["p4", "x"] and len(r.tiers) == 10 and r.label("p4", "x") == 0.5


def test_undo_of_the_first_clip_and_back_to_empty():
    r = Ranking()
    r.start("a")
    assert r.tiers == [["a"]] and r.pending is None and r.events == (Start("a"),)
    assert r.undo() == Start("a")
    assert r.tiers == [] and r.placed == set() and r.events == ()
    r.start("a")
    assert r.tiers == [["a"]]

    values = level_values(25, seed=9)
    r, _ = insert_all(values, shuffled(values, seed=10), equal_within=0.1)
    r.start("new")
    r.answer("better")
    events = r.events
    for k in range(len(events) - 1, -1, -1):
        assert r.undo() == events[k]
        assert state(r) == state(Ranking.replay(events[:k]))
    assert r.tiers == [] and r.pending is None and r.events == ()
    with pytest.raises(ValueError, match="nothing to undo"):
        r.undo()


def test_cancel_leaves_the_clip_unplaced_and_undo_resumes_it():
    r = pending_after(PLACED_0_TO_9, "x", answers=1)
    interval = r.interval
    assert r.cancel() == Cancel("x")
    assert r.pending is None and "x" not in r.placed
    r.undo()
    assert r.pending == "x" and r.interval == interval
    r.cancel()
    r.start("x")  # may start again from the whole ordering
    assert r.interval == (0, 10)


def test_implied_pairs_agree_with_true_values():
    values = level_values(60, seed=11)
    r, asked = insert_all(values, shuffled(values, seed=12), equal_within=0.1)
    pairs = r.implied_pairs()
    n = 60
    assert len(pairs.a) == len(pairs.b) == len(pairs.labels) == n * (n - 1) // 2
    assert asked < len(pairs.labels)
    assert pairs.clips == r.order and sorted(pairs.clips) == sorted(values)
    assert np.all(pairs.a < pairs.b)
    assert len({frozenset((int(i), int(j))) for i, j in zip(pairs.a, pairs.b)}) == n * (n - 1) // 2
    level = {c: min(LEVELS, key=lambda lv: abs(lv - v)) for c, v in values.items()}  # the noise-free value
    for i, j, label in zip(pairs.a, pairs.b, pairs.labels):
        a, b = pairs.clips[i], pairs.clips[j]
        expected = 1.0 if level[b] > level[a] else 0.0 if level[b] < level[a] else 0.5
        assert label == expected == r.label(a, b) == 1.0 - r.label(b, a)
    assert set(np.unique(pairs.labels)) == {0.0, 0.5, 1.0}
    assert r.label("c0", "unknown") is None and r.label("unknown", "c0") is None
    again = Ranking.replay(r.events).implied_pairs()
    assert again.clips == pairs.clips and all(np.array_equal(x, y) for x, y in zip(again[1:], pairs[1:]))


def test_invalid_input_raises_one_line_value_errors():
    r = Ranking()
    errors = []

    def check(match: str, call, *args, **kwargs) -> None:
        with pytest.raises(ValueError, match=match) as info:
            call(*args, **kwargs)
        errors.append(str(info.value))

    assert r.next_comparison() is None and r.interval is None and r.comparisons_left == 0
    check("no clip is being inserted", r.answer, "better")
    check("no clip is being inserted", r.cancel)
    check("no clip is being inserted", r.apply, Comparison("a", "b", "better"))
    r.start("a")
    r.start("b")
    check("answer must be one of", r.answer, "maybe")
    check("answer must be one of", Comparison, "b", "a", "BETTER")
    check("already placed", r.start, "a")
    check("'b' is still being inserted", r.start, "c")
    check("unknown clip 'zzz'", r.answer, "better", against="zzz")
    check("not the clip being inserted", r.apply, Comparison("c", "a", "better"))
    check("not the clip being inserted", r.apply, Cancel("c"))
    check("compared with itself", Comparison, "b", "b", "equal")
    check("non-empty string", Start, "")
    check("non-empty string", Start, 7)
    check("unknown ranking event", event_from_dict, {"kind": "place", "clip": "a"})
    check("has the fields clip, against, answer", event_from_dict, {"kind": "comparison", "clip": "a"})
    check("has no value", insert_all, {"a": 1.0}, ["a", "b"])
    check("already placed", insert_all, {"a": 1.0}, ["a", "a"])
    check("nothing to undo", Ranking().undo)
    r.answer("better")  # b placed above a
    r.start("c")
    r.answer("worse", against="b")
    check("outside the search interval", r.answer, "better", against="b")  # a stale page asking again
    check("already placed", Ranking.replay, [Start("a"), Start("a")])
    assert r.pending == "c" and r.interval == (0, 1) and len(r.events) == 5  # failed calls changed nothing
    assert all("\n" not in e for e in errors)


def test_two_thousand_clips_and_all_their_pairs_in_seconds():
    n = 2000
    values = distinct_values(n, seed=13)
    began = time.perf_counter()
    r, asked = insert_all(values, shuffled(values, seed=14))
    pairs = r.implied_pairs()
    elapsed = time.perf_counter() - began
    assert elapsed < 10
    assert len(pairs.labels) == n * (n - 1) // 2 and pairs.a.dtype == pairs.b.dtype == np.int32
    assert asked <= sum(comparisons_needed(t) for t in range(n))
    v = np.array([values[c] for c in pairs.clips])
    assert np.array_equal(pairs.labels, (v[pairs.b] > v[pairs.a]).astype(np.float32))
