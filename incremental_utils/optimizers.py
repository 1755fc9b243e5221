"""The optimisers the scripts step their networks with, each one object with one written form that runs eagerly and
compiles (compiling.py) alike. Their state (moments, traces) lives in zeroed copies of the network under the
parameters' own names, so it is checkpointed with the learner and read by name.

Every write goes through keep(): an update whose `ok` flag is false (a non-finite loss or gradient) must not reach
the weights or the optimiser state, and the compiled update cannot skip a write with an `if` on a tensor's value, so
the write is masked instead (torch.where, which fuses into the kernel for free).

Nothing here knows an algorithm: the scripts call these, never the other way round.
"""
import copy

import torch
import torch.nn as nn


def keep(ok, new, old):
    """Writes `new` into `old` where `ok` is true (a boolean tensor), leaves `old` as it was otherwise."""
    return old.copy_(torch.where(ok, new, old))


def zeroed_copy(network):
    """A copy of `network` with every parameter zero and no gradients: optimiser state under the parameters' names."""
    state = copy.deepcopy(network).requires_grad_(False)
    for p in state.parameters():
        p.zero_()
    return state


class Adam(nn.Module):
    """torch.optim.Adam (no weight decay). With beta1 = 0 (the AVG paper's usual choice) the first moment is the
    gradient itself and is not stored."""

    def __init__(self, network, lr, betas, eps=1e-8):
        super().__init__()
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg_sq = zeroed_copy(network)
        self.exp_avg = zeroed_copy(network) if self.beta1 > 0 else None
        self.register_buffer("beta1_power", torch.ones(1, dtype=torch.float64))
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))

    def step(self, params, grads, ok):
        """params, grads: {name: tensor}; the update is written only if `ok`."""
        exp_avg_sq = dict(self.exp_avg_sq.named_parameters())
        exp_avg = dict(self.exp_avg.named_parameters()) if self.exp_avg is not None else None
        keep(ok, self.beta1_power * self.beta1, self.beta1_power)
        keep(ok, self.beta2_power * self.beta2, self.beta2_power)
        step_size = self.lr / (1 - self.beta1_power).float()
        bias_correction2_sqrt = (1 - self.beta2_power).sqrt().float()
        for name, param in params.items():
            grad = grads[name]
            v = keep(ok, self.beta2 * exp_avg_sq[name] + (1 - self.beta2) * grad.square(), exp_avg_sq[name])
            m = grad if exp_avg is None else keep(ok, self.beta1 * exp_avg[name] + (1 - self.beta1) * grad,
                                                  exp_avg[name])
            keep(ok, param - step_size * m / (v.sqrt() / bias_correction2_sqrt + self.eps), param)


class ObGD(nn.Module):
    """Overshooting-bounded gradient descent on an eligibility trace (docs/algorithms.md 6), the Stream-X optimiser. The
    trace (and, adaptive, the second moment v) are zeroed copies of the network. A step is two calls, propose() and
    apply(), because a script writes an actor's and a critic's steps only when both proposals are finite."""

    def __init__(self, network, lr, kappa, trace_decay, adaptive, beta2, eps=1e-8):
        super().__init__()
        self.lr, self.kappa, self.trace_decay, self.beta2, self.eps = lr, kappa, trace_decay, beta2, eps
        self.trace = zeroed_copy(network)
        self.second_moment = zeroed_copy(network) if adaptive else None
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
        traces = dict(self.trace.named_parameters())
        moments = dict(self.second_moment.named_parameters()) if self.second_moment is not None else {}
        keep(ok, proposal["beta2_power"], self.beta2_power)
        for name, param in params.items():
            keep(ok, param + proposal["step_size"] * delta * proposal["direction"][name], param)
            keep(ok, proposal["z"][name], traces[name])
            if name in moments:
                keep(ok, proposal["v"][name], moments[name])

    def end_episode(self):
        for z in self.trace.parameters():
            z.zero_()
