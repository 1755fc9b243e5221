"""update_tools.py: the fused Adam against torch.optim.Adam, the replay buffer, the metric sums, the finiteness check,
compile_update() against eager execution (one sample, and a batch that keeps its matrix products), and the
written-out products and convolutions against torch's own."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from helpers import assert_states_close
from update_tools import (SMALL_MATMULS_AS_SUMS, Adam, MetricSums, ReplayBuffer, all_finite, compile_update,
                          grad_and_aux)

OBS, ACT = 5, 2


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_matches_torch_optim(beta1):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    reference = copy.deepcopy(net)
    params = dict(net.named_parameters())
    net.requires_grad_(False)
    ours = Adam(net, lr=1e-2, betas=(beta1, 0.999))
    torch_adam = torch.optim.Adam(reference.parameters(), lr=1e-2, betas=(beta1, 0.999))
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        grads = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
        ours.step(params, grads, torch.tensor(True))
        for (k, p) in reference.named_parameters():
            p.grad = grads[k].clone()
        torch_adam.step()
    for k, p in reference.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-5, atol=1e-7)
    before = {k: p.clone() for k, p in params.items()}
    ours.step(params, {k: torch.full_like(p, float("nan")) for k, p in params.items()}, torch.tensor(False))
    assert all(torch.equal(before[k], params[k]) for k in params)  # masked: nothing changes


def test_replay_buffer_wraps_around_and_draws_only_stored_transitions():
    buffer = ReplayBuffer(3, OBS, ACT)
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        buffer.add(torch.full((OBS,), float(i)), torch.full((ACT,), float(i)), torch.tensor(float(i)),
                   torch.full((OBS,), float(i) + 0.5), torch.tensor(0.0))
    assert buffer.reward.tolist() == [3.0, 4.0, 2.0]  # slots 0 and 1 overwritten by transitions 3 and 4
    obs, action, reward, next_obs, _ = buffer.sample(torch.tensor([0, 1, 2]))
    assert torch.equal(obs[:, 0], reward) and torch.equal(next_obs[:, 0], reward + 0.5)
    fresh = ReplayBuffer(10, OBS, ACT)
    fresh.add(torch.zeros(OBS), torch.zeros(ACT), torch.tensor(1.0), torch.zeros(OBS), torch.tensor(0.0))
    drawn = fresh.draw(1000, g)  # one stored, plus the one the coming update adds
    assert set(drawn.tolist()) == {0, 1}
    assert set(buffer.draw(1000, g).tolist()) == {0, 1, 2}
    assert torch.equal(ReplayBuffer(1, OBS, ACT).draw(5, g), torch.zeros(5, dtype=torch.long))


def test_metric_sums_average_only_accepted_updates_by_name():
    sums = MetricSums("losses/a", "health/b")
    sums.add(torch.tensor(True), {"health/b": torch.tensor(4.0), "losses/a": torch.tensor([1.0])})
    sums.add(torch.tensor(False), {"losses/a": torch.tensor(100.0), "health/b": torch.tensor(float("nan"))})
    sums.add(torch.tensor(True), {"losses/a": torch.tensor(3.0), "health/b": torch.tensor(-2.0)})
    assert sums.pop_means() == {"losses/a": 2.0, "health/b": 1.0}
    assert sums.pop_means() == {}  # restarted; no updates since
    with pytest.raises(KeyError, match="declared"):
        sums.add(torch.tensor(True), {"losses/a": torch.tensor(1.0)})


def test_all_finite_checks_every_gradient_dict_through_its_biases():
    good = {"0.weight": torch.ones(2, 2), "0.bias": torch.ones(2)}
    assert all_finite(torch.tensor(1.0), good, good)
    assert not all_finite(torch.tensor(float("inf")), good)
    # the same names in two networks' dicts are both checked
    assert not all_finite(torch.tensor(1.0), good, {"0.weight": torch.ones(2, 2), "0.bias": torch.tensor([1.0, float("nan")])})


class TinyLearner(torch.nn.Module):
    """A two-layer regression learner with the fused Adam: enough to check that compiling changes nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(OBS, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.net.requires_grad_(False)
        self.opt = Adam(self.net, lr=1e-2, betas=(0.9, 0.999))
        self.metrics = MetricSums("losses/loss")

    def loss(self, params, x, y):
        prediction = torch.func.functional_call(self.net, params[0], (x,)).squeeze(-1)
        loss = (prediction - y).square().mean()
        return loss, loss.detach()

    def forward(self, x, y):
        params = dict(self.net.named_parameters())
        (grads,), loss = grad_and_aux(self.loss, (params,), x, y)
        ok = all_finite(loss, grads)
        self.opt.step(params, grads, ok)
        self.metrics.add(ok, {"losses/loss": loss})
        return loss, ok


@pytest.mark.parametrize("batch", [None, 2, 64])  # one sample, a small batch (sums), a large one (matmul kept)
def test_compiled_update_matches_eager(batch):
    shape = (OBS,) if batch is None else (batch, OBS)
    eager, compiled = TinyLearner(), TinyLearner()
    step = compile_update(compiled, (torch.zeros(shape), torch.zeros(shape[:-1])))
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        x, y = torch.randn(shape, generator=g), torch.randn(shape[:-1], generator=g)
        loss_eager, _ = eager(x, y)
        loss_compiled, ok = step(x, y)
        assert ok
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-6)
    assert_states_close(eager, compiled, rtol=1e-4, atol=1e-6)
    before = copy.deepcopy(compiled.state_dict())
    _, ok = step(torch.full(shape, float("nan")), torch.zeros(shape[:-1]))
    assert not ok and all(torch.equal(before[k], v) for k, v in compiled.state_dict().items())  # masked


