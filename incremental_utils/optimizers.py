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


def utility_gates(utilities):
    """UPGD's scaled utilities ubar = sigmoid(u_hat / max u), one per weight, u_hat the bias-corrected traces and the max
    taken over the raw traces of every parameter of the network (the global form, SPEC.md 11). Where no trace is
    positive (only in the first steps) the authors' code divides by a non-positive max; here it is floored at 1e-30,
    which makes every weight count as least useful."""
    largest = torch.stack([u.max() for u, _ in utilities.values()]).max().clamp_min(1e-30)
    return {name: torch.sigmoid(u_hat / largest) for name, (u, u_hat) in utilities.items()}


def split(flat, params):
    """A flat vector cut into tensors shaped as `params` ({name: tensor}), in their order."""
    out, offset = {}, 0
    for name, p in params.items():
        out[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


class Adam(nn.Module):
    """torch.optim.Adam, with decoupled weight decay (p <- (1 - lr wd) p before the step, as UPGD decays). With beta1
    = 0 (the AVG paper's usual choice) the first moment is the gradient itself and is not stored.

    upgd=(sigma, beta_utility): the adaptive UPGD of Elsayed and Mahmood (SPEC.md 11) instead, Adam's moments gated by
    each weight's utility u <- beta_u u + (1 - beta_u)(-g w) and perturbed:
    p <- (1 - lr wd) p - 2 (1 - ubar) lr (m_hat / (sqrt(v_hat) + eps) + xi), xi ~ N(0, sigma^2), ubar =
    utility_gates(). With sigma = 0 and every ubar at 1/2 this is Adam's step. Its noise comes in with each step (one
    N(0, 1) draw per parameter entry, `noise_size` of them), so that eager and compiled steps see the same draws."""

    def __init__(self, network, lr, betas, eps=1e-8, weight_decay=0.0, upgd=None):
        super().__init__()
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg_sq = zeroed_copy(network)
        self.exp_avg = zeroed_copy(network) if self.beta1 > 0 else None
        self.register_buffer("beta1_power", torch.ones(1, dtype=torch.float64))
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))
        self.sigma, self.beta_utility = upgd if upgd is not None else (0.0, 0.0)
        self.utility = zeroed_copy(network) if upgd is not None else None
        self.register_buffer("utility_power", torch.ones(1, dtype=torch.float64))
        self.noise_size = sum(p.numel() for p in network.parameters()) if upgd is not None else 0

    def step(self, params, grads, ok, noise=None):
        """params, grads: {name: tensor}; noise (UPGD): `noise_size` N(0, 1) draws. The update is written only if `ok`.
        Returns the squared L2 norm of the change it made (0 if not ok)."""
        exp_avg_sq = dict(self.exp_avg_sq.named_parameters())
        exp_avg = dict(self.exp_avg.named_parameters()) if self.exp_avg is not None else None
        keep(ok, self.beta1_power * self.beta1, self.beta1_power)
        keep(ok, self.beta2_power * self.beta2, self.beta2_power)
        step_size = self.lr / (1 - self.beta1_power).float()
        bias_correction2_sqrt = (1 - self.beta2_power).sqrt().float()
        gates, noise = None, split(noise, params) if self.utility is not None else None
        if self.utility is not None:
            keep(ok, self.utility_power * self.beta_utility, self.utility_power)
            traces, correction = dict(self.utility.named_parameters()), (1 - self.utility_power).float()
            new_utility = {name: self.beta_utility * traces[name] - (1 - self.beta_utility) * grads[name] * param
                           for name, param in params.items()}
            gates = utility_gates({name: (u, u / correction) for name, u in new_utility.items()})
            for name, u in new_utility.items():
                keep(ok, u, traces[name])
        norm = torch.zeros(())
        for name, param in params.items():
            grad = grads[name]
            v = keep(ok, self.beta2 * exp_avg_sq[name] + (1 - self.beta2) * grad.square(), exp_avg_sq[name])
            m = grad if exp_avg is None else keep(ok, self.beta1 * exp_avg[name] + (1 - self.beta1) * grad,
                                                  exp_avg[name])
            change = step_size * m / (v.sqrt() / bias_correction2_sqrt + self.eps)
            if gates is not None:
                change = 2 * (1 - gates[name]) * (change + self.lr * self.sigma * noise[name])
            new = param * (1 - self.lr * self.weight_decay) - change
            norm = norm + (new - param).square().sum()
            keep(ok, new, param)
        return torch.where(ok, norm, 0.0)

    def forget(self, name, index, dim):
        """What this optimiser holds of parameter `name`'s entries `index` along `dim` (a unit replaced by continual
        backprop), reset: the first moment and the utility to 0, the second moment to that tensor's mean (0 would
        make the next step about 30 times the step size, Adam's bias correction being the whole network's)."""
        for state, fill in ((self.exp_avg, 0.0), (self.utility, 0.0), (self.exp_avg_sq, None)):
            if state is not None:
                reset_entries(dict(state.named_parameters())[name], index, dim, fill)


