"""Every command in the READMEs' bash blocks names a script that exists and passes only flags it has (so a renamed
flag cannot leave the user's door showing a command that fails); sweep commands name a valid sweep for their
algorithm."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys

import pytest
import tyro

from conftest import ROOT

READMES = ["README.md", "toolbox/README.md", "slurm/README.md", "sweep_config/README.md", "scripts/README.md",
           "benchmarks/README.md"]  # fmt: skip
ENTRY_TYPES = {"framework/evaluation.py": "EvalArgs"}


def bash_commands(readme: str) -> list[str]:
    """The commands of a README's ```bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / readme).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def python_invocations() -> list[tuple[str, str, list[str]]]:
    """(readme, script, argv) of every `python <script>.py ...` and `sbatch ... slurm/sweep_worker.sbatch ...`."""
    found = []
    for readme in READMES:
        for command in bash_commands(readme):
            words = shlex.split(command)
            if words[0] in (".venv/bin/python", "python") and words[1].endswith(".py"):
                found.append((readme, words[1], words[2:]))
            elif words[0] == "sbatch" and any(w.endswith("sweep_worker.sbatch") for w in words):
                i = next(i for i, w in enumerate(words) if w.endswith("sweep_worker.sbatch"))
                found.append((readme, "framework/sweep.py", words[i + 1 :]))
    return found


def load(script: str):
    path = ROOT / script
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_the_readmes_show_commands_of_every_kind():
    scripts = {script for _, script, _ in python_invocations()}
    assert {"framework/sac_rlhf.py", "framework/pref_ppo.py", "framework/sac.py", "framework/ppo.py"} <= scripts
    assert {"framework/sweep.py", "framework/evaluation.py", "toolbox/compare_runs.py"} <= scripts
    assert {"toolbox/train_reward.py", "benchmarks/speed.py", "benchmarks/learning.py"} <= scripts


@pytest.mark.parametrize("readme, script, argv", python_invocations(), ids=lambda v: v if isinstance(v, str) else "")
def test_readme_command_parses(readme, script, argv):
    assert (ROOT / script).is_file(), f"{readme}: {script} does not exist"
    module = load(script)
    args_type = getattr(module, ENTRY_TYPES.get(script, "Args"))
    args = tyro.cli(args_type, args=[a for a in argv if a != "--help"])
    if script == "framework/sweep.py":
        from framework.sweep import check_parameters, load_sweep_config

        config = load_sweep_config(args.config_filename)
        check_parameters(config, args.algorithm, args.config_filename)
