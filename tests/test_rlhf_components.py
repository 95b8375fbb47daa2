"""The inline pieces of the preference-based scripts, tested through their public names.

Every test is parametrised over the scripts that carry a copy of the pieces, so the copies cannot drift apart.
"""

from __future__ import annotations

import importlib
import inspect
import math

import numpy as np
import pytest
import torch

from framework.labels import reward_correlations
from framework.runtime import UsageError
from framework.teacher import SimulatedTeacher

SCRIPTS = ["framework.sac_rlhf", "framework.pref_ppo"]

# The pieces each script carries its own copy of (CleanRL style: every detail of an algorithm in its file).
SHARED_PIECES = [
    "EnsembleLinear",
    "RewardEnsemble",
    "preference_probabilities",
    "PreferenceBuffer",
    "select_queries",
    "surf_crop",
    "surf_pseudo_labels",
    "rune_bonus",
    "knn_state_entropy",
    "build_label_schedule",
    "train_reward_model",
    "choose_queries",
    "query_batch",
    "ask_teacher",
    "learn_from_labels",
    "exchange_with_teacher",
]


@pytest.fixture(params=SCRIPTS)
def algo(request):
    return importlib.import_module(request.param)


# Module-level names both scripts define on purpose differently: name -> reason.
INTENDED_DIFFERENT_PIECES = {
    "Args": "each algorithm's flags (the shared ones are compared flag by flag below)",
    "validate": "each algorithm's flags",
    "Progress": "SAC counts episodes and resets its critics once; PPO counts rollouts and schedules evaluations",
    "learned_and_true_rewards": "SAC relabels its whole replay buffer after a session; PPO rewards each rollout "
    "when it is collected, so it only reads the recent segments",
    "main": "the algorithms",
}