def reset_entries(tensor, index, dim, fill=None):
    """tensor's entries at `index` along `dim` set to `fill`, or (None) to the mean of the tensor's other entries."""
    with torch.no_grad():
        if fill is None:
            keep_mask = torch.ones(tensor.shape[dim], dtype=torch.bool)
            keep_mask[index] = False
            fill = tensor.index_select(dim, keep_mask.nonzero().squeeze(1)).mean() if keep_mask.any() else 0.0
        tensor.index_fill_(dim, torch.as_tensor(index).reshape(-1), float(fill))


class ObGD(nn.Module):
    """Overshooting-bounded gradient descent on an eligibility trace (docs/algorithms.md 6), the Stream-X optimiser. The
    trace (and, adaptive, the second moment v) are zeroed copies of the network. A step is two calls, propose() and
    apply(), because a script writes an actor's and a critic's steps only when both proposals are finite (a
    proposal's "norm" is finite when its traces are), and every trace optimiser here shares the two calls.

    weight_decay: p <- (1 - s wd) p with s the step size taken (alpha / max(M, 1)). upgd=(sigma, beta_utility): UPGD's
    utility gating and perturbation on ObGD's step (docs/algorithms.md 10): each weight's utility is traced on the
    update direction d (z, or adaptive z / sqrt(v_hat + eps)), u <- beta_u u + (1 - beta_u) delta d w; the direction
    is gated, d' = 2 (1 - ubar) d; the bound is taken on d'; the step adds the gated perturbation 2 (1 - ubar) sigma xi.
    With sigma = 0 and every ubar at 1/2 this is ObGD's step."""

    def __init__(self, network, lr, kappa, trace_decay, adaptive, beta2, eps=1e-8, weight_decay=0.0, upgd=None):
        super().__init__()
        self.lr, self.kappa, self.trace_decay, self.beta2, self.eps = lr, kappa, trace_decay, beta2, eps
        self.weight_decay = weight_decay
        self.trace = zeroed_copy(network)
        self.second_moment = zeroed_copy(network) if adaptive else None
        self.register_buffer("beta2_power", torch.ones(1, dtype=torch.float64))
        self.sigma, self.beta_utility = upgd if upgd is not None else (0.0, 0.0)
        self.utility = zeroed_copy(network) if upgd is not None else None
        self.register_buffer("utility_power", torch.ones(1, dtype=torch.float64))
        self.noise_size = sum(p.numel() for p in network.parameters()) if upgd is not None else 0

    def propose(self, grads, delta, keep_trace=1.0, params=None, noise=None):
        """New traces z = trace_decay keep_trace z + grad (keep_trace 0 cuts the trace: Watkins's Q(lambda)), new
        second moments, the direction (z, or z / sqrt(v_hat + eps)), its L1 norm and the step size alpha / max(M, 1).
        UPGD also needs the parameters and `noise_size` N(0, 1) draws."""
        traces = dict(self.trace.named_parameters())
        z = {name: self.trace_decay * keep_trace * traces[name] + grad for name, grad in grads.items()}
        v, beta2_power, direction = {}, self.beta2_power, z
        if self.second_moment is not None:
            moments = dict(self.second_moment.named_parameters())
            beta2_power = self.beta2_power * self.beta2
            v = {name: self.beta2 * moments[name] + (1 - self.beta2) * (delta * z[name]).square() for name in z}
            bias_correction = (1 - beta2_power).float()
            direction = {name: z[name] / (v[name] / bias_correction + self.eps).sqrt() for name in z}
        proposal = {"z": z, "v": v, "beta2_power": beta2_power, "perturbation": None}
        if self.utility is not None:
            utility_power, old = self.utility_power * self.beta_utility, dict(self.utility.named_parameters())
            utility = {name: self.beta_utility * old[name] + (1 - self.beta_utility) * delta * d * params[name]
                       for name, d in direction.items()}
            gates = utility_gates({name: (u, u / (1 - utility_power).float()) for name, u in utility.items()})
            direction = {name: 2 * (1 - gates[name]) * d for name, d in direction.items()}
            noise = split(noise, params)
            proposal.update(utility=utility, utility_power=utility_power, perturbation={
                name: 2 * (1 - gates[name]) * self.sigma * noise[name] for name in direction})
        norm = sum(d.abs().sum() for d in direction.values())
        step_size = self.lr / (self.lr * self.kappa * delta.abs().clamp_min(1.0) * norm).clamp_min(1.0)
        return {**proposal, "direction": direction, "norm": norm, "step_size": step_size, "delta": delta,
                "health": {"step_size": step_size, "trace_l1": norm}}

    health_names = ("step_size", "trace_l1")  # what a proposal's "health" holds, logged as health/NET_NAME

    def apply(self, params, proposal, ok):
        """Writes the proposal if `ok`; returns the squared L2 norm of the parameters' change (0 if not ok)."""
        traces = dict(self.trace.named_parameters())
        moments = dict(self.second_moment.named_parameters()) if self.second_moment is not None else {}
        utilities = dict(self.utility.named_parameters()) if self.utility is not None else {}
        keep(ok, proposal["beta2_power"], self.beta2_power)
        if utilities:
            keep(ok, proposal["utility_power"], self.utility_power)
        step_size, delta, norm = proposal["step_size"], proposal["delta"], torch.zeros(())
        for name, param in params.items():
            change = delta * proposal["direction"][name]
            if proposal["perturbation"] is not None:
                change = change + proposal["perturbation"][name]
            new = param * (1 - step_size * self.weight_decay) + step_size * change
            norm = norm + (new - param).square().sum()
            keep(ok, new, param)
            keep(ok, proposal["z"][name], traces[name])
            if name in moments:
                keep(ok, proposal["v"][name], moments[name])
            if name in utilities:
                keep(ok, proposal["utility"][name], utilities[name])
        return torch.where(ok, norm, 0.0)

    def forget(self, name, index, dim):
        """Resets what this optimiser holds of parameter `name`'s entries `index` along `dim` (a unit replaced by
        continual backprop): the trace and the utility to 0, the second moment to that tensor's mean (as Adam's)."""
        for state, fill in ((self.trace, 0.0), (self.utility, 0.0), (self.second_moment, None)):
            if state is not None:
                reset_entries(dict(state.named_parameters())[name], index, dim, fill)

    def end_episode(self):
        for z in self.trace.parameters():
            z.zero_()


