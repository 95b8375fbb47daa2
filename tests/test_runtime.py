"""Signals in a training loop: SIGTERM becomes `Interrupted`; a held block finishes before either interrupt lands."""

from __future__ import annotations

import os
import signal

import pytest

from framework.runtime import Interrupted, interrupts_held, sigterm_raises_interrupted


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Interrupted), (signal.SIGINT, KeyboardInterrupt)])
def test_held_block_finishes_then_the_interrupt_is_raised(signum, raised):
    done = []
    with sigterm_raises_interrupted(), pytest.raises(raised):
        with interrupts_held():
            os.kill(os.getpid(), signum)
            done.append("labels stored")
            done.append("session counted")
    assert done == ["labels stored", "session counted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back


def test_held_block_without_a_signal_raises_nothing_and_its_own_errors_pass_through():
    with interrupts_held():
        pass
    with pytest.raises(ValueError, match="inside"):
        with interrupts_held():
            raise ValueError("inside")
    with sigterm_raises_interrupted(), pytest.raises(Interrupted):  # SIGTERM after the block is raised at once again
        os.kill(os.getpid(), signal.SIGTERM)