def top_level_sources(module) -> dict[str, str]:
    """name -> source of every function and class defined at the top of a script."""
    import ast

    text = inspect.getsource(module)
    return {
        node.name: ast.get_source_segment(text, node, padded=True)
        for node in ast.parse(text).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def test_every_piece_both_scripts_define_is_identical_unless_listed_with_a_reason():
    """The copies in sac_rlhf.py and pref_ppo.py must not drift apart: every function and class defined in both is
    the same source, line for line, except the listed ones."""
    first, second = (top_level_sources(importlib.import_module(m)) for m in SCRIPTS)
    both = set(first) & set(second)
    assert set(SHARED_PIECES) <= both - set(INTENDED_DIFFERENT_PIECES)
    drifted = sorted(name for name in both - set(INTENDED_DIFFERENT_PIECES) if first[name] != second[name])
    assert not drifted, f"copies differ between {SCRIPTS}: {drifted}"
    stale = sorted(name for name in INTENDED_DIFFERENT_PIECES if name not in both or first[name] == second[name])
    assert not stale, f"listed as different but identical or gone: {stale}"
    identical = sum(first[name].count("\n") + 1 for name in both - set(INTENDED_DIFFERENT_PIECES))
    assert identical >= 380, identical  # the lines under this test (so a piece cannot leave it unnoticed)


# Flags two scripts share but deliberately give another default or help text: (script, script, flag) -> reason.
# `exp_name` differs everywhere: each script is named after itself.
INTENDED_DIFFERENCES = {
    ("sac_rlhf", "pref_ppo", "hidden_size"): "SAC's 256 and PPO's 64 units, CleanRL's defaults for each (help: SAC has "
    "two critics, PPO one)",
    ("sac_rlhf", "pref_ppo", "depth"): "help only: SAC has two critics, PPO one",
    ("sac_rlhf", "pref_ppo", "eval_frequency"): "off-policy runs are 10x shorter in env steps than on-policy ones "
    "(as in sac.py and ppo.py)",
    ("sac_rlhf", "pref_ppo", "reward_hidden_size"): "128 was measured with PEBBLE (ranks held-out pairs as well as 256 "
    "in less than half the time); PrefPPO's measured results used 256",
    ("sac_rlhf", "pref_ppo", "checkpoint_frequency"): "help only: SAC saves at an episode end, PPO after a rollout",
    ("sac_rlhf", "pref_ppo", "total_timesteps"): "help only: PPO counts the steps of all parallel envs",
    ("sac_rlhf", "pref_ppo", "unsupervised_exploration"): "help only: SAC explores after its random steps, PPO from "
    "the start",
    (
        "sac_rlhf",
        "pref_ppo",
        "unsupervised_steps",
    ): "help only: SAC explores after its random steps, PPO from the start",
    ("sac_rlhf", "sac", "learning_starts"): "PEBBLE's 1000 random steps are followed by pre-exploration; the oracle "
    "starts learning at 5000, where the benchmarks compare them",
    ("sac_rlhf", "sac", "eval_frequency"): "help only: the preference script says which reward it evaluates on",
    ("sac_rlhf", "sac", "total_timesteps"): "help only: pre-exploration counts in the budget",
    ("pref_ppo", "ppo", "eval_frequency"): "help only: the preference script says which reward it evaluates on",
    ("pref_ppo", "ppo", "total_timesteps"): "help only: pre-exploration counts in the budget",
    ("pref_ppo", "ppo", "learning_rate"): "help only: the reward model has its own learning rate",
    ("pref_ppo", "ppo", "norm_obs"): "help only: the reward model sees raw observations",
    ("pref_ppo", "ppo", "norm_reward"): "help only: the reward scaled is the learned one",
}
SHARED_FLAG_PAIRS = [("sac_rlhf", "pref_ppo"), ("sac_rlhf", "sac"), ("pref_ppo", "ppo")]


def flag_table(script: str) -> dict[str, tuple[str, str]]:
    """flag -> (default, help text) of `framework/<script>.py`'s Args, the help as tyro shows it (the docstring)."""
    import ast
    import dataclasses

    args = importlib.import_module(f"framework.{script}").Args
    helps: dict[str, str] = {}
    for cls in inspect.getmro(args):
        if dataclasses.is_dataclass(cls):
            body = ast.parse(inspect.getsource(cls)).body[0].body
            for field, doc in zip(body, body[1:]):
                if (
                    isinstance(field, ast.AnnAssign)
                    and isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                ):
                    helps.setdefault(field.target.id, " ".join(doc.value.value.split()))
    return {f.name: (repr(getattr(args(), f.name)), helps.get(f.name)) for f in dataclasses.fields(args)}


@pytest.mark.parametrize("first, second", SHARED_FLAG_PAIRS)
def test_shared_flags_have_the_same_default_and_help_unless_listed_with_a_reason(first, second):
    a, b = flag_table(first), flag_table(second)
    shared = sorted(set(a) & set(b) - {"exp_name"})
    assert len(shared) >= 25
    drifted = [
        (name, a[name], b[name])
        for name in shared
        if a[name] != b[name] and (first, second, name) not in INTENDED_DIFFERENCES
    ]
    assert not drifted, f"flags of {first}.py and {second}.py differ (list them with a reason if intended): {drifted}"
    stale = [k for k in INTENDED_DIFFERENCES if k[:2] == (first, second) and k[2] in shared and a[k[2]] == b[k[2]]]
    assert not stale, f"listed as different but now the same: {stale}"
    unknown = [k for k in INTENDED_DIFFERENCES if k[:2] == (first, second) and k[2] not in shared]
    assert not unknown, f"listed but not a flag of both scripts: {unknown}"
    assert all(help_text for _, help_text in a.values()), "every flag has a help text"


def test_progress_fields_both_scripts_share_mean_the_same():
    import dataclasses

    a, b = (
        {f.name: (f.type, repr(f.default)) for f in dataclasses.fields(importlib.import_module(m).Progress)}
        for m in SCRIPTS
    )
    shared = set(a) & set(b)
    assert len(shared) >= 7 and all(a[name] == b[name] for name in shared)


CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------- reward ensemble
def test_ensemble_is_one_batched_op_equal_to_each_member(algo):
    torch.manual_seed(0)
    ens = algo.RewardEnsemble(in_dim=5, members=4, hidden_size=16, depth=2)
    x = torch.randn(7, 5)
    out = ens(x)
    assert out.shape == (4, 7)
    layers = [m for m in ens.net if isinstance(m, algo.EnsembleLinear)]
    for member in range(4):  # the same computation done member by member
        h = x
        for i, layer in enumerate(layers):
            h = h @ layer.weight[member] + layer.bias[member]
            h = torch.nn.functional.leaky_relu(h) if i < len(layers) - 1 else torch.tanh(h)
        torch.testing.assert_close(out[member], h.squeeze(-1))
    assert out.std(0).mean() > 0, "members are initialised differently"
    assert (out.abs() <= 1).all(), "rewards are tanh-bounded"


def test_predict_turns_dropout_off(algo):
    """Relabeling must give the same reward for the same input (dropout off), whatever mode the model is in."""
    ens = algo.RewardEnsemble(in_dim=5, members=3, hidden_size=32, depth=2, dropout=0.5)
    ens.train()
    x = torch.randn(50, 5)
    assert not torch.equal(ens(x), ens(x)), "dropout is active while training"
    mean1, std1 = ens.predict(x)
    mean2, std2 = ens.predict(x)
    assert torch.equal(mean1, mean2) and torch.equal(std1, std2)
    assert ens.training, "predict leaves the training mode as it found it"


def test_segment_returns_ignore_masked_steps(algo):
    ens = algo.RewardEnsemble(in_dim=3, members=2, hidden_size=8, depth=1)
    seg = torch.randn(4, 6, 3)
    mask = torch.ones(4, 6)
    mask[:, 3:] = 0
    changed = seg.clone()
    changed[:, 3:] = 100.0  # whatever lies beyond an episode end must not count
    torch.testing.assert_close(ens.segment_returns(seg, mask), ens.segment_returns(changed, mask))
    torch.testing.assert_close(
        ens.segment_returns(seg, mask), (ens(seg.reshape(-1, 3)).reshape(2, 4, 6) * mask).sum(-1)
    )


# ----------------------------------------------------------------------------------------------- preference buffer
def test_preference_buffer_stores_copies_and_round_trips(algo):
    rng = np.random.default_rng(0)
    prefs = algo.PreferenceBuffer(capacity=100, seg_len=4, in_dim=2, val_fraction=0.25)
    seg_a, seg_b = np.ones((80, 4, 2), np.float32), np.zeros((80, 4, 2), np.float32)
    masks = np.ones((80, 4), np.float32)
    labels = rng.choice([0.0, 0.5, 1.0], 80).astype(np.float32)
    prefs.add(seg_a, masks, seg_b, masks, labels, step=123, rng=rng)
    seg_a[:] = -5  # the source buffer is overwritten later: stored labels keep their own data
    assert (prefs.seg_a[:80] == 1).all() and (prefs.steps[:80] == 123).all()
    train, val = prefs.split()
    assert len(train) + len(val) == 80 and 10 <= len(val) <= 30 and not set(train) & set(val)
    prefs.add(seg_a[:30], masks[:30], seg_b[:30], masks[:30], labels[:30], 1, rng)  # past its capacity: it grows
    assert (
        prefs.size == 110
        and prefs.capacity >= 110
        and (prefs.seg_a[:80] == 1).all()
        and (prefs.seg_a[80:110] == -5).all()
    )

    restored = algo.PreferenceBuffer(capacity=100, seg_len=4, in_dim=2)
    restored.load_state_dict(prefs.state_dict())
    assert restored.size == 110
    for key, value in prefs.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)


