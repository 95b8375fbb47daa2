"""Helpers for benchmark scripts: run an algorithm script as a user would, and save result tables."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_algorithm(script: str, run_name: str, runs_dir: str, *flags: str) -> dict:
    """Run `framework/<script>` to completion and return its `summary.json`, with `peak_rss_mib`: the most memory
    the run's process held (its maximum resident set size, from the kernel's accounting of that child)."""
    import tempfile

    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    cmd = [sys.executable, str(ROOT / "framework" / script), "--runs-dir", runs_dir, "--run-name", run_name, *flags]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    summary = json.loads((Path(runs_dir) / run_name / "summary.json").read_text())
    return summary | {"peak_rss_mib": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (Linux: /proc/cpuinfo; a virtual machine may name only
    the vendor), else what `platform` knows, and the vector instructions torch's kernels use: two CPUs that differ in
    either can give the same seed different float results."""
    import torch

    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return f"{name}, torch kernels {torch.backends.cpu.get_cpu_capability()}"


def code_version() -> str:
    """The commit the benchmark ran at, `+changes` when the working tree differed from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True)  # fmt: skip
    except OSError:
        return "unknown commit"
    if commit.returncode != 0:
        return "unknown commit"
    return f"commit {commit.stdout.strip()}" + (" +changes" if changed.stdout.strip() else "")


def machine_description() -> str:
    """Where and at what code a result was measured: CPU model and cores, torch, Python, commit, date (single seeds
    differ between CPUs of one kind, so results files record which one)."""
    import torch

    return (
        f"{cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{code_version()}, {time.strftime('%Y-%m-%d')}"
    )


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "n/a"
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_markdown(name: str, title: str, body: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\n{body}\n")
    return path
