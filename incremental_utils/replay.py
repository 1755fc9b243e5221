"""The replay buffer of sac_incremental.py and td3_incremental.py, as tensors: the last transitions in preallocated
buffers, so that they are learner state (checkpointed, and inputs of the compiled update like any other)."""
import torch
import torch.nn as nn


class ReplayBuffer(nn.Module):
    """The last `capacity` transitions in preallocated tensors (so they are learner state: checkpointed, and
    inputs of the compiled update). With capacity 1 it holds only the latest transition."""

    def __init__(self, capacity, obs_dim, act_dim):
        super().__init__()
        self.capacity = capacity
        for name, width in [("obs", obs_dim), ("action", act_dim), ("next_obs", obs_dim)]:
            self.register_buffer(name, torch.zeros(capacity, width))
        self.register_buffer("reward", torch.zeros(capacity))
        self.register_buffer("terminated", torch.zeros(capacity))
        self.register_buffer("added", torch.zeros(1, dtype=torch.int64))  # transitions ever added

    def add(self, obs, action, reward, next_obs, terminated):
        slot = self.added % self.capacity
        for buffer, value in [(self.obs, obs), (self.action, action), (self.reward, reward),
                              (self.next_obs, next_obs), (self.terminated, terminated)]:
            buffer.index_copy_(0, slot, value.unsqueeze(0))
        self.added += 1

    def draw(self, batch_size, generator):
        """`batch_size` indices drawn uniformly from the stored transitions, counting the one that the coming
        update adds first (so with capacity 1 the batch is that latest transition)."""
        stored = min(int(self.added) + 1, self.capacity)
        return torch.randint(stored, (batch_size,), generator=generator)

    def sample(self, indices):
        """The stored transitions at `indices`, drawn by the caller from [0, min(added, capacity))."""
        return self.obs[indices], self.action[indices], self.reward[indices], self.next_obs[indices], \
            self.terminated[indices]
