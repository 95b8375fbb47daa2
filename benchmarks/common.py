"""Helpers for benchmark scripts: run an algorithm script as a user would, and save result tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_algorithm(script: str, run_name: str, runs_dir: str, *flags: str) -> dict:
    """Run `framework/<script>` to completion and return its `summary.json`."""
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    cmd = [sys.executable, str(ROOT / "framework" / script), "--runs-dir", runs_dir, "--run-name", run_name, *flags]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads((Path(runs_dir) / run_name / "summary.json").read_text())


def machine_description() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_markdown(name: str, title: str, body: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\n{body}\n")
    return path