# ------------------------------------------------------------------------------------------------- query selection
def test_select_queries_methods(algo):
    rng = np.random.default_rng(0)
    probs = torch.tensor(
        [
            [0.5, 0.9, 0.1, 0.52, 0.99],
            [0.5, 0.1, 0.1, 0.48, 0.99],
            [0.5, 0.5, 0.1, 0.50, 0.99],
        ]
    )
    assert list(algo.select_queries("disagreement", probs, 1, rng)) == [1]  # members disagree most on pair 1
    assert set(algo.select_queries("entropy", probs, 2, rng)) == {0, 3}  # mean preference closest to 0.5
    uniform = algo.select_queries("uniform", probs, 5, rng)
    assert sorted(uniform) == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="unknown query sampling method 'random'"):
        algo.select_queries("random", probs, 1, rng)


def test_entropy_is_over_the_two_segment_returns(algo):
    """Entropy sampling ranks pairs by the entropy of P(B better) = softmax over the two segment returns."""
    ens = algo.RewardEnsemble(in_dim=2, members=1, hidden_size=8, depth=1)
    seg_a, seg_b = torch.randn(30, 5, 2), torch.randn(30, 5, 2)
    mask = torch.ones(30, 5)
    probs = algo.preference_probabilities(ens, seg_a, mask, seg_b, mask)
    returns = torch.stack([ens.segment_returns(seg_a, mask)[0], ens.segment_returns(seg_b, mask)[0]], 1)
    torch.testing.assert_close(probs[0], torch.softmax(returns, 1)[:, 1])
    chosen = algo.select_queries("entropy", probs, 3, np.random.default_rng(0))
    gap = (returns[:, 0] - returns[:, 1]).abs()
    assert set(chosen) == set(torch.topk(-gap, 3).indices.tolist())


# ------------------------------------------------------------------------------------------------------ SURF, RUNE
def test_surf_crop_takes_contiguous_windows(algo):
    rng = np.random.default_rng(1)
    seg = np.arange(6 * 10, dtype=np.float32).reshape(6, 10, 1)
    mask = np.ones((6, 10), np.float32)
    cropped, cropped_mask = algo.surf_crop(seg, mask, crop=3, rng=rng, length=8)
    assert cropped.shape == (6, 8, 1) and cropped_mask.shape == (6, 8)
    assert (np.diff(cropped[..., 0], axis=1) == 1).all(), "a window of consecutive steps"
    starts = cropped[:, 0, 0] - np.arange(6) * 10
    assert ((0 <= starts) & (starts <= 2)).all() and len(set(starts)) > 1, "independent offsets"
    lengths = {algo.surf_crop(seg, mask, 3, rng)[0].shape[1] for _ in range(50)}
    assert lengths == {7, 8, 9, 10}


