"""What an update is built from (incremental_utils/optimizers.py, replay.py, metrics.py, gradients.py): Adam against
torch.optim.Adam (eagerly and as traced for the compiler), the replay buffer, the metric sums, the finiteness check."""
import copy

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from incremental_utils.gradients import all_finite
from incremental_utils.metrics import MetricSums
from incremental_utils.optimizers import Adam
from incremental_utils.replay import ReplayBuffer

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


@pytest.mark.parametrize("ok", [True, False])
def test_adam_traced_for_the_compiler_masks_its_writes_and_matches_eager(ok):
    """One written form: eagerly and traced for the compiler alike, every write is masked, and a failed update leaves
    the weights and moments as they were."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).requires_grad_(False)
    grads = {k: torch.randn(p.shape) if ok else torch.full(p.shape, float("nan")) for k, p in net.named_parameters()}

    def step(*state):
        params = dict(zip(["weight", "bias"], state[:2]))
        opt = Adam(torch.nn.Linear(4, 3).requires_grad_(False), lr=1e-2, betas=(0.9, 0.999))
        opt.load_state_dict(dict(zip(opt.state_dict(), state[2:])))
        opt.step(params, grads, torch.tensor(ok))
        return [*params.values(), *opt.state_dict().values()]

    opt = Adam(net, lr=1e-2, betas=(0.9, 0.999))
    state = [net.weight, net.bias, *opt.state_dict().values()]
    eager = step(*[t.clone() for t in state])
    graph = make_fx(step)(*[t.clone() for t in state])
    traced = graph(*[t.clone() for t in state])
    for a, b in zip(eager, traced):
        torch.testing.assert_close(a, b)
    if not ok:
        for a, b in zip(eager, state):
            assert torch.equal(a, b)
    assert any("where" in str(n.target) for n in graph.graph.nodes)  # the traced form masks
