"""Teacher rewards for behaviours the environments do not reward, for `--teacher-reward scripts/teacher_rewards.py:<f>`.

A function of any of `obs`, `action`, `next_obs`, `qpos`, `qvel` (the MuJoCo state after the step) and `info`,
returning one number per step; the simulated teacher prefers the clip with the larger sum.
"""


def hop_backwards(qvel):
    """Hopper-v5's own reward mirrored: one point per step alive, plus the speed towards -x."""
    return 1.0 - float(qvel[0])