def test_surf_pseudo_labels_only_when_confident(algo):
    probs = torch.tensor([[0.999, 0.6, 0.001, 0.995], [0.998, 0.7, 0.002, 0.90]])
    labels, confident = algo.surf_pseudo_labels(probs, tau=0.99)
    assert labels.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert confident.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_rune_bonus_decays(algo):
    std = torch.tensor([0.2, 0.4])
    torch.testing.assert_close(algo.rune_bonus(std, 0.05, 1e-3, 0), 0.05 * std)
    torch.testing.assert_close(algo.rune_bonus(std, 0.05, 1e-3, 1000), 0.05 * (1 - 1e-3) ** 1000 * std)
    assert algo.rune_bonus(std, 0.05, 1e-3, 5000).sum() < algo.rune_bonus(std, 0.05, 1e-3, 100).sum()


# ------------------------------------------------------------------------------------------------------ k-NN entropy
def test_knn_state_entropy_matches_brute_force(algo):
    gen = torch.Generator().manual_seed(0)
    all_obs = torch.randn(3000, 4, generator=gen)
    obs = all_obs[:50]  # states that are in the set themselves: their own distance 0 is excluded
    got = algo.knn_state_entropy(obs, all_obs, k=5, chunk=700)
    brute = np.sort(np.linalg.norm(obs.numpy()[:, None] - all_obs.numpy()[None], axis=-1), axis=1)[:, 5]
    np.testing.assert_allclose(got.numpy(), brute, rtol=1e-4)
    # spread-out states score higher than clustered ones
    assert algo.knn_state_entropy(obs * 10, all_obs * 10, 5).mean() > got.mean()


# ---------------------------------------------------------------------------------------------------- label schedule
@pytest.mark.parametrize("kind", ["linear", "exponential", "rl-teacher"])
def test_label_schedules_respect_the_budget(algo, kind):
    sessions = algo.build_label_schedule(
        kind,
        first_step=5000,
        total_timesteps=200_000,
        total_labels=1000,
        labels_per_session=100,
        feedback_frequency=10_000,
        growth=1.5,
        pretrain_labels=250,
    )
    steps, counts = zip(*sessions)
    assert steps[0] == 5000 and all(5000 <= s < 200_000 for s in steps) and list(steps) == sorted(steps)
    assert sum(counts) <= 1000 and all(c > 0 for c in counts)
    gaps = np.diff(steps)
    if kind == "linear":
        assert sum(counts) == 1000 and set(counts) == {100} and set(gaps) == {10_000}
    if kind == "exponential":
        assert set(counts) == {100} and all(b > a for a, b in zip(gaps, gaps[1:]))
    if kind == "rl-teacher":
        assert counts[0] == 250 and sum(counts) >= 900
        assert counts[1] > counts[-1], "the label rate decays"


# ----------------------------------------------------------------------------------------------------- replay buffer
def test_replay_buffer_segments_stop_at_episode_ends():
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=100, obs_dim=1, action_dim=1, physics_dim=2, device=CPU)
    for t in range(40):
        end = t in (9, 24)  # episodes of 10, 15 and 15+ steps
        rb.add([t], [t + 1], [0.0], 1.0, 2.0, end, end, np.array([t, -t]))
    seg = rb.sample_segments(200, 8, np.random.default_rng(0))
    for obs, mask, rewards, physics in zip(seg["obs"][..., 0], seg["mask"], seg["teacher_rewards"], seg["physics"]):
        assert (np.diff(obs) == 1).all()
        ended = [i for i, o in enumerate(obs) if o in (9, 24)]
        expected = np.ones(8) if not ended else (np.arange(8) <= ended[0]).astype(float)
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(rewards, 2.0 * expected)
        np.testing.assert_array_equal(physics[:, 0], obs)


def test_replay_buffer_wraps_around():
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=10, obs_dim=1, action_dim=1, physics_dim=1, device=CPU)
    for t in range(25):
        rb.add([t], [t + 1], [0.0], 0.0, 0.0, False, False, None)
    assert rb.size == 10 and rb.pos == 5
    seg = rb.sample_segments(50, 4, np.random.default_rng(0))
    assert seg["obs"].min() >= 15 and (np.diff(seg["obs"][..., 0], axis=1) == 1).all(), "oldest-to-newest order"