def traced_ops(fn, *inputs):
    graph = make_fx(fn, decomposition_table=SMALL_MATMULS_AS_SUMS)(*inputs)
    return graph, {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("in_channels, size, stride, padding, written_out", [
    (4, 10, 1, 0, True),    # MinAtar's conv: fused into the update
    (3, 9, 2, 1, True),     # stride and padding
    (4, 84, 5, 0, False),   # Atari's first conv: too big, the library's convolution
])
def test_convolutions_of_one_sample_written_out_match_conv2d_and_its_gradients(in_channels, size, stride, padding,
                                                                            written_out):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, size, size, generator=g)
    weight = torch.randn(16, in_channels, 3 if size < 20 else 8, 3 if size < 20 else 8, generator=g)
    bias, grad_out_seed = torch.randn(16, generator=g), torch.randn((), generator=g)

    def conv_and_grads(x, weight, bias):
        weight, bias = weight.detach().requires_grad_(), bias.detach().requires_grad_()
        with torch.enable_grad():
            out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
            loss = (out.sin() * grad_out_seed).sum()
            return (out.detach(), *torch.autograd.grad(loss, (weight, bias)))

    graph, ops = traced_ops(conv_and_grads, x, weight, bias)
    assert any("convolution" in op for op in ops) != written_out, ops
    for traced, expected in zip(graph(x, weight, bias), conv_and_grads(x, weight, bias)):
        torch.testing.assert_close(traced, expected, rtol=1e-4, atol=1e-4)


def test_a_large_layer_multiplied_along_its_rows_keeps_the_library_product():
    """x @ W.T of MinAtar's 1024 x 128 layer goes to BLAS (Inductor's loop is slower there); a small one is summed."""
    for n_in, kept in ((1024, True), (64, False)):
        weight, x = torch.randn(128, n_in), torch.randn(1, n_in)
        graph, ops = traced_ops(lambda x, w: F.linear(x, w), x, weight)
        assert any(op.startswith(("aten.mm", "aten.addmm", "aten.mv")) for op in ops) == kept, ops
        torch.testing.assert_close(graph(x, weight), x @ weight.T, rtol=1e-5, atol=1e-5)
