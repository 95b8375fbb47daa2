"""Checkpoints written atomically: a crash or a kill mid-write leaves the previous file intact, never a torn one.

Each write goes to a temporary file in the same folder, is flushed to disk, and then renamed over the target (a
rename within one filesystem is atomic on POSIX).
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import torch

from framework.runtime import UsageError


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(obj: Any, path: str) -> None:
    """`torch.save` of `obj` (tensors, state dicts, NumPy arrays, RNG states) to `path`, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by `save_checkpoint`; a missing or unreadable file is a `UsageError`."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist")
    try:
        # Our own files hold NumPy arrays and RNG states besides tensors, so full unpickling is needed.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UsageError(f"checkpoint {path!r} could not be read: {type(err).__name__}: {err}") from err