def test_recent_queries_come_from_the_last_steps_stored_and_the_rest_is_unchanged():
    """--query-recent-steps: a wrapped replay buffer's segments lie within its last N steps (at least one segment's
    worth), and PrefPPO's store gives its newest segments; 0 draws what it drew before the option existed."""
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=100, obs_dim=1, action_dim=1, physics_dim=1, device=CPU)
    for t in range(250):  # wraps: the buffer holds steps 150-249
        rb.add([t], [t + 1], [0.0], 0.0, 0.0, False, False, None)
    recent = rb.sample_segments(500, 4, np.random.default_rng(0), recent=20)["obs"][..., 0]
    assert recent.min() == 230 and recent.max() == 249 and (np.diff(recent, axis=1) == 1).all()
    assert set(rb.sample_segments(50, 4, np.random.default_rng(0), recent=2)["obs"][:, 0, 0]) == {246}
    everything = rb.sample_segments(500, 4, np.random.default_rng(0), recent=0)["obs"][..., 0]
    np.testing.assert_array_equal(everything, rb.sample_segments(500, 4, np.random.default_rng(0))["obs"][..., 0])
    assert everything.min() < 160 and everything.max() == 249
    from framework.pref_ppo import SegmentStore

    store = SegmentStore(capacity=5, seg_len=2, obs_dim=1, action_dim=1, physics_dim=1)
    for rollout in range(4):  # 2 segments per rollout, the ring wraps: it holds rollouts 1, 2, 2, 3, 3
        obs = np.full((4, 1, 1), rollout, np.float32)
        store.add_rollout(
            obs, np.zeros((4, 1, 1)), np.zeros((4, 1)), np.zeros((4, 1)), np.zeros((4, 1), bool), np.zeros((4, 1, 1))
        )
    assert store.obs[store.newest_rows(1000), 0, 0].tolist() == [3, 3, 2, 2, 1], "newest first, the whole ring at most"
    assert store.obs[store.newest_rows(1), 0, 0].tolist() == [3], "at least one segment"
    assert set(store.sample_segments(50, 2, np.random.default_rng(0), recent=4)["obs"][:, 0, 0]) == {3}
    assert set(store.sample_segments(50, 2, np.random.default_rng(0), recent=1)["obs"][:, 0, 0]) == {3}
    assert set(store.sample_segments(200, 2, np.random.default_rng(0), recent=8)["obs"][:, 0, 0]) == {2, 3}
    assert set(store.sample_segments(200, 2, np.random.default_rng(0), recent=1000)["obs"][:, 0, 0]) == {1, 2, 3}


def test_relabel_touches_only_filled_rows_with_the_ensemble_mean():
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=1000, obs_dim=3, action_dim=2, physics_dim=1, device=CPU)
    rng = np.random.default_rng(0)
    for _ in range(300):
        rb.add(rng.normal(size=3), rng.normal(size=3), rng.normal(size=2), 0.0, 0.0, False, False, None)
    ens = algo.RewardEnsemble(5, members=3, hidden_size=16, depth=2, dropout=0.3)
    ens.train()
    rb.relabel(ens, chunk=128)
    x = torch.from_numpy(np.concatenate([rb.obs[:300], rb.actions[:300]], 1))
    mean, std = ens.predict(x)
    np.testing.assert_allclose(rb.learned_rewards[:300], mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rb.reward_std[:300], std.numpy(), rtol=1e-5, atol=1e-6)
    assert (rb.learned_rewards[300:] == 0).all() and (rb.reward_std[300:] == 0).all()


def test_steps_added_after_a_reward_update_get_the_models_reward_before_they_are_used():
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=20, obs_dim=2, action_dim=1, physics_dim=1, device=CPU)
    rng = np.random.default_rng(0)
    ens = algo.RewardEnsemble(3, members=2, hidden_size=8, depth=1)
    for _ in range(12):
        rb.add(rng.normal(size=2), rng.normal(size=2), rng.normal(size=1), 0.0, 0.0, False, False, None)
    rb.relabel(ens)
    assert rb.fresh == 0
    for _ in range(13):  # wraps around: 5 of the rows labelled before are overwritten
        rb.add(rng.normal(size=2), rng.normal(size=2), rng.normal(size=1), 0.0, 0.0, False, False, None)
    assert rb.fresh == 13 and (rb.learned_rewards[rb.ordered(np.arange(7, 20))] == 0).all()
    assert [rb.has_fresh(rb.ordered(np.array([j]))) for j in (0, 6, 7, 19)] == [False, False, True, True]
    assert rb.has_fresh(rb.ordered(np.array([0, 3, 12]))) and not rb.has_fresh(rb.ordered(np.arange(7)))
    rb.relabel(ens, only_fresh=True)
    full = algo.ReplayBuffer(capacity=20, obs_dim=2, action_dim=1, physics_dim=1, device=CPU)
    full.load_state_dict(rb.state_dict())
    full.relabel(ens)
    np.testing.assert_allclose(rb.learned_rewards, full.learned_rewards, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rb.reward_std, full.reward_std, rtol=1e-5, atol=1e-7)
    assert rb.fresh == 0 and (rb.learned_rewards != 0).all() and not rb.has_fresh(np.arange(20))


def test_replay_buffer_state_round_trip_keeps_every_column():
    algo = importlib.import_module("framework.sac_rlhf")
    rb = algo.ReplayBuffer(capacity=50, obs_dim=2, action_dim=1, physics_dim=3, device=CPU)
    rng = np.random.default_rng(0)
    for t in range(30):
        rb.add(
            rng.normal(size=2),
            rng.normal(size=2),
            rng.normal(size=1),
            t,
            -t,
            t % 7 == 0,
            t % 5 == 0,
            rng.normal(size=3),
        )
    rb.learned_rewards[:30] = rng.normal(size=30)
    restored = algo.ReplayBuffer(capacity=50, obs_dim=2, action_dim=1, physics_dim=3, device=CPU)
    restored.load_state_dict(rb.state_dict())
    assert (restored.pos, restored.size, restored.fresh) == (30, 30, 30)
    for column in (
        "obs",
        "next_obs",
        "actions",
        "true_rewards",
        "teacher_rewards",
        "learned_rewards",
        "dones",
        "episode_ends",
        "physics",
    ):
        np.testing.assert_array_equal(getattr(restored, column), getattr(rb, column))