class Intentional(nn.Module):
    """Intentional updates (Sharifnassab, Elsayed, De Asis, Mahmood and Sutton, ICML 2026; SPEC.md 12): the step size
    is solved for an intended change of the output, eta, rather than set in parameter units. Per network:
    v <- beta2 v + (1 - beta2) g^2 on the raw gradient, v_hat = sqrt(v / (1 - beta2^t)) + 1e-8; z <- gamma lambda z + g;
    sigma <- sigma + (1 - gamma lambda)(sum g^2 / v_hat - sigma), read bias-corrected by 1 - (gamma lambda)^t;
    step = eta / max(sqrt(sigma_bc sum z^2 / v_hat), 1e-8); theta <- theta + step delta_safe z / v_hat. delta_safe is
    delta clipped at C sqrt(EMA(delta^2) / (1 - beta_clip^t)) (the EMA starts at 1 and takes the raw delta first), and
    for a policy (normalize_delta) then divided by the bias-corrected EMA of |clipped delta|. Gradients are of V or of
    log pi (+ the entropy term), so the step adds where the authors' code, differentiating -V, subtracts.
    The same two calls as ObGD (propose, apply); no keep_trace: Q(lambda) cuts its trace by passing keep_trace 0.
    Computed, not as written: the beta^t are kept as running products and 1 / v_hat once per weight (speed, not math).
    """

    health_names = ("step_size", "sigma", "clip_cap", "trace_norm")

    def __init__(self, network, eta, trace_decay, beta2=0.999, clip_mult=20.0, beta_clip=0.9998,
                 normalize_delta=False, beta_norm=0.9998):
        super().__init__()
        self.eta, self.trace_decay, self.beta2, self.clip_mult = eta, trace_decay, beta2, clip_mult
        self.beta_clip, self.normalize_delta, self.beta_norm = beta_clip, normalize_delta, beta_norm
        self.trace, self.second_moment = zeroed_copy(network), zeroed_copy(network)
        # The bias corrections' beta^t are running products, not powers of a step count: the compiler recomputes a
        # scalar in every loop that reads it, and a pow there, per 16 weights, cost more than the whole ObGD step.
        for name, value in (("steps", 0.0), ("sigma", 0.0), ("clip_ema", 1.0), ("abs_ema", 0.0), ("beta2_power", 1.0),
                            ("decay_power", 1.0), ("clip_power", 1.0), ("norm_power", 1.0)):
            self.register_buffer(name, torch.full((1,), value, dtype=torch.float64))
        self.noise_size = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint written before the running products holds only the step count: beta^t follows from it.
        steps = state_dict.get(prefix + "steps")
        for name, base in (("beta2_power", self.beta2), ("decay_power", self.trace_decay),
                           ("clip_power", self.beta_clip), ("norm_power", self.beta_norm)):
            if steps is not None and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full_like(steps, base, dtype=torch.float64) ** steps.double()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def propose(self, grads, delta, keep_trace=1.0, params=None, noise=None):
        traces, moments = dict(self.trace.named_parameters()), dict(self.second_moment.named_parameters())
        powers = {"beta2_power": self.beta2_power * self.beta2, "decay_power": self.decay_power * self.trace_decay,
                  "clip_power": self.clip_power * self.beta_clip, "norm_power": self.norm_power * self.beta_norm}
        v = {name: self.beta2 * moments[name] + (1 - self.beta2) * g.square() for name, g in grads.items()}
        # 1 / v_hat once per weight: the loops then multiply, where dividing three times cost a third of the step
        inverse_bc = (1 / (1 - powers["beta2_power"])).float()
        inv_v_hat = {name: 1 / ((m * inverse_bc).sqrt() + 1e-8) for name, m in v.items()}
        z = {name: self.trace_decay * keep_trace * traces[name] + g for name, g in grads.items()}
        grad_norm = sum((g.square() * inv_v_hat[name]).sum() for name, g in grads.items()).double()
        trace_norm = sum((t.square() * inv_v_hat[name]).sum() for name, t in z.items()).double()
        sigma = self.sigma + (1 - self.trace_decay) * (grad_norm - self.sigma)
        sigma_bc = sigma / (1 - powers["decay_power"])
        step_size = (self.eta / (sigma_bc * trace_norm).sqrt().clamp_min(1e-8)).float()
        clip_ema = self.beta_clip * self.clip_ema + (1 - self.beta_clip) * delta.double().square()
        cap = self.clip_mult * (clip_ema / (1 - powers["clip_power"])).sqrt()
        delta_safe = delta.double().clamp(-cap, cap)
        abs_ema = self.abs_ema
        if self.normalize_delta:
            abs_ema = self.beta_norm * self.abs_ema + (1 - self.beta_norm) * delta_safe.abs()
            delta_safe = delta_safe / (abs_ema / (1 - powers["norm_power"])).clamp_min(1e-12)
        # One scalar multiplies the direction: step_size comes out of a reduction, so it is computed once, and the
        # clip's chain of square roots rides on it instead of being redone per 16 weights.
        scale = (step_size * delta_safe).float().reshape(())
        return {"z": z, "v": v, "direction": {name: t * inv_v_hat[name] for name, t in z.items()},
                "norm": trace_norm.float(), "step_size": step_size, "delta": delta_safe.float().reshape(()),
                "scale": scale,
                "scalars": {"steps": self.steps + 1, "sigma": sigma, "clip_ema": clip_ema, "abs_ema": abs_ema,
                            **powers},
                "health": {"step_size": step_size.reshape(()), "sigma": sigma_bc.float().reshape(()),
                           "clip_cap": cap.float().reshape(()), "trace_norm": trace_norm.float().reshape(())}}

    def apply(self, params, proposal, ok):
        """Writes the proposal if `ok`; returns the squared L2 norm of the parameters' change (0 if not ok)."""
        traces, moments = dict(self.trace.named_parameters()), dict(self.second_moment.named_parameters())
        for name, value in proposal["scalars"].items():
            keep(ok, value.reshape(1), getattr(self, name))
        norm = torch.zeros(())
        for name, param in params.items():
            new = param + proposal["scale"] * proposal["direction"][name]
            norm = norm + (new - param).square().sum()
            keep(ok, new, param)
            keep(ok, proposal["z"][name], traces[name])
            keep(ok, proposal["v"][name], moments[name])
        return torch.where(ok, norm, 0.0)

    def forget(self, name, index, dim):
        """As ObGD's: the trace to 0, the second moment to that tensor's mean."""
        for state, fill in ((self.trace, 0.0), (self.second_moment, None)):
            reset_entries(dict(state.named_parameters())[name], index, dim, fill)

    def end_episode(self):
        for z in self.trace.parameters():
            z.zero_()
