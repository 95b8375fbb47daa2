"""Signals in a training loop (SIGTERM becomes `Interrupted`; a held block finishes before either interrupt lands), and
which flags a resumed run takes from its command line."""

from __future__ import annotations

import os
import signal

import pytest

from framework.runtime import Interrupted, interrupts_held, sigterm_raises_interrupted


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Interrupted), (signal.SIGINT, KeyboardInterrupt)])
def test_held_block_finishes_then_the_interrupt_is_raised(signum, raised):
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the tests were started in the background)
    done = []
    with sigterm_raises_interrupted(), pytest.raises(raised):
        with interrupts_held():
            os.kill(os.getpid(), signum)
            done.append("labels stored")
            done.append("session counted")
    assert done == ["labels stored", "session counted"]
    assert signal.getsignal(signal.SIGINT) is before  # handlers are put back


def test_held_block_without_a_signal_raises_nothing_and_its_own_errors_pass_through():
    with interrupts_held():
        pass
    with pytest.raises(ValueError, match="inside"):
        with interrupts_held():
            raise ValueError("inside")
    with sigterm_raises_interrupted(), pytest.raises(Interrupted):  # SIGTERM after the block is raised at once again
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_resume_takes_the_overridable_flags_written_on_its_command_line_even_at_their_defaults(monkeypatch):
    from dataclasses import dataclass

    from framework import runtime

    @dataclass
    class Flags:
        feedback_timeout: float = 0.0
        feedback_server_autostart: bool = False
        seed: int = 1

    saved = {"feedback_timeout": 5.0, "feedback_server_autostart": True, "seed": 7}
    overridable = ("feedback_timeout", "feedback_server_autostart")
    monkeypatch.setattr(
        runtime,
        "COMMAND_LINE",
        ["--resume", "runs/x", "--feedback-timeout", "0", "--no-feedback-server-autostart", "--seed", "3"],
    )
    assert runtime.resumed_args(Flags(0.0, False, 3), saved, overridable) == Flags(0.0, False, 7)
    monkeypatch.setattr(runtime, "COMMAND_LINE", ["--resume=runs/x", "--feedback-timeout=2"])
    assert runtime.resumed_args(Flags(2.0), saved, overridable) == Flags(2.0, True, 7)
    monkeypatch.setattr(runtime, "COMMAND_LINE", None)  # main() called from Python: what differs from the default
    assert runtime.resumed_args(Flags(0.0, True), saved, overridable) == Flags(5.0, True, 7)
