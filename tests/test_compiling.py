"""incremental_utils/compiling.py: the compiled update against eager execution (one sample, a small batch written out
as sums, a large batch that keeps its matrix products), the written-out products and convolutions against torch's
own, and the fence around the compiled path: a compile that cannot work says why, the training process never holds
the compiler, inputs of another shape are refused."""
import copy
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from helpers import REPO, TESTS, assert_states_close
from incremental_utils import compiling
from incremental_utils.compiling import SMALL_MATMULS_AS_SUMS, CompiledUpdate, CompileError, check_torch, compile_update
from incremental_utils.gradients import all_finite, grad_and_aux
from incremental_utils.metrics import MetricSums
from incremental_utils.optimizers import Adam

OBS = 5


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


class Result(NamedTuple):
    loss: torch.Tensor
    ok: torch.Tensor


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

    def forward(self, batch: Batch):
        params = dict(self.net.named_parameters())
        (grads,), loss = grad_and_aux(self.loss, (params,), batch.x, batch.y)
        ok = all_finite(loss, grads)
        self.opt.step(params, grads, ok)
        self.metrics.add(ok, {"losses/loss": loss})
        return Result(loss, ok)


@pytest.mark.parametrize("batch", [None, 2, 64])  # one sample, a small batch (sums), a large one (matmul kept)
def test_compiled_update_matches_eager(batch):
    shape = (OBS,) if batch is None else (batch, OBS)
    eager, compiled = TinyLearner(), TinyLearner()
    step = compile_update(compiled, Batch(torch.zeros(shape), torch.zeros(shape[:-1])))
    assert isinstance(step, CompiledUpdate)  # compiled, not the learner handed back
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        batch_in = Batch(torch.randn(shape, generator=g), torch.randn(shape[:-1], generator=g))
        out_eager, out = eager(batch_in), step(batch_in)
        assert isinstance(out, Result) and out.ok
    torch.testing.assert_close(out.loss, out_eager.loss, rtol=1e-4, atol=1e-6)
    assert_states_close(eager, compiled, rtol=1e-4, atol=1e-6)
    before = copy.deepcopy(compiled.state_dict())
    assert not step(Batch(torch.full(shape, float("nan")), torch.zeros(shape[:-1]))).ok
    assert all(torch.equal(before[k], v) for k, v in compiled.state_dict().items())  # masked


def test_inputs_of_another_shape_are_refused_before_they_reach_the_compiled_code():
    step = compile_update(TinyLearner(), Batch(torch.zeros(OBS), torch.zeros(())))
    with pytest.raises(ValueError, match="compiled for inputs"):
        step(Batch(torch.zeros(OBS + 1), torch.zeros(())))


class Unsupported(torch.nn.Module):
    def forward(self, batch):
        return batch.x.sum()  # not a NamedTuple of tensors


def test_a_compile_that_cannot_work_says_why_and_an_interrupted_one_stops():
    with pytest.raises(CompileError, match="must return a NamedTuple"):
        compile_update(Unsupported(), Batch(torch.zeros(OBS), torch.zeros(())))
    with pytest.raises(CompileError, match="inputs must be a NamedTuple"):
        compile_update(TinyLearner(), [torch.zeros(OBS)])
    with pytest.raises(CompileError, match="interrupted"):
        compile_update(TinyLearner(), Batch(torch.zeros(OBS), torch.zeros(())), interrupted=lambda: True)


LEAN = f"""
import sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
import torch
from test_compiling import Batch, TinyLearner
from incremental_utils.compiling import compile_update
step = compile_update(TinyLearner(), Batch(torch.zeros(5), torch.zeros(())))
print(bool(step(Batch(torch.ones(5), torch.zeros(()))).ok), "torch._inductor" in sys.modules)
"""


def test_the_training_process_runs_the_compiled_update_without_loading_the_compiler():
    """Tracing, Inductor and the C++ compiler run in a child process; this one loads only the compiled library, so a
    compiled run needs no more memory than the compiled code itself."""
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


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


def test_a_torch_outside_the_tested_releases_is_fenced_off_before_any_private_call(monkeypatch):
    """check_torch() names the release; compile_update() refuses before it traces or loads anything; a run with
    --compile auto falls back to eager and records why, one with --compile on stops in one line (tests/test_run.py)."""
    check_torch("2.13.0+cpu")
    with pytest.raises(CompileError, match=r"torch 2\.14\.0 is not a release the compiled update is tested with \(2\.13\)"):
        check_torch("2.14.0")
    monkeypatch.setattr(torch, "__version__", "2.14.1")
    traced = []
    monkeypatch.setattr(compiling, "run_child", lambda *a: traced.append(a))
    with pytest.raises(CompileError, match="torch 2.14.1"):
        compile_update(TinyLearner(), Batch(torch.zeros(OBS), torch.zeros(())))
    assert traced == []
