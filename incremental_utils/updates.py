"""What an update is built from, written so that the whole one-sample update (forward passes, backward pass,
optimiser step, statistics, the next action) can be compiled into one C++ call by compiling.py:

- Adam: torch.optim.Adam written out as tensor code, every write masked by an all-finite flag; ObGD, the Stream-X
  optimiser (eligibility traces, overshooting bound), likewise.
- grad_and_aux(), all_finite(): gradients by parameter name, and the cheap finiteness check.
- ReplayBuffer: transitions in preallocated tensors (learner state, so checkpointed and compiled with the rest).
- MetricSums: named running sums of logged values, kept inside the learner so logging costs no sync per step.

Nothing here knows an algorithm: the scripts call these, never the other way round.
"""
import copy

import torch
import torch.nn as nn

from .compiling import being_traced


# ------------------------------------------------------------------------------------------- optimiser
class Adam(nn.Module):
    """torch.optim.Adam (no weight decay) written out so that it fuses into the compiled update. The moments live in
    zeroed copies of the network, under the parameters' own names. The update is applied only if `ok` is true, so a
    non-finite gradient never reaches the weights: eagerly it is skipped, and while traced for compiling every write
    is masked (a branch on a tensor cannot be traced; the mask fuses for free). With beta1 = 0 (the AVG paper's
    usual choice) the first moment is the gradient itself and is not stored."""

    def __init__(self, network, lr, betas, eps=1e-8):
        super().__init__()
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg_sq = copy.deepcopy(network).requires_grad_(False)
        self.exp_avg = copy.deepcopy(network).requires_grad_(False) if self.beta1 > 0 else None
        for moment in (self.exp_avg_sq, self.exp_avg):
            for p in moment.parameters() if moment is not None else []:
                p.zero_()
        self.register_buffer("beta1_power", torch.ones(1, dtype=torch.float64))
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))

    def step(self, params, grads, ok):
        exp_avg_sq = dict(self.exp_avg_sq.named_parameters())
        exp_avg = dict(self.exp_avg.named_parameters()) if self.exp_avg is not None else None
        if not being_traced():  # eagerly, a branch skips a failed update; traced, a branch cannot be recorded
            if ok:
                self.eager_step(list(params.values()), [grads[k] for k in params], [exp_avg_sq[k] for k in params],
                                [exp_avg[k] for k in params] if exp_avg is not None else None)
            return

        def keep(new, old):
            return old.copy_(torch.where(ok, new, old))

        keep(self.beta1_power * self.beta1, self.beta1_power)
        keep(self.beta2_power * self.beta2, self.beta2_power)
        step_size = self.lr / (1 - self.beta1_power).float()
        bias_correction2_sqrt = (1 - self.beta2_power).sqrt().float()
        for name, param in params.items():
            grad = grads[name]
            v = keep(self.beta2 * exp_avg_sq[name] + (1 - self.beta2) * grad.square(), exp_avg_sq[name])
            m = grad if exp_avg is None else keep(self.beta1 * exp_avg[name] + (1 - self.beta1) * grad,
                                                   exp_avg[name])
            keep(param - step_size * m / (v.sqrt() / bias_correction2_sqrt + self.eps), param)

    def eager_step(self, params, grads, exp_avg_sq, exp_avg):
        """The same update with foreach kernels: a few calls for all parameters instead of a dozen per tensor."""
        self.beta1_power *= self.beta1
        self.beta2_power *= self.beta2
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - self.beta2)
        if exp_avg is not None:
            torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - self.beta2_power).sqrt().item())
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg if exp_avg is not None else grads, denom,
                                value=-self.lr / (1 - self.beta1_power).item())


