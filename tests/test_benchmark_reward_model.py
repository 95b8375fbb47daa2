"""`benchmarks/reward_model.py`'s settings: sac_rlhf.py's own reward-model flags, parsed by its own Args, and a
one-line refusal for anything the offline comparison cannot honour (it draws queries uniformly, without a run)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import reward_model  # noqa: E402


def test_settings_are_reward_model_flags_and_anything_else_is_refused_in_one_line():
    name, args = reward_model.parse_setting("norm + 50=--reward-input-norm --reward-target-accuracy 1.01")
    assert name == "norm + 50" and args.reward_input_norm and args.reward_target_accuracy == 1.01
    assert reward_model.parse_setting("=")[0] == "default"
    for bad, message in [
        ("norm", r"write name=flags"),
        ("x=--no-such-flag", r"not flags of sac_rlhf.py"),
        ("x=--query-sampling uniform", r"--query-sampling is not a reward-model, RIME, SURF or teacher flag"),
    ]:
        with pytest.raises(SystemExit, match=message):
            reward_model.parse_setting(bad)
    with pytest.raises(SystemExit, match=r"^--name '../x': use lower-case"):
        reward_model.main(reward_model.Args(name="../x"))


def test_sessions_are_spread_like_a_run_from_the_first_one():
    args = reward_model.Args(first_session=5000, sessions=10)
    assert reward_model.session_steps(args, 50_000) == [5000 + 4500 * k for k in range(10)]
    with pytest.raises(SystemExit, match=r"--first-session 5000 must be below"):
        reward_model.session_steps(args, 4000)
