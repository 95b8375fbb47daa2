"""prefrl: reinforcement learning from human preferences on control tasks.

The algorithm scripts (`sac_rlhf.py`, `pref_ppo.py`, and the oracle baselines `sac.py`, `ppo.py`) each hold a
whole algorithm in one file. The other modules here are the plumbing they share: `envs` (environment factory),
`teacher` (simulated teachers), `tracking` (TensorBoard / W&B), `checkpoint` (atomic saves), `evaluation`,
`networks`, `reward_model` (a run's learned reward as an artifact) and `runtime` (CLI entry, device, seeding).
"""