class ObGD(nn.Module):
    """Overshooting-bounded gradient descent on an eligibility trace (docs/algorithms.md 6), the Stream-X optimiser,
    written out so that it fuses into the compiled update. The trace (and, adaptive, the second moment v) live in
    zeroed copies of the network under the parameters' own names. propose() computes the new state; apply() writes it
    only where `ok` is true, so a non-finite value never reaches the weights or the traces."""

    def __init__(self, network, lr, kappa, trace_decay, adaptive, beta2, eps=1e-8):
        super().__init__()
        self.lr, self.kappa, self.trace_decay, self.beta2, self.eps = lr, kappa, trace_decay, beta2, eps
        self.trace = copy.deepcopy(network).requires_grad_(False)
        self.second_moment = copy.deepcopy(network).requires_grad_(False) if adaptive else None
        for state in (self.trace, self.second_moment):
            for p in state.parameters() if state is not None else []:
                p.zero_()
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))

    def propose(self, grads, delta, keep_trace=1.0):
        """New traces z = trace_decay keep_trace z + grad (keep_trace 0 cuts the trace: Watkins's Q(lambda)), new
        second moments, the direction (z, or z / sqrt(v_hat + eps)), its L1 norm and the step size alpha / max(M, 1)."""
        traces = dict(self.trace.named_parameters())
        z = {name: self.trace_decay * keep_trace * traces[name] + grad for name, grad in grads.items()}
        v, beta2_power, direction = {}, self.beta2_power, z
        if self.second_moment is not None:
            moments = dict(self.second_moment.named_parameters())
            beta2_power = self.beta2_power * self.beta2
            v = {name: self.beta2 * moments[name] + (1 - self.beta2) * (delta * z[name]).square() for name in z}
            bias_correction = (1 - beta2_power).float()
            direction = {name: z[name] / (v[name] / bias_correction + self.eps).sqrt() for name in z}
        norm = sum(d.abs().sum() for d in direction.values())
        bound = self.lr * self.kappa * delta.abs().clamp_min(1.0) * norm
        step_size = self.lr / bound.clamp_min(1.0)
        return {"z": z, "v": v, "beta2_power": beta2_power, "direction": direction, "norm": norm,
                "step_size": step_size}

    def apply(self, params, proposal, delta, ok):
        def keep(new, old):
            old.copy_(torch.where(ok, new, old))

        traces = dict(self.trace.named_parameters())
        moments = dict(self.second_moment.named_parameters()) if self.second_moment is not None else {}
        keep(proposal["beta2_power"], self.beta2_power)
        for name, param in params.items():
            keep(param + proposal["step_size"] * delta * proposal["direction"][name], param)
            keep(proposal["z"][name], traces[name])
            if name in moments:
                keep(proposal["v"][name], moments[name])

    def end_episode(self):
        for z in self.trace.parameters():
            z.zero_()


# ------------------------------------------------------------------------------------------- gradients
def grad_and_aux(loss_fn, params, *args):
    """Gradients of loss_fn w.r.t. the parameter dicts `params` (a tuple of {name: tensor}), and its auxiliary
    outputs: loss_fn(params, *args) returns (loss, aux)."""
    params = tuple({k: p.detach().requires_grad_() for k, p in d.items()} for d in params)
    with torch.enable_grad():
        loss, aux = loss_fn(params, *args)
        grads = iter(torch.autograd.grad(loss, [p for d in params for p in d.values()]))
    return tuple({k: next(grads) for k in d} for d in params), aux


def all_finite(loss, *grads):
    """Whether the loss and all gradients (dicts {name: gradient}) are finite, checking only the biases: a weight's
    gradient sums outer products of its layer's inputs and its bias's per-sample gradients, so when the loss (hence
    the inputs) and the bias gradients are finite, so are all gradients."""
    ok = torch.isfinite(loss).all()
    for named_grads in grads:
        for name, grad in named_grads.items():
            if name.endswith("bias"):
                ok = ok & torch.isfinite(grad).all()
    return ok


# ------------------------------------------------------------------------------------------ replay buffer
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


# ------------------------------------------------------------------------------------------------ metrics
class MetricSums(nn.Module):
    """Sums of logged values over the updates since the last log, as a buffer of the learner: adding them costs one
    fused tensor operation in the compiled update and no synchronisation. Values are passed by their TensorBoard
    tag; an update adds exactly the tags declared here, each with its own name (no positional order to keep)."""

    def __init__(self, *tags):
        super().__init__()
        self.tags = tags
        self.register_buffer("sums", torch.zeros(len(tags) + 1, dtype=torch.float64))  # the last: updates counted

    def add(self, ok, values):
        """Adds one update's {tag: 0-d tensor} to the sums if `ok` (a boolean tensor) is true."""
        if set(values) != set(self.tags):
            raise KeyError(f"logged {sorted(values)}, declared {sorted(self.tags)}")
        row = torch.stack([values[tag].detach().double().reshape(()) for tag in self.tags] + [ok.double()])
        self.sums += torch.where(ok, row, 0)

    def pop_means(self):
        """{tag: mean over the updates since the last call} (empty if there were none), and restarts the sums."""
        count = float(self.sums[-1])
        means = dict(zip(self.tags, (self.sums[:-1] / count).tolist())) if count else {}
        self.sums.zero_()
        return means
