"""The simulated teacher: each B-Pref parameter does what it says, and user-written rewards load and run."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from framework.envs import make_env
from framework.runtime import UsageError
from framework.teacher import EQUAL, SimulatedTeacher, load_reward_function

N, T = 20_000, 10


def random_pairs(seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, T)) * scale, rng.normal(size=(N, T)) * scale


def test_perfect_teacher_agrees_with_return_ordering():
    a, b = random_pairs()
    labels = SimulatedTeacher().label(a, b)
    np.testing.assert_array_equal(labels, (b.sum(1) > a.sum(1)).astype(float))


def test_mistake_flips_that_fraction():
    a, b = random_pairs()
    correct = (b.sum(1) > a.sum(1)).astype(float)
    for eps in (0.1, 0.3):
        labels = SimulatedTeacher(eps_mistake=eps, seed=1).label(a, b)
        assert abs(np.mean(labels != correct) - eps) < 0.015


def test_beta_follows_bradley_terry():
    a, b = random_pairs()
    diff = b.sum(1) - a.sum(1)
    agreement = {}
    for beta in (0.001, 1.0, 100.0):
        labels = SimulatedTeacher(beta=beta, seed=2).label(a, b)
        p_b = 1 / (1 + np.exp(np.clip(-beta * diff, -50, 50)))
        # the empirical rate of "B" answers matches the model's mean probability
        assert abs(labels.mean() - p_b.mean()) < 0.015
        agreement[beta] = np.mean(labels == (diff > 0))
        expected = np.mean(np.where(diff > 0, p_b, 1 - p_b))
        assert abs(agreement[beta] - expected) < 0.015
    # beta really changes the answers: near-random, noisy, near-perfect
    assert agreement[0.001] < 0.52 < 0.7 < agreement[1.0] < 0.9 < 0.98 < agreement[100.0]


def test_gamma_weighs_the_end_of_a_segment_more():
    a, b = np.zeros((1, T)), np.zeros((1, T))
    a[0, 0] = 1.1  # A is better overall but its reward comes first
    b[0, -1] = 1.0  # B's reward comes last
    assert SimulatedTeacher(gamma=1.0).label(a, b)[0] == 0.0
    assert SimulatedTeacher(gamma=0.9).label(a, b)[0] == 1.0
    # and the weights are gamma^(T-1-t): with gamma=0.99 the 1.1 at t=0 weighs 1.1*0.99^9 = 1.005 > 1.0
    assert SimulatedTeacher(gamma=0.99).label(a, b)[0] == 0.0


def test_myopia_weighs_from_the_last_real_step_of_a_segment():
    """A 20-step clip whose episode ended after 10 steps (3 per step: worth 30) against a full one worth 10, all at
    its last step: the padding after the end is not the most recent part of the clip."""
    a, b = np.zeros((1, 20)), np.zeros((1, 20))
    a[0, :10], b[0, -1] = 3.0, 10.0
    mask_a, mask_b = (np.arange(20) < 10).astype(float)[None], np.ones((1, 20))
    myopic = SimulatedTeacher(gamma=0.9)
    assert myopic.label(a, b, 1.0, mask_a, mask_b)[0] == 0.0  # 3 x (1 + 0.9 + ... + 0.9^9) = 19.5 > 10
    assert myopic.label(a, b)[0] == 1.0  # without the mask the 10 padded steps would count as the latest: 6.8 < 10
    # a segment without padding is weighed as before: step t of T by gamma^(T-1-t)
    x, y = random_pairs(3)
    full = np.ones((N, T))
    np.testing.assert_array_equal(
        myopic.label(x[:500], y[:500]), myopic.label(x[:500], y[:500], 1.0, full[:500], full[:500])
    )


def test_thresholds_on_tasks_whose_returns_are_negative_or_zero():
    """Costs (Reacher, Pusher): the skip teacher answers every pair, as B-Pref's does; the equal teacher ties pairs
    within 10 % of the scale's magnitude. A zero scale skips and ties nothing."""
    a = np.array([[-4.0] * T, [-4.0] * T, [-1.0] * T])
    b = np.array([[-4.2] * T, [-1.0] * T, [-1.0] * T])  # returns: -40 vs -42, -40 vs -10, -10 vs -10
    skip = SimulatedTeacher(skip_threshold=0.1)
    np.testing.assert_array_equal(skip.label(a, b, return_scale=-40.0), [0.0, 1.0, 0.0])  # (a tie goes to A)
    np.testing.assert_array_equal(SimulatedTeacher(equal_threshold=0.1).label(a, b, -40.0), [EQUAL, 1.0, EQUAL])
    for teacher in (skip, SimulatedTeacher(equal_threshold=0.1)):
        assert set(teacher.label(a, b, 0.0)) <= {0.0, 1.0}
    rewards = -np.abs(random_pairs(4)[0])  # on a whole distribution of negative returns
    assert not np.isnan(SimulatedTeacher(skip_threshold=0.5).label(rewards, rewards[::-1], -8.0)).any()


