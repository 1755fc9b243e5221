"""sac_incremental.py and td3_incremental.py against independent computations: the replay buffer, several
updates against implementations written the usual way (modules, .backward(), torch.optim.Adam), TD3's smoothing
noise clip and policy delay, compiled vs eager, and the batch/buffer argument checks."""
import copy

import numpy as np
import pytest
import torch

import sac_incremental as sac
import td3_incremental as td3
from incremental_utils.compiling import CompiledUpdate, compile_update
from incremental_utils.errors import RunError
from helpers import assert_states_close, run_script

OBS, ACT = 4, 2


def make(module, learner_cls, seed=0, **overrides):
    torch.manual_seed(seed)
    args = module.Args(**{"hidden_size": 32, **overrides})
    return learner_cls(OBS, np.full(ACT, -1.0), np.full(ACT, 1.0), args), args


def stream(n, batch, capacity, seed=1):
    """Transitions with every 5th terminal, and the batch indices the scripts would draw for them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        stored = min(i + 1, capacity)
        out.append(dict(obs=torch.randn(OBS, generator=g), action=torch.rand(ACT, generator=g) * 2 - 1,
                        raw_next_obs=torch.randn(OBS, generator=g, dtype=torch.float64),
                        reward=torch.randn((), generator=g), terminated=torch.tensor(float(i % 5 == 4)),
                        indices=torch.randint(stored, (batch,), generator=g),
                        noises=torch.randn(2, batch, ACT, generator=g), next_noise=torch.randn(ACT, generator=g)))
    return out


def sac_inputs(t):
    return sac.StepInputs(t["obs"], t["action"], torch.tensor(-1.0), t["raw_next_obs"], t["reward"], t["terminated"],
                          t["indices"], t["noises"], t["next_noise"], torch.zeros(ACT))


def td3_inputs(t):
    return td3.StepInputs(t["obs"], t["action"], t["raw_next_obs"], t["reward"], t["terminated"], t["indices"],
                          t["noises"][0], t["next_noise"], torch.zeros(ACT))


def torch_adam(net, lr, beta1):
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(beta1, 0.999))


@torch.no_grad()
def polyak_(target, net, tau):
    for tp, p in zip(target.parameters(), net.parameters()):
        tp.lerp_(p, tau)


def assert_same_parameters(pairs):
    for ours, ref in pairs:
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_sac_updates_match_a_plain_autograd_implementation():
    learner, args = make(sac, sac.SAC, buffer_size=4, batch_size=3, scale_td=True)
    actor = copy.deepcopy(learner.actor).requires_grad_(True)
    critic = copy.deepcopy(learner.critic).requires_grad_(True)
    target = copy.deepcopy(learner.target)
    log_alpha = torch.zeros(1, requires_grad=True)
    actor_opt, critic_opt = torch_adam(actor, args.actor_lr, args.beta1), torch_adam(critic, args.critic_lr, args.beta1)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.alpha_lr, betas=(args.beta1, 0.999))
    scaler, memory = sac.TDErrorScaler(), []
    for step, t in enumerate(stream(12, batch=3, capacity=4), start=1):
        learner(sac_inputs(t))
        # the reference: the same losses and order (critics, actor on the updated critics, temperature, targets)
        alpha = log_alpha.exp().detach()
        scaler.update((t["reward"] - alpha * -1.0).double().reshape(1), (0.99 * (1 - t["terminated"])).double().reshape(1))
        sigma = scaler.sigma()
        memory = (memory + [(t["obs"], t["action"], t["reward"], t["raw_next_obs"].float(), t["terminated"])])[-4:]
        obs, action, reward, next_obs, terminated = [torch.stack(x) for x in zip(*[
            ring_slot(memory, i, capacity=4, added=step) for i in t["indices"].tolist()])]
        with torch.no_grad():
            next_action, next_log_prob = actor(next_obs, t["noises"][0])
            y = reward + 0.99 * (1 - terminated) * (torch.minimum(*target(next_obs, next_action)) - alpha * next_log_prob)
        q1, q2 = critic(obs, action)
        critic_opt.zero_grad()
        ((((q1 - y) / sigma) ** 2).mean() + (((q2 - y) / sigma) ** 2).mean()).backward()
        critic_opt.step()
        new_action, log_prob = actor(obs, t["noises"][1])
        actor_opt.zero_grad()
        (alpha * log_prob - torch.minimum(*critic(obs, new_action))).mean().backward()
        actor_opt.step()
        alpha_opt.zero_grad()
        (-(log_alpha * (log_prob.detach() - ACT)).mean()).backward()
        alpha_opt.step()
        polyak_(target, critic, args.tau)
        if t["terminated"]:
            learner.td_scaler.end_episode()
            scaler.end_episode()
    assert sigma.item() != 1.0  # the TD errors were scaled
    assert_same_parameters([(learner.actor, actor), (learner.critic, critic), (learner.target, target)])
    torch.testing.assert_close(learner.temperature.log_alpha, log_alpha.detach(), rtol=1e-4, atol=1e-7)


def ring_slot(memory, index, capacity, added):
    """The transition that sits in ring-buffer slot `index` after `added` additions (memory: the last ones)."""
    newest_slot = (added - 1) % capacity
    age = (newest_slot - index) % capacity
    return memory[len(memory) - 1 - age]


def test_td3_updates_match_a_plain_autograd_implementation():
    learner, args = make(td3, td3.TD3, buffer_size=4, batch_size=3, scale_td=True, policy_delay=2)
    actor = copy.deepcopy(learner.actor).requires_grad_(True)
    critic = copy.deepcopy(learner.critic).requires_grad_(True)
    actor_target, critic_target = copy.deepcopy(learner.actor_target), copy.deepcopy(learner.critic_target)
    actor_opt, critic_opt = torch_adam(actor, args.actor_lr, args.beta1), torch_adam(critic, args.critic_lr, args.beta1)
    scaler, memory = td3.TDErrorScaler(), []
    for step, t in enumerate(stream(12, batch=3, capacity=4), start=1):
        learner(td3_inputs(t))
        scaler.update(t["reward"].double().reshape(1), (0.99 * (1 - t["terminated"])).double().reshape(1))
        sigma = scaler.sigma()
        memory = (memory + [(t["obs"], t["action"], t["reward"], t["raw_next_obs"].float(), t["terminated"])])[-4:]
        obs, action, reward, next_obs, terminated = [torch.stack(x) for x in zip(*[
            ring_slot(memory, i, capacity=4, added=step) for i in t["indices"].tolist()])]
        with torch.no_grad():
            smoothing = (0.2 * t["noises"][0]).clamp(-0.5, 0.5)
            next_action = (actor_target(next_obs) + smoothing).clamp(-1, 1)
            y = reward + 0.99 * (1 - terminated) * torch.minimum(*critic_target(next_obs, next_action))
        q1, q2 = critic(obs, action)
        critic_opt.zero_grad()
        ((((q1 - y) / sigma) ** 2).mean() + (((q2 - y) / sigma) ** 2).mean()).backward()
        critic_opt.step()
        if step % 2 == 0:  # policy delay: actor and targets every second critic update
            actor_opt.zero_grad()
            (-critic.q1(obs, actor(obs)).mean()).backward()
            actor_opt.step()
            polyak_(actor_target, actor, args.tau)
            polyak_(critic_target, critic, args.tau)
        if t["terminated"]:
            learner.td_scaler.end_episode()
            scaler.end_episode()
    assert sigma.item() != 1.0  # the TD errors were scaled
    assert_same_parameters([(learner.actor, actor), (learner.critic, critic), (learner.actor_target, actor_target),
                            (learner.critic_target, critic_target)])


def test_td3_smoothing_noise_is_clipped_and_the_actor_waits_its_turn():
    learner, _ = make(td3, td3.TD3, policy_delay=3)
    t = stream(1, batch=1, capacity=1)[0]
    huge_noise = torch.full((1, ACT), 1e3)  # clipped to +0.5, so the target action is actor_target + 0.5
    seen = {}
    original = learner.critic_target.forward

    def spy(obs, action):
        seen["action"] = action.clone()
        return original(obs, action)

    learner.critic_target.forward = spy
    actor_before = copy.deepcopy(learner.actor.state_dict())
    for i in range(1, 4):
        learner(td3_inputs(t)._replace(smoothing_noise=huge_noise))
        if i == 1:
            with torch.no_grad():
                expected = (learner.actor_target(t["raw_next_obs"].float().unsqueeze(0)) + 0.5).clamp(-1, 1)
            torch.testing.assert_close(seen["action"], expected)
        moved = any(not torch.equal(actor_before[k], v) for k, v in learner.actor.state_dict().items())
        assert moved == (i == 3), i  # only on the third critic update
    assert learner.critic_updates.item() == 3


@pytest.mark.parametrize("module, cls, buffer_size, batch_size", [(sac, sac.SAC, 16, 8), (td3, td3.TD3, 1, 1)],
                         ids=["sac-batch8", "td3-1"])
def test_compiled_update_matches_eager(module, cls, buffer_size, batch_size):
    """200 updates on a fixed stream; parameters agree to float32 rounding accumulated over the run."""
    eager, args = make(module, cls, seed=3, buffer_size=buffer_size, batch_size=batch_size, hidden_size=64)
    compiled, _ = make(module, cls, seed=3, buffer_size=buffer_size, batch_size=batch_size, hidden_size=64)
    transitions = stream(200, batch=batch_size, capacity=buffer_size, seed=4)

    inputs = sac_inputs if module is sac else td3_inputs
    step = compile_update(compiled, inputs(transitions[0]))
    assert isinstance(step, CompiledUpdate)
    for t in transitions:
        out_eager, out_compiled = eager(inputs(t)), step(inputs(t))
        if t["terminated"]:
            eager.td_scaler.end_episode()
            compiled.td_scaler.end_episode()
    torch.testing.assert_close(out_compiled[0], out_eager[0], rtol=1e-3, atol=1e-4)
    assert_states_close(eager, compiled)


@pytest.mark.parametrize("module", [sac, td3])
@pytest.mark.parametrize("fields, message", [({"batch_size": 256}, "--batch-size 256 is larger than --buffer-size 1"),
                                             ({"buffer_size": -3}, "--buffer-size must be positive"),
                                             ({"batch_size": 0}, "--batch-size must be positive"),
                                             ({"learning_starts": -1}, "--learning-starts is out of range")])
def test_buffer_and_batch_arguments_are_checked(tmp_path, monkeypatch, module, fields, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match=message):
        module.main(module.Args(total_timesteps=10, **fields), set(fields))


def test_batch_larger_than_buffer_on_the_command_line(tmp_path):
    out = run_script("td3_incremental.py", "--buffer-size", 100, "--batch-size", 256, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "td3_incremental.py: error: --batch-size 256 is larger than --buffer-size 100"


def test_batch_mode_waits_for_learning_starts(tmp_path):
    out = run_script("sac_incremental.py", "--env", "faulty_envs:Point-v0", "--total-timesteps", 160,
                     "--buffer-size", 1000, "--batch-size", 8, "--learning-starts", 100, "--compile", "off",
                     "--run-name", "warm", "--log-every", 50, "--save-model", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    checkpoint = torch.load(tmp_path / "runs" / "warm" / "sac_incremental.model", weights_only=False)
    assert checkpoint["args"]["learning_starts"] == 100
    from helpers import scalars
    logs = scalars(tmp_path / "runs" / "warm")
    assert [step for step, _ in logs["losses/critic_loss"]] == [150]  # none at step 100: no update yet
