"""Checkpoints: round trip, and a write that dies midway leaves the previous file intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from framework.checkpoint import load_checkpoint, save_checkpoint
from framework.runtime import UsageError


def test_round_trip_keeps_tensors_arrays_and_rng_state(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    rng = np.random.default_rng(5)
    state = {"w": torch.randn(3, 4), "buffer": np.arange(10.0), "rng": rng.bit_generator.state, "step": 42}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and np.array_equal(loaded["buffer"], state["buffer"])
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded["rng"]
    assert restored.random() == rng.random() and loaded["step"] == 42
    assert os.listdir(tmp_path) == ["ckpt.pt"], "no temporary files left behind"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_are_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint({"step": 1}, str(tmp_path / "ckpt.pt"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "ckpt.pt").st_mode & 0o777 == mode


def test_killed_writer_leaves_previous_checkpoint_intact(tmp_path):
    """A process killed with SIGKILL in the middle of writing a large checkpoint never tears the old file."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"version": 1}, str(path))
    script = textwrap.dedent(
        f"""
        import sys, torch
        from framework.checkpoint import save_checkpoint
        print("writing", flush=True)
        while True:
            save_checkpoint({{"version": 2, "big": torch.zeros(40_000_000)}}, {str(path)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    import time

    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    loaded = load_checkpoint(str(path))  # either the old file or a complete new one, never a torn one
    assert loaded["version"] in (1, 2)
    if loaded["version"] == 2:
        assert loaded["big"].shape == (40_000_000,)


def test_missing_or_corrupt_checkpoint_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="could not be read"):
        load_checkpoint(str(bad))