def test_skip_threshold_is_relative_to_the_return_scale():
    a = np.array([[0.1] * T, [0.1] * T, [1.0] * T])
    b = np.array([[0.2] * T, [0.9] * T, [0.1] * T])  # max returns: 2, 9, 10
    teacher = SimulatedTeacher(skip_threshold=0.5)
    labels = teacher.label(a, b, return_scale=10.0)  # skip when neither return exceeds 5
    assert math.isnan(labels[0]) and labels[1] == 1.0 and labels[2] == 0.0
    assert not np.isnan(teacher.label(a, b, return_scale=1.0)).any()  # now only returns <= 0.5 are skipped


def test_equal_threshold_gives_half_labels():
    a = np.array([[1.0] * T, [1.0] * T])
    b = np.array([[1.02] * T, [1.5] * T])  # return differences: 0.2 and 5
    teacher = SimulatedTeacher(equal_threshold=0.1)
    np.testing.assert_array_equal(teacher.label(a, b, return_scale=10.0), [EQUAL, 1.0])  # "equal" below 1


@pytest.mark.parametrize(
    "kwargs", [{"beta": 0}, {"beta": -1}, {"gamma": 0}, {"gamma": 1.5}, {"eps_mistake": 2}, {"skip_threshold": -1}]
)
def test_bad_teacher_parameters_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        SimulatedTeacher(**kwargs)


