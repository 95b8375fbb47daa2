"""What a run leaves behind, used outside the run: its agent evaluated and filmed by `framework/evaluation.py`, and
its reward model loaded with plain PyTorch or wrapped around an env for another agent."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import run_script, run_scripts

COMMON = "--env-id InvertedPendulum-v5 --eval-episodes 3 --no-cuda --torch-threads 1".split()
PREFERENCE = "--labels-per-session 10 --total-labels 20 --segment-length 15"
RUNS = {
    "sac.py": "--total-timesteps 600 --learning-starts 200 --hidden-size 32 --eval-frequency 600 --save-model",
    "ppo.py": "--total-timesteps 1024 --num-envs 2 --num-steps 256 --eval-frequency 1024 --save-model",
    "sac_rlhf.py": "--total-timesteps 700 --learning-starts 100 --unsupervised-steps 200 --feedback-frequency 200 "
    f"--hidden-size 32 --eval-frequency 700 {PREFERENCE}",
    "pref_ppo.py": "--total-timesteps 1536 --num-envs 2 --num-steps 256 --unsupervised-steps 512 "
    f"--feedback-frequency 512 --eval-frequency 1536 {PREFERENCE}",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short run of each script: script -> its folder."""
    runs_dir = tmp_path_factory.mktemp("runs")
    name = {script: script.removesuffix(".py") for script in RUNS}
    results = run_scripts(
        {s: [*COMMON, *flags.split(), "--runs-dir", str(runs_dir), "--run-name", name[s]] for s, flags in RUNS.items()}
    )
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    return {script: runs_dir / name[script] for script in RUNS}


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_script("evaluation.py", *args, timeout=300)


@pytest.mark.parametrize("script", list(RUNS))
def test_a_saved_agent_is_evaluated_as_its_run_last_evaluated_it(runs, script):
    run = runs[script]
    result = evaluate(str(run), "--episodes", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    mean = float(result.stdout.split("mean return ")[1].split()[0])
    assert mean == pytest.approx(summary["final_eval_return"], abs=0.05)
    assert result.stdout.count("\n| ") == 3 + 1  # the header and one row per episode


def test_films_of_a_saved_agent(runs, tmp_path):
    out = tmp_path / "films"
    result = evaluate(str(runs["sac_rlhf.py"] / "checkpoint.pt"), "--episodes", "2", "--video", "--gif", "--film", "2",
                      "--size", "128", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    for i in (0, 1):
        assert (out / f"episode-{i}.mp4").read_bytes()[4:8] == b"ftyp"
        gif = (out / f"episode-{i}.gif").read_bytes()
        assert gif[:6] == b"GIF89a" and len(gif) < 1_000_000
    # --seconds films the start of an episode only (InvertedPendulum: 25 states per second, GIFs take every second)
    short = evaluate(str(runs["sac_rlhf.py"]), "--episodes", "1", "--gif", "--seconds", "0.4", "--out", str(out / "s"))
    assert short.returncode == 0, short.stderr
    from PIL import Image

    with Image.open(out / "s" / "episode-0.gif") as gif:
        assert gif.n_frames == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/run"], "neither a run folder nor a saved agent file"),
        (["{runs}"], "holds no saved agent"),
        (["{sac}", "--env-id", "Hopper-v5"], "does not fit Hopper-v5"),
        (["{sac}", "--episodes", "0"], "--episodes must be > 0"),
        (["{sac}", "--gif", "--seconds", "0"], "--seconds must be > 0"),
        (["{sac}", "--render-mode", "human"], "needs a display"),
    ],
)
def test_bad_input_is_one_line(runs, args, message):
    folders = {"runs": str(runs["sac.py"].parent), "sac": str(runs["sac.py"])}
    result = evaluate(*[a.format(**folders) for a in args])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("script", ["sac_rlhf.py", "pref_ppo.py"])