# ----------------------------------------------------------------------------------------------------- segment store
def test_segment_store_cuts_rollouts_per_env_and_masks_episode_ends():
    from framework.pref_ppo import SegmentStore

    store = SegmentStore(capacity=100, seg_len=4, obs_dim=1, action_dim=1, physics_dim=1)
    steps, envs = 10, 3  # 2 segments per env, the last 2 steps of each env dropped
    obs = (np.arange(steps)[:, None] * 10 + np.arange(envs)[None]).astype(np.float32)[..., None]  # obs = 10 t + env
    ends = np.zeros((steps, envs), bool)
    ends[1, 0] = True  # env 0's episode ends at t = 1
    store.add_rollout(
        obs,
        np.zeros((steps, envs, 1)),
        np.ones((steps, envs)),
        np.ones((steps, envs)) * 2,
        ends,
        obs.astype(np.float64),
    )
    assert store.size == 6
    first = store.obs[0, :, 0]
    np.testing.assert_array_equal(first, [0, 10, 20, 30])  # env 0, t = 0..3, consecutive steps of ONE env
    np.testing.assert_array_equal(store.mask[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(store.teacher_rewards[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(store.obs[2, :, 0], [1, 11, 21, 31])  # env 1
    assert store.mask[1:6].all()


def test_segment_store_is_a_bounded_ring_that_round_trips():
    from framework.pref_ppo import SegmentStore

    store = SegmentStore(capacity=5, seg_len=2, obs_dim=1, action_dim=1, physics_dim=1)
    for rollout in range(4):  # 2 segments per rollout: 8 segments into a ring of 5
        obs = np.full((4, 1, 1), rollout, np.float32)
        store.add_rollout(
            obs, np.zeros((4, 1, 1)), np.zeros((4, 1)), np.zeros((4, 1)), np.zeros((4, 1), bool), np.zeros((4, 1, 1))
        )
    assert store.size == 5 and sorted(store.obs[:, 0, 0]) == [1, 2, 2, 3, 3], "the oldest segments were dropped"
    sampled = store.sample_segments(50, 2, np.random.default_rng(0))
    assert set(sampled["obs"][:, 0, 0]) <= {1, 2, 3} and sampled["obs"].shape == (50, 2, 1)
    restored = SegmentStore(capacity=5, seg_len=2, obs_dim=1, action_dim=1, physics_dim=1)
    restored.load_state_dict(store.state_dict())
    assert (restored.pos, restored.size) == (store.pos, store.size)
    np.testing.assert_array_equal(restored.obs, store.obs)


# ---------------------------------------------------------------------------------------------------- reward learning
@pytest.fixture(scope="module")
def cheetah_buffers():
    """Two real HalfCheetah-v5 buffers (train, held-out) from random actions with a per-episode bias, so that
    segments span slow, fast and backwards running."""
    from data_helpers import biased_random_buffer

    module = importlib.import_module(SCRIPTS[0])
    return [biased_random_buffer(module, "HalfCheetah-v5", seed, 12_000) for seed in (0, 1)]


def labelled_pairs(rb, n, seg_len, rng):
    a, b = rb.sample_segments(n, seg_len, rng), rb.sample_segments(n, seg_len, rng)
    labels = SimulatedTeacher().label(a["teacher_rewards"], b["teacher_rewards"])
    x = lambda s: np.concatenate([s["obs"], s["actions"]], -1)
    return x(a), a["mask"], x(b), b["mask"], labels


def test_reward_model_ranks_held_out_pairs(algo, cheetah_buffers):
    train_rb, test_rb = cheetah_buffers
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    # measured (seeds 0-2): 88-92 % held-out accuracy from 400 labels in about 6 s
    args = algo.Args(
        segment_length=25, reward_epochs=40, reward_batch_size=64, reward_val_fraction=0.0, reward_target_accuracy=1.01
    )
    ens = algo.RewardEnsemble(23, members=3, hidden_size=128, depth=2)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    prefs = algo.PreferenceBuffer(400, 25, 23)
    seg_a, mask_a, seg_b, mask_b, labels = labelled_pairs(train_rb, 400, 25, rng)
    prefs.add(seg_a, mask_a, seg_b, mask_b, labels, 0, rng)
    stats = algo.train_reward_model(ens, opt, prefs, args, rng, CPU)
    assert stats["reward/train_accuracy"] > 0.9 and stats["reward/epochs"] == 40

    seg_a, mask_a, seg_b, mask_b, labels = labelled_pairs(test_rb, 2000, 25, rng)
    t = torch.from_numpy
    probs = algo.preference_probabilities(ens, t(seg_a), t(mask_a), t(seg_b), t(mask_b)).mean(0).numpy()
    accuracy = np.mean((probs > 0.5) == (labels == 1.0))
    assert accuracy >= 0.85, f"held-out ranking accuracy {accuracy:.3f}"


def test_input_norm_standardises_by_the_labelled_steps_and_travels_with_the_model(algo):
    ens = algo.RewardEnsemble(3, members=2, hidden_size=8, depth=1, input_norm=True)
    seg = np.zeros((2, 4, 3), np.float32)
    seg[..., 0], seg[..., 1], seg[..., 2] = 100.0 + np.arange(8).reshape(2, 4), 5.0, -1.0  # feature 1, 2: constant
    seg[1, 3] = 1e6  # a padded step after an episode's end: not counted
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    ens.fit_input_norm(seg, mask)
    assert ens.x_mean.tolist() == pytest.approx([103.0, 5.0, -1.0])
    assert ens.x_std[1:].tolist() == pytest.approx([0.01, 0.01])
    assert ens.x_std[0].item() == pytest.approx(np.arange(7.0).std(ddof=1))
    plain = algo.RewardEnsemble(3, members=2, hidden_size=8, depth=1)
    plain.load_state_dict({k: v for k, v in ens.state_dict().items() if not k.startswith("x_")})
    x = torch.from_numpy(seg[0])
    assert torch.allclose(ens(x), plain((x - ens.x_mean) / ens.x_std))
    again = algo.RewardEnsemble(3, members=2, hidden_size=8, depth=1, input_norm=True)
    again.load_state_dict(ens.state_dict())  # saved in checkpoints (and exported) with the weights
    assert torch.equal(again(x), ens(x))


def test_input_norm_ranks_held_out_pairs_better(algo, cheetah_buffers):
    """The reward model's defaults, 300 labels in 10 sessions: HalfCheetah's inputs range from angles near 0 to
    velocities of several units, and standardising them lets the same training generalise further."""
    train_rb, test_rb = cheetah_buffers
    accuracy = {}
    for norm in (False, True):  # measured (seeds 0-2): 0.856-0.860 plain, 0.889-0.903 standardised
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        args = algo.Args(segment_length=25, reward_val_fraction=0.0, reward_input_norm=norm)
        ens = algo.RewardEnsemble(23, 3, args.reward_hidden_size, args.reward_depth, input_norm=norm)
        opt = torch.optim.Adam(ens.parameters(), lr=args.reward_lr)
        prefs = algo.PreferenceBuffer(300, 25, 23)
        for _ in range(10):
            prefs.add(*labelled_pairs(train_rb, 30, 25, rng), 0, rng)
            algo.train_reward_model(ens, opt, prefs, args, rng, CPU)
        seg_a, mask_a, seg_b, mask_b, labels = labelled_pairs(test_rb, 2000, 25, rng)
        t = torch.from_numpy
        probs = algo.preference_probabilities(ens, t(seg_a), t(mask_a), t(seg_b), t(mask_b)).mean(0).numpy()
        accuracy[norm] = np.mean((probs > 0.5) == (labels == 1.0))
    assert accuracy[True] >= 0.88 and accuracy[True] > accuracy[False] + 0.02, accuracy


def test_disagreement_sampling_finds_more_disagreement_than_uniform(algo, cheetah_buffers):
    train_rb, _ = cheetah_buffers
    rng = np.random.default_rng(2)
    torch.manual_seed(2)
    args = algo.Args(segment_length=25, reward_epochs=10, reward_batch_size=64, reward_val_fraction=0.0)
    ens = algo.RewardEnsemble(23, members=3, hidden_size=64, depth=2)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    prefs = algo.PreferenceBuffer(100, 25, 23)
    seg_a, mask_a, seg_b, mask_b, labels = labelled_pairs(train_rb, 100, 25, rng)
    prefs.add(seg_a, mask_a, seg_b, mask_b, labels, 0, rng)
    algo.train_reward_model(ens, opt, prefs, args, rng, CPU)
    seg_a, mask_a, seg_b, mask_b, _ = labelled_pairs(train_rb, 1000, 25, rng)
    t = torch.from_numpy
    probs = algo.preference_probabilities(ens, t(seg_a), t(mask_a), t(seg_b), t(mask_b))
    spread = probs.std(0).numpy()
    picked = spread[algo.select_queries("disagreement", probs, 100, rng)].mean()
    uniform = np.mean([spread[algo.select_queries("uniform", probs, 100, rng)].mean() for _ in range(20)])
    assert picked > 2 * uniform, (picked, uniform)


def test_correlations():
    x = np.arange(100.0)
    stats = reward_correlations(x, x**3)
    assert stats["reward/spearman"] == pytest.approx(1.0) and 0.8 < stats["reward/pearson"] < 1.0
    assert reward_correlations(np.ones(10), x[:10]) == {}
    assert math.isclose(reward_correlations(x, -x)["reward/pearson"], -1.0)


# ---------------------------------------------------------------------------------------------------------------- RIME
def test_rime_trusts_labels_the_model_agrees_with_and_flips_confident_contradictions(algo):
    args = algo.Args(rime=True)
    p = torch.tensor([[0.9, 0.6, 0.4, 0.05, 1e-4, 1e-4]])  # P(B better), one member
    labels = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.5], np.float32)
    stats = {"kl_max": 0.5, "kl_std": 0.1, "epochs": 1000}  # late in a run: beta_t = beta_min
    trusted, flipped = algo.rime_select(p, labels, stats, args)
    # bound = -ln 0.5 + 0.5 * 0.5 + 1 * 0.1 = 1.04: KL -ln 0.9, -ln 0.6, -ln 0.4 are in, -ln 0.05 = 3.0 is out
    assert trusted.tolist() == [True, True, True, False, False, False]
    assert flipped.tolist() == [False, False, False, False, True, False], "a tie is never flipped"
    assert stats["epochs"] == 1001 and stats["kl_max"] == pytest.approx(0.5 + 0.1 * (-math.log(0.4) - 0.5))
    fresh = {"kl_max": 0.0, "kl_std": 0.0, "epochs": 0}  # the first epoch of a run trusts every label it cannot flip
    trusted, flipped = algo.rime_select(p, labels, fresh, args)
    assert trusted.tolist() == [True, True, True, True, False, True] and flipped.sum() == 1


def test_rime_statistics_travel_with_the_labels(algo):
    prefs = algo.PreferenceBuffer(10, 4, 3)
    seg, mask = np.ones((2, 4, 3), np.float32), np.ones((2, 4), np.float32)
    prefs.add(seg, mask, seg, mask, np.array([0, 1.0]), 7, np.random.default_rng(0))
    prefs.rime.update(kl_max=0.7, kl_std=0.2, epochs=12)
    copy = algo.PreferenceBuffer(10, 4, 3)
    copy.load_state_dict(prefs.state_dict())
    assert copy.rime == {"kl_max": 0.7, "kl_std": 0.2, "epochs": 12} and copy.size == 2


def test_rime_ranks_held_out_pairs_better_than_plain_learning_when_30_percent_of_labels_are_flipped():
    """Synthetic pairs of 20-step segments of 8 features, the true reward tanh(w . x) per step, 500 training labels
    of which 30 % are flipped, 2,000 clean held-out pairs; the reward model as the scripts build it (one session).
    Measured over seeds 0-4: held-out accuracy 0.67 / 0.65 / 0.73 / 0.71 / 0.75 plain, 0.80 / 0.81 / 0.86 / 0.90 / 0.85
    with RIME (0.95 and 0.94 with clean labels); the test takes seeds 0-1, RIME ahead by 0.14 and 0.15 there.
    The copies in both scripts are the same source (test above), so one is enough."""
    module = importlib.import_module(SCRIPTS[0])
    w = np.random.default_rng(100).normal(size=8)

    def pairs(rng, n):
        x = rng.normal(size=(2, n, 20, 8)).astype(np.float32)
        returns = np.tanh(x @ w).sum(-1)
        return x, (returns[1] > returns[0]).astype(np.float32)

    accuracy = {}
    for rime in (False, True):
        for seed in range(2):
            rng = np.random.default_rng(seed)
            torch.manual_seed(seed)
            x, labels = pairs(rng, 500)
            flip = rng.random(500) < 0.3
            labels[flip] = 1 - labels[flip]
            held_x, held_labels = pairs(rng, 2000)
            args = module.Args(rime=rime, reward_val_fraction=0.0, segment_length=20)
            prefs = module.PreferenceBuffer(500, 20, 8)
            mask = np.ones((500, 20), np.float32)
            prefs.add(x[0], mask, x[1], mask, labels, 0, rng)
            ens = module.RewardEnsemble(8, 3, 128, 3)
            stats = module.train_reward_model(ens, torch.optim.Adam(ens.parameters(), lr=3e-4), prefs, args, rng, CPU)
            if rime:
                assert 0.6 < stats["reward/rime_trusted"] < 0.9, stats  # it sets aside about the flipped share
            held_mask = torch.ones(2000, 20)
            t = torch.from_numpy
            probs = module.preference_probabilities(ens, t(held_x[0]), held_mask, t(held_x[1]), held_mask).mean(0)
            accuracy[rime, seed] = float(((probs.numpy() > 0.5) == held_labels).mean())
    plain, robust = (np.array([accuracy[r, s] for s in range(2)]) for r in (False, True))
    assert (robust > plain + 0.04).all() and robust.mean() > plain.mean() + 0.08, (plain, robust)