REWARD_FILE = textwrap.dedent(
    """
    def hop_backwards(qvel):
        return -float(qvel[0])

    def everything(obs, action, next_obs, qpos, qvel, info):
        return float(len(obs) + len(action) + len(next_obs) + len(qpos) + len(qvel) + ("x_position" in info))

    def with_kwargs(**step):
        return float(sorted(step) == ["action", "info", "next_obs", "obs", "qpos", "qvel"])

    def bad_param(obs, speed):
        return 0.0

    def broken(obs):
        return 1 / 0

    def not_a_number(obs):
        return float("nan")

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def test_custom_reward_from_file_is_used_per_step(reward_file):
    fn = load_reward_function(f"{reward_file}:hop_backwards")
    env = make_env("Hopper-v5", seed=0, teacher_reward=fn)
    env.reset(seed=0)
    for _ in range(5):
        _, _, _, _, info = env.step(env.action_space.sample())
        assert info["teacher_reward"] == pytest.approx(-env.unwrapped.data.qvel[0])
    everything = load_reward_function(f"{reward_file}:everything")
    env = make_env("Hopper-v5", seed=0, teacher_reward=everything)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["teacher_reward"] == 11 + 3 + 11 + 6 + 6 + 1
    assert (
        load_reward_function(f"{reward_file}:with_kwargs")(obs=0, action=0, next_obs=0, qpos=0, qvel=0, info={}) == 1.0
    )


def test_custom_reward_drives_the_teacher(reward_file):
    """A teacher on 'hop backwards' prefers the segment that moves backwards, whatever the env's reward says."""
    fn = load_reward_function(f"{reward_file}:hop_backwards")
    backwards = [fn(qvel=np.array([-1.0])) for _ in range(T)]
    forwards = [fn(qvel=np.array([2.0])) for _ in range(T)]
    assert SimulatedTeacher().label(np.array([forwards]), np.array([backwards]))[0] == 1.0


def test_custom_reward_from_module(tmp_path, monkeypatch, reward_file):
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward_function("my_rewards:hop_backwards")
    assert fn(qvel=np.array([3.0])) == -3.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "must look like"),
        ("missing/file.py:f", "does not exist"),
        ("no_such_module_xyz:f", "could not import"),
        ("{file}:nope", "has no function 'nope'"),
        ("{file}:NOT_CALLABLE", "not a function"),
        ("{file}:bad_param", "parameter(s) speed"),
    ],
)
def test_bad_reward_specs_are_usage_errors(reward_file, spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_reward_function(spec.format(file=reward_file))


def test_failing_reward_function_reports_where(reward_file):
    with pytest.raises(UsageError, match=r"ZeroDivisionError.*my_rewards.py:\d+"):
        load_reward_function(f"{reward_file}:broken")(obs=1)
    with pytest.raises(UsageError, match="finite"):
        load_reward_function(f"{reward_file}:not_a_number")(obs=1)


def test_simulated_teacher_answers_query_batches():
    from framework.teacher import QueryBatch

    a, b = random_pairs()
    mask = np.ones_like(a)
    physics = np.zeros(a.shape + (3,))
    queries = QueryBatch("Hopper-v5", 100, a, b, mask, mask, physics, physics)
    assert len(queries) == N
    np.testing.assert_array_equal(SimulatedTeacher().answer(queries), (b.sum(1) > a.sum(1)).astype(float))


def bpref_get_label(r_1, r_2, beta, gamma, eps_mistake, thres_skip, thres_equal, rng):
    """B-Pref's `RewardModel.get_label` (rll-research/BPref, reward_model.py) restated on per-step rewards (n, T):
    labels of the pairs it keeps (1: the second segment better, 0: the first, -1: equally preferable) and which pairs
    it keeps. beta <= 0 is B-Pref's perfectly rational teacher."""
    sum_1, sum_2 = r_1.sum(1), r_2.sum(1)
    kept = np.ones(len(r_1), bool)
    if thres_skip > 0:
        kept = np.maximum(sum_1, sum_2) > thres_skip
        r_1, r_2, sum_1, sum_2 = r_1[kept], r_2[kept], sum_1[kept], sum_2[kept]
    margin = np.abs(sum_1 - sum_2) < thres_equal
    weighted_1, weighted_2 = r_1.copy(), r_2.copy()
    for index in range(r_1.shape[1] - 1):  # the first index + 1 steps shrink once more each time
        weighted_1[:, : index + 1] *= gamma
        weighted_2[:, : index + 1] *= gamma
    sum_1, sum_2 = weighted_1.sum(1), weighted_2.sum(1)
    if beta > 0:
        p_second = 1.0 / (1.0 + np.exp(-beta * (sum_2 - sum_1)))
        labels = (rng.random(len(sum_1)) < p_second).astype(int)
    else:
        labels = (sum_1 < sum_2).astype(int)
    noise = rng.random(len(labels)) <= eps_mistake
    labels[noise] = 1 - labels[noise]
    labels[margin] = -1
    return labels, kept


@pytest.mark.parametrize(
    "name, ours, theirs",
    [
        ("oracle", {}, {}),
        ("myopic", {"gamma": 0.9}, {"gamma": 0.9}),
        ("equal", {"equal_threshold": 0.1}, {"thres_equal": 0.1 * 5.0}),
        ("skip", {"skip_threshold": 1.0}, {"thres_skip": 1.0 * 5.0}),  # a coefficient that skips a quarter
        ("stoch", {"beta": 1.0}, {"beta": 1.0}),
        ("mistake", {"eps_mistake": 0.1}, {"eps_mistake": 0.1}),
    ],
)
def test_labels_match_bprefs_get_label_on_20000_pairs(name, ours, theirs):
    """B-Pref's six teachers on the same 20,000 pairs (positive typical return 5 per segment: B-Pref's thresholds are
    its coefficient times that scale): identical labels for the deterministic ones, the same label distribution for
    the random ones (agreement with the rational label, share of pairs the second segment wins, within 1 %)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 1.0, size=(N, T)), rng.normal(0.5, 1.0, size=(N, T))
    mine = SimulatedTeacher(**ours, seed=4).label(a, b, return_scale=5.0)
    settings = {"beta": -1.0, "gamma": 1.0, "eps_mistake": 0.0, "thres_skip": 0.0, "thres_equal": 0.0} | theirs
    reference, kept = bpref_get_label(a, b, **settings, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(~np.isnan(mine), kept)  # skipped: the same pairs
    mine = np.where(mine[kept] == EQUAL, -1, mine[kept]).astype(int)
    if name in ("stoch", "mistake"):
        rational = (b.sum(1) > a.sum(1))[kept].astype(int)
        assert abs(np.mean(mine == rational) - np.mean(reference == rational)) < 0.01
        assert abs(np.mean(mine == 1) - np.mean(reference == 1)) < 0.01
    else:
        np.testing.assert_array_equal(mine, reference)
    if name == "skip":
        assert 0.2 < 1 - kept.mean() < 0.3
    if name == "equal":
        assert 0.01 < np.mean(mine == -1) < 0.2


# ------------------------------------------------------------------------------------------------------- ranking
def query_batch(n: int, seed: int, step: int = 100):
    from framework.teacher import QueryBatch

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, T)), rng.normal(size=(n, T))
    mask = np.ones_like(a)
    physics = rng.normal(size=a.shape + (3,))  # (the keys are digests of the physics)
    return QueryBatch("Hopper-v5", step, a, b, mask, mask, physics, physics)


def test_a_ranking_teacher_places_every_clip_and_its_labels_and_implied_pairs_follow_the_returns():
    from framework.teacher import query_keys

    teacher = SimulatedTeacher(ranking=True, ranking_pairs_per_clip=5)
    returns, bound = {}, 0
    for session in range(3):  # 3 sessions of 40 queries: 240 clips
        queries = query_batch(40, session, step=100 * session)
        keys = query_keys(queries)
        labels = teacher.answer(queries)
        np.testing.assert_array_equal(labels, (queries.rewards_b.sum(1) > queries.rewards_a.sum(1)).astype(float))
        for key, ra, rb in zip(keys, queries.rewards_a.sum(1), queries.rewards_b.sum(1)):
            returns[(key, "left")], returns[(key, "right")] = ra, rb
        bound += sum(int(placed).bit_length() for placed in range(2 * 40 * session, 2 * 40 * (session + 1)))
        assert teacher.comparisons <= bound  # binary insertion: ceil(log2(tiers + 1)) per clip at most
    assert teacher.comparisons > 240 * 5  # (and not fewer than about log2 of the clips placed)
    order = [tuple(c.rsplit(":", 1)) for tier in teacher.ranking.tiers for c in tier]
    assert [returns[c] for c in order] == sorted(returns.values())  # worst first
    known = {key for key, _ in returns}
    pairs = teacher.implied(known)
    assert teacher.implied(known) == []  # each pair is handed out once
    assert 5 * (240 - 6) <= len(pairs) <= 5 * 240
    for ka, sa, kb, sb, label in pairs:
        assert ka != kb and label == float(returns[(kb, sb)] > returns[(ka, sa)])
    assert len({frozenset([(p[0], p[1]), (p[2], p[3])]) for p in pairs}) == len(pairs)


def test_implied_pairs_wait_for_their_queries_and_all_pairs_with_zero():
    teacher = SimulatedTeacher(ranking=True, ranking_pairs_per_clip=0)
    from framework.teacher import query_keys

    queries = query_batch(10, 7)
    keys = query_keys(queries)
    teacher.answer(queries)
    assert teacher.implied(set()) == []  # no query taken yet: nothing
    first = teacher.implied(set(keys[:4]))
    assert len(first) == 8 * 7 // 2 - 4  # every pair of the 8 clips but the queries' own
    assert len(teacher.implied(set(keys))) == 20 * 19 // 2 - 10 - len(first)


def test_a_ranking_teacher_restored_from_its_state_answers_as_the_uninterrupted_one():
    import pickle

    from framework.teacher import query_keys

    straight = SimulatedTeacher(ranking=True, eps_mistake=0.2, seed=3)
    first, second = query_batch(30, 1), query_batch(30, 2, step=200)
    straight.answer(first)
    state = pickle.loads(pickle.dumps(straight.state_dict()))
    restored = SimulatedTeacher(ranking=True, eps_mistake=0.2, seed=3)
    restored.load_state_dict(state)
    known = set(query_keys(first) + query_keys(second))
    np.testing.assert_array_equal(straight.answer(second), restored.answer(second))
    assert straight.implied(known) == restored.implied(known) and straight.comparisons == restored.comparisons
