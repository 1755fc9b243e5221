"""Gradients by parameter name, and the cheap check that they are finite: what every update script differentiates
its losses with."""
import torch


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
