"""The fast path of the SAC scripts: both critics as one batched network, and the per-step functions compiled
(`--compile`, `--cudagraphs`) compute what the plain path computes."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
import torch.optim as optim

from conftest import run_script
from framework import sac, sac_rlhf
from framework.networks import SACActor, SoftQNetwork, TwinQNetwork
from framework.runtime import compile_steps

CPU = torch.device("cpu")


def test_twin_critics_compute_and_learn_what_two_critics_do():
    torch.manual_seed(0)
    first, second = SoftQNetwork(5, 2, 32, 2), SoftQNetwork(5, 2, 32, 2)
    twin = TwinQNetwork(first, second)
    obs, action, target = torch.randn(64, 5), torch.randn(64, 2), torch.randn(64)
    q = twin(obs, action)
    assert q.shape == (2, 64)
    torch.testing.assert_close(q[0], first(obs, action).view(-1))
    torch.testing.assert_close(q[1], second(obs, action).view(-1))
    ((q - target) ** 2).mean(1).sum().backward()
    sum(((critic(obs, action).view(-1) - target) ** 2).mean() for critic in (first, second)).backward()
    torch.testing.assert_close(twin.weights[0].grad[1], second.net[0].weight.grad.T)
    torch.testing.assert_close(twin.biases[-1].grad[0, 0], first.net[-1].bias.grad)
    # a checkpoint that saved two separate critics loads into the twin
    loaded = TwinQNetwork(SoftQNetwork(5, 2, 32, 2), SoftQNetwork(5, 2, 32, 2))
    loaded.load_state_dict(TwinQNetwork.state_from_pair(first.state_dict(), second.state_dict()))
    torch.testing.assert_close(loaded(obs, action), q)


def test_both_sac_scripts_carry_the_same_update_steps():
    assert inspect.getsource(sac.sac_update_steps) == inspect.getsource(sac_rlhf.sac_update_steps)


def sac_steps(compiled: bool):
    """SAC's update steps as sac.py builds them, on a 5-dim observation and 2-dim action space."""
    torch.manual_seed(0)
    args = sac.Args(compile=compiled, hidden_size=32)
    actor = SACActor(5, np.full(2, -1.0), np.full(2, 1.0), 32, 2)
    qf = TwinQNetwork(SoftQNetwork(5, 2, 32, 2), SoftQNetwork(5, 2, 32, 2))
    qf_target = TwinQNetwork(SoftQNetwork(5, 2, 32, 2), SoftQNetwork(5, 2, 32, 2))
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.tensor([np.log(0.2)], dtype=torch.float32, requires_grad=True)
    optimizers = (
        optim.Adam(qf.parameters(), lr=1e-3, fused=not compiled),
        optim.Adam(actor.parameters(), lr=3e-4, fused=not compiled),
        optim.Adam([log_alpha], lr=1e-3),
    )
    alpha = log_alpha.exp().detach()
    steps = sac.sac_update_steps(actor, qf, qf_target, optimizers, log_alpha, alpha, -2.0, args)
    return compile_steps(args, CPU, *steps), (actor, qf, log_alpha, alpha)


def test_compiled_steps_match_the_plain_ones(monkeypatch):
    """Five critic and actor updates on fixed batches, plain and through torch.compile (the compiled random numbers
    drawn as eager ones are, so the two paths see the same samples): same losses, same parameters."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    rng = np.random.default_rng(1)
    batches = [
        [torch.from_numpy(rng.normal(size=shape).astype(np.float32)) for shape in ((64, 5), (64, 5), (64, 2), (64,))]
        + [torch.from_numpy((rng.random(64) < 0.1).astype(np.float32))]
        for _ in range(5)
    ]
    runs = {}
    for compiled in (False, True):
        (update_critics, update_actor, act), (actor, qf, log_alpha, alpha) = sac_steps(compiled)
        torch.manual_seed(1)
        losses = []
        for batch in batches:
            qf_loss, q1 = update_critics(*batch)
            actor_loss = update_actor(batch[0])
            alpha.copy_(log_alpha.detach().exp())
            losses.append([qf_loss.item(), q1.item(), actor_loss.item()])
        runs[compiled] = (np.array(losses), [p.detach().clone() for p in [*qf.parameters(), *actor.parameters()]])
        assert act(batch[0]).shape == (64, 2)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-5)
    for compiled_param, plain_param in zip(runs[True][1], runs[False][1]):
        torch.testing.assert_close(compiled_param, plain_param, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("script", ["sac.py", "sac_rlhf.py"])
def test_a_compiled_run_trains_and_says_cuda_graphs_need_a_gpu(runs_dir, script):
    flags = ["--env-id", "Pendulum-v1", "--total-timesteps", "1200", "--eval-frequency", "1200"]
    flags += ["--eval-episodes", "1", "--learning-starts", "300", "--no-cuda", "--cudagraphs"]
    if script == "sac_rlhf.py":
        flags += ["--unsupervised-steps", "300", "--total-labels", "20", "--labels-per-session", "10"]
        flags += ["--feedback-frequency", "300", "--segment-length", "20"]
    result = run_script(script, *flags, "--runs-dir", str(runs_dir), "--run-name", "compiled")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CUDA graphs need a GPU; compiling without them on the CPU." in result.stderr
    summary = json.loads((runs_dir / "compiled" / "summary.json").read_text())
    assert summary["total_timesteps"] == 1200 and np.isfinite(summary["final_eval_return"])