def test_the_reward_model_loads_with_plain_pytorch_and_gives_the_runs_rewards(runs, script, tmp_path):
    import importlib

    from framework.checkpoint import load_checkpoint

    run = runs[script]
    meta = json.loads((run / "reward_model.json").read_text())
    assert meta["env_id"] == "InvertedPendulum-v5" and meta["input"]["obs_dim"] == 4 and meta["ensemble_size"] == 3
    x = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    # a fresh process that imports torch and nothing of prefrl
    code = (
        "import sys, numpy as np, torch; model = torch.export.load(sys.argv[1]).module(); "
        "mean, std = model(torch.from_numpy(np.load(sys.argv[2]))); np.save(sys.argv[3], torch.stack([mean, std])); "
        "assert not any(m.startswith('framework') for m in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run / "reward_model.pt2"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    exported = np.load(tmp_path / "y.npy")
    module = importlib.import_module(f"framework.{script.removesuffix('.py')}")
    saved = load_checkpoint(str(run / "checkpoint.pt"))
    args = saved["args"]
    ensemble = module.RewardEnsemble(5, args["reward_ensemble_size"], args["reward_hidden_size"], args["reward_depth"])
    ensemble.load_state_dict(saved["ensemble"])
    mean, std = ensemble.predict(torch.from_numpy(x))
    np.testing.assert_allclose(exported, torch.stack([mean, std]).numpy(), rtol=1e-5, atol=1e-6)


def test_the_learned_reward_wrapper_changes_the_reward_and_nothing_else(runs):
    from framework.reward_model import LearnedReward, load_reward_model

    model, _ = load_reward_model(str(runs["sac_rlhf.py"]))
    plain, wrapped = (
        gym.make("InvertedPendulum-v5"),
        LearnedReward(gym.make("InvertedPendulum-v5"), str(runs["sac_rlhf.py"])),
    )
    (o1, _), _ = plain.reset(seed=3), wrapped.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.uniform(-3, 3, size=1).astype(np.float32)
        expected = float(model(torch.from_numpy(np.concatenate([o1, a]).astype(np.float32)[None]))[0][0])
        s1, s2 = plain.step(a), wrapped.step(a)
        np.testing.assert_array_equal(s1[0], s2[0])
        assert s1[2:4] == s2[2:4] and s2[4]["env_reward"] == s1[1] and s2[1] == pytest.approx(expected, abs=1e-6)
        assert s2[1] != s1[1]
        o1 = s1[0]
        if s1[2] or s1[3]:
            break
    with pytest.raises(Exception, match="takes 4 observation and 1 action"):
        LearnedReward(gym.make("Hopper-v5"), str(runs["sac_rlhf.py"]))


def test_a_new_run_starts_from_the_labels_of_another(runs, runs_dir):
    import shutil

    source = runs["sac_rlhf.py"]  # 20 labels, segments of 15 steps
    result = run_script(
        "sac_rlhf.py",
        *COMMON,
        *RUNS["sac_rlhf.py"].replace("--total-labels 20", "--total-labels 10").split(),
        "--labels-from",
        str(source),
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "seeded",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"started from 20 labels of {source}" in result.stdout
    summary = json.loads((runs_dir / "seeded" / "summary.json").read_text())
    assert summary["labels_used"] == 10 and summary["labels_stored"] == 30  # the 20 given cost nothing
    from framework.preferences import read_preferences

    theirs, mine = read_preferences(str(source)).pairs(), read_preferences(str(runs_dir / "seeded")).pairs()
    np.testing.assert_array_equal(mine["seg_a"][:20], theirs["seg_a"])
    np.testing.assert_array_equal(mine["labels"][:20], theirs["labels"])
    # another env, another segment length, not a finished run: one line each
    other = runs_dir / "other-env"
    shutil.copytree(source, other)
    meta_file = other / "preferences" / "dataset.json"
    meta_file.write_text(meta_file.read_text().replace('"InvertedPendulum-v5"', '"Hopper-v5"'))
    flags = [*COMMON, *RUNS["sac_rlhf.py"].split(), "--runs-dir", str(runs_dir)]
    for given, extra, message in [
        (other, [], "holds labels of Hopper-v5, not of InvertedPendulum-v5"),
        (source, ["--segment-length", "20"], "has segments of 15 steps"),
        (runs_dir / "nothing", [], "is not a preference dataset or a run folder with one"),
    ]:
        bad = run_script("sac_rlhf.py", *flags, *extra, "--labels-from", str(given))
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
