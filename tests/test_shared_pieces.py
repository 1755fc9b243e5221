"""Each algorithm script carries its own copy of the observation normaliser, the TD-error scaler and the
feature normalisation (single-file scripts, by design). This test feeds every copy the same input and checks it
against the same expected values, computed here with numpy, so the copies cannot drift apart."""
import importlib
import math

import numpy as np
import pytest
import torch

from helpers import SCRIPTS  # the one list of scripts: a new script's copies are checked here too

# Which copies each script has is read from the script itself; every script normalises observations and scales either
# its TD errors or its rewards.
WITH_REWARD_SCALER = [name for name in SCRIPTS if hasattr(importlib.import_module(name), "RewardScaler")]
WITH_TD_SCALER = [name for name in SCRIPTS if hasattr(importlib.import_module(name), "TDErrorScaler")]
WITH_FEATURE_NORM = [name for name in SCRIPTS if hasattr(importlib.import_module(name), "FeatureNorm")]

OBSERVATIONS = np.array([[0.5, -2.0, 10.0], [1.5, -1.0, 12.0], [-0.5, 0.0, 9.0], [2.5, -3.0, 15.0],
                         [0.0, 4.0, 11.0], [1.0, -2.5, 10.5], [3.0, 1.0, 8.0]])
# (reward, discount, episode ends after this step)
TD_STREAM = [(1.0, 0.99, False), (-0.5, 0.99, False), (2.0, 0.0, True), (0.3, 0.99, False), (0.7, 0.99, True),
             (-1.2, 0.99, False), (0.1, 0.0, True), (0.9, 0.99, False)]
FEATURES = np.array([[0.3, -1.2, 2.0, 0.0, 0.5, -0.7], [4.0, 1.0, -2.0, 3.0, 0.1, 0.2]], dtype=np.float32)


def module(name):
    return importlib.import_module(name)  # a script in the list that cannot be imported fails here


def test_every_script_carries_the_pieces_it_is_checked_for():
    assert set(WITH_TD_SCALER) | set(WITH_REWARD_SCALER) == set(SCRIPTS)
    assert all(hasattr(module(name), "RunningMeanVar") for name in SCRIPTS)
    assert {"avg", "iac", "sac_incremental", "td3_incremental"} <= set(WITH_FEATURE_NORM)


def expected_normalised():
    """Welford statistics including the current observation; the prior (mean 0, variance 1) until two samples."""
    rows = []
    for i, x in enumerate(OBSERVATIONS):
        seen = OBSERVATIONS[:i + 1]
        mean = seen.mean(0) if i >= 1 else np.zeros(3)
        var = seen.var(0, ddof=1) if i >= 1 else np.ones(3)
        rows.append((x - mean) / np.sqrt(var + 1e-8))
    return np.array(rows)


def expected_sigmas():
    sigmas, rewards, discounts, returns, ret = [], [], [], [], 0.0
    for reward, discount, ends in TD_STREAM:
        rewards.append(reward)
        discounts.append(discount)
        ret += reward
        var_r = np.var(rewards, ddof=1) if len(rewards) > 1 else 1.0
        var_d = np.var(discounts, ddof=1) if len(discounts) > 1 else 1.0
        sigmas.append(math.sqrt(max(var_r + var_d * np.mean(np.square(returns)), 1e-8)) if returns else 1.0)
        if ends:
            returns.append(ret)
            ret = 0.0
    return sigmas


@pytest.mark.parametrize("name", SCRIPTS)
def test_observation_normaliser(name):
    stats = module(name).RunningMeanVar((3,))
    out = []
    for x in OBSERVATIONS:
        stats.update(torch.from_numpy(x))
        out.append(stats.normalize(torch.from_numpy(x)).numpy())
    np.testing.assert_allclose(np.array(out), expected_normalised(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", WITH_TD_SCALER)
def test_td_error_scaler(name):
    scaler = module(name).TDErrorScaler()
    sigmas = []
    for reward, discount, ends in TD_STREAM:
        scaler.update(torch.tensor([reward], dtype=torch.float64), torch.tensor([discount], dtype=torch.float64))
        sigmas.append(scaler.sigma().item())
        if ends:
            scaler.end_episode()
    np.testing.assert_allclose(sigmas, expected_sigmas(), rtol=1e-6)


@pytest.mark.parametrize("name", WITH_FEATURE_NORM)
@pytest.mark.parametrize("kind", ["penultimate", "layer", "rms", "none"])
def test_feature_norm(name, kind):
    h = FEATURES
    expected = {"penultimate": h / np.linalg.norm(h, axis=-1, keepdims=True),
                "layer": (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5),
                "rms": h / np.sqrt(np.mean(h ** 2, -1, keepdims=True) + np.finfo(np.float32).eps),
                "none": h}[kind]
    out = module(name).FeatureNorm(kind)(torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", WITH_REWARD_SCALER)
def test_reward_scaler(name):
    """R / sqrt(Var[u] + 1e-8), u the discounted return of the episode so far (restarting at 0 after each end), its
    sample variance over every step so far; 1 until two steps."""
    gamma = 0.9
    scaler = module(name).RewardScaler(gamma)
    out, expected, trace, traces = [], [], 0.0, []
    for reward, _, ends in TD_STREAM:
        out.append(scaler(torch.tensor(reward)).item())
        trace = gamma * trace + reward
        traces.append(trace)
        var = np.var(traces, ddof=1) if len(traces) > 1 else 1.0
        expected.append(reward / math.sqrt(var + 1e-8))
        if ends:
            scaler.end_episode()
            trace = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_help_text_is_one_line(name):
    """tyro keeps a field docstring's line breaks, so a wrapped one breaks mid-sentence in --help."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    args = module(name).Args
    docstrings = {}
    for cls in args.__mro__:
        if not dataclasses.is_dataclass(cls):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for field, doc in zip(body, body[1:]):
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                docstrings.setdefault(field.target.id, doc.value.value)
    assert set(docstrings) == {f.name for f in dataclasses.fields(args)}  # every flag has its help text
    assert {k: v for k, v in docstrings.items() if "\n" in v} == {}
