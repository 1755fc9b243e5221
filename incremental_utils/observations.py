"""Observations as the learners read them: tensors, and for camera images one named tuple (Observation) that is a
field of an update's inputs like any other. The environment side (rendering, stacking, repeating) is image_envs.py."""
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

from .image_envs import IMAGE, VECTOR


class Observation(NamedTuple):
    """A camera observation as a pixel learner reads it (vector observations stay plain tensors). A field of the
    update's inputs like any other: the compiler takes nested NamedTuples of tensors."""
    image: torch.Tensor   # the last --frame-stack frames, uint8, channels first; the encoder scales them to [0, 1]
    vector: torch.Tensor  # the proprioception: float64 as observed, then as the learner normalises it
    shift: torch.Tensor   # (2,) where an update crops this image with --augment shift (drawn when it is observed)


def as_observation(raw, pad=0, generator=None):
    """An observation as tensors: a vector as float64, or (a dict from pixel_observations) an Observation whose crop
    offset is drawn from `generator`, uniformly in [0, 2 pad] each way (zeros, and no draw, when pad is 0)."""
    if not isinstance(raw, dict):
        return torch.as_tensor(raw, dtype=torch.float64)
    shift = torch.randint(2 * pad + 1, (2,), generator=generator) if pad else torch.zeros(2, dtype=torch.long)
    return Observation(torch.as_tensor(raw[IMAGE]), torch.as_tensor(raw[VECTOR], dtype=torch.float64), shift)


def zero_observation(space):
    """An observation of `space` with every entry zero (a Dict part by part): what a script compiles its update with."""
    if isinstance(space, gym.spaces.Dict):
        return {k: zero_observation(v) for k, v in space.spaces.items()}
    return np.zeros(space.shape, space.dtype)
