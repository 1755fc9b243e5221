"""Whole episodes of a policy without learning: --eval-every during training and scripts/evaluate.py."""
import numpy as np
import torch


def run_episodes(env, act, episodes, seed, generator=None):
    """Runs whole episodes without learning: act(raw_obs, episode_step, generator) -> the environment's action (a
    tensor); episode i starts from env.reset(seed=seed + i). An episode whose action is non-finite ends there (no
    such action is ever sent). Returns (returns, lengths)."""
    returns, lengths = [], []
    for i in range(episodes):
        raw_obs, _ = env.reset(seed=seed + i)
        total, steps, done = 0.0, 0, False
        while not done:
            action = act(as_tensors(raw_obs), steps, generator)
            if not torch.isfinite(action.float()).all():
                break
            raw_obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return returns, lengths


def as_tensors(raw_obs):
    """An observation as the learners read it: float64, a Dict part by part."""
    if isinstance(raw_obs, dict):
        return {k: as_tensors(v) for k, v in raw_obs.items()}
    return torch.from_numpy(np.asarray(raw_obs, dtype=np.float64))
