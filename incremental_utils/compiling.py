"""The per-step update as one call of compiled C++, and the reason when it is not.

A researcher changing an algorithm needs to know three things of the compiler, all said here once:
- the update is one call, learner(inputs), whose inputs are one NamedTuple of tensors (a field may itself be a
  NamedTuple of tensors, such as a camera observation) built the same way each step, and whose outputs are likewise,
  with an `ok` field (the compiler traces one call with example inputs of the same shapes, so the traced graph must
  not depend on their values);
- every piece of learner state is a parameter or buffer of the learner (the compiled code reads and writes them in
  place, as the eager code does);
- a write that must not happen after a non-finite value is masked (torch.where(ok, new, old)), never skipped with an
  `if` on a tensor: a branch on a value cannot be traced (optimizers.py says it once, for every optimiser).

How: make_fx traces learner.forward (backward pass and optimiser step included) into one graph whose inputs are the
learner's state tensors and the step's inputs; Inductor compiles it to C++ (cached on disk). Both happen in a child
process, so the compiler's memory (tracing, Inductor, the C++ compiler) is never part of the training process, which
only loads the compiled library (a few hundred KB). The child checks that a call of the library as loaded here gives
exactly what Inductor's own runtime gives on a probe step. This rests on torch internals (make_fx's decomposition
tables, torch._inductor.standalone_compile, the library's entry point), which is why pyproject.toml pins the torch
versions it is tested with and why a failure says so instead of passing for a compiled run.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

aten = torch.ops.aten
TESTED_TORCH = ("2.13",)  # the torch releases this compiled path is tested with (pyproject.toml pins the same)


class CompileError(Exception):
    """Compiling the update failed; the message says why (one line)."""


# The fence: every call of a private torch API (torch._C, torch._inductor) happens inside compile_update(), whose
# failures are CompileErrors (a fallback to eager with --compile auto, one line with --compile on), and a torch outside
# TESTED_TORCH is refused before any of them runs.
def check_torch(version=None):
    """Raises CompileError unless `version` (this torch's) is a release the compiled path is tested with."""
    version = version or torch.__version__
    release = ".".join(version.split("+")[0].split(".")[:2])
    if release not in TESTED_TORCH:
        raise CompileError(f"torch {version} is not a release the compiled update is tested with "
                           f"({', '.join(TESTED_TORCH)}), and it rests on torch internals")


# ------------------------------------------------------------------------------------ what the tracer writes out
def _small(*sizes):
    return min(sizes) <= 4


# A large matrix multiplied along its contiguous axis (a big layer's forward pass: x @ W.T) goes to the BLAS library
# even for one sample: Inductor's loop for it transposes the matrix tile by tile and is slower than MKL.
LARGE_MATRIX = 100_000


def _large_along_rows(matrix, dim):
    return matrix.numel() > LARGE_MATRIX and matrix.stride(dim) == 1
# Up to this many multiply-adds a convolution of one sample is written as multiply-and-sum over its patches and fuses
# into the update (MinAtar's 3x3 conv: 37k); bigger ones (Atari's) keep the library's convolution.
SMALL_CONV_MACS = 131_072


def _mm(a, b):
    if not _small(a.shape[0], a.shape[1], b.shape[1]) or _large_along_rows(b, 0) or _large_along_rows(a, 1):
        return NotImplemented
    return (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)


def _addmm(bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1 or _mm(a, b) is NotImplemented:
        return NotImplemented
    return bias + (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)


def _mv(matrix, vector):
    if _large_along_rows(matrix, 1):
        return NotImplemented
    return (matrix * vector).sum(-1)


def _addmv(bias, matrix, vector, beta=1, alpha=1):
    if beta != 1 or alpha != 1 or _large_along_rows(matrix, 1):
        return NotImplemented
    return bias + (matrix * vector).sum(-1)


def _conv_patches(x, weight, stride, padding, dilation, transposed, groups):
    """x's patches (N, C, H', W', kh, kw) for a plain 2-D convolution of one sample small enough to fuse; else None."""
    if (transposed or groups != 1 or x.dim() != 4 or x.shape[0] != 1 or any(d != 1 for d in dilation)
            or weight.numel() * x.shape[2] * x.shape[3] // (stride[0] * stride[1]) > SMALL_CONV_MACS):
        return None
    if any(padding):
        x = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    return x.unfold(2, weight.shape[2], stride[0]).unfold(3, weight.shape[3], stride[1])


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    patches = _conv_patches(x, weight, stride, padding, dilation, transposed, groups)
    if patches is None:
        return NotImplemented
    out = (patches.unsqueeze(1) * weight[None, :, :, None, None]).sum((2, 5, 6))
    return out if bias is None else out + bias[None, :, None, None]


def _convolution_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                          groups, output_mask):
    patches = _conv_patches(x, weight, stride, padding, dilation, transposed, groups)
    if patches is None or output_mask[0]:  # the input's gradient (a conv after a conv) stays with the library
        return NotImplemented
    grad_weight = (grad_out[:, :, None, :, :, None, None] * patches.unsqueeze(1)).sum((0, 3, 4)) \
        if output_mask[1] else None
    return None, grad_weight, grad_out.sum((0, 2, 3)) if output_mask[2] else None


# For one sample (or a batch of at most 4) a matrix product is written as multiply-and-sum while tracing: Inductor
# then fuses the whole update, weight gradients and the optimiser step included, into one C++ kernel, where calling
# MKL for each tiny product costs more than the arithmetic. Larger batches and large matrices keep the library's
# matrix multiply; small convolutions of one sample (and their weight gradients) are written out likewise. Same math.
SMALL_MATMULS_AS_SUMS = {aten.mm.default: _mm, aten.addmm.default: _addmm, aten.mv.default: _mv,
                         aten.addmv.default: _addmv, aten.convolution.default: _convolution,
                         aten.convolution_backward.default: _convolution_backward}




def leaves(values):
    """The tensors of a NamedTuple whose fields are tensors or NamedTuples of tensors, in field order."""
    out = []
    for value in values:
        if isinstance(value, tuple):
            out.extend(value)
        else:
            out.append(value)
    return out


def layout(values):
    """Per field: None for a tensor, the NamedTuple type of a nested one (what rebuild() needs)."""
    return tuple(type(v) if isinstance(v, tuple) else None for v in values)


def rebuild(outer, fields_layout, flat):
    """The NamedTuple `outer` of the tensors `flat`, nested as `fields_layout` says."""
    flat, fields = iter(flat), []
    for kind in fields_layout:
        fields.append(next(flat) if kind is None else kind(*(next(flat) for _ in kind._fields)))
    return outer(*fields)


def is_tensor_tuple(values):
    return isinstance(values, tuple) and all(isinstance(v, torch.Tensor) for v in leaves(values)) and all(
        all(isinstance(x, torch.Tensor) for x in v) for v in values if isinstance(v, tuple))


def compile_update(learner, example_inputs, interrupted=None):
    """learner(inputs), one whole update, as a CompiledUpdate: the same call, run by compiled C++ on the learner's
    own state tensors. `example_inputs` is a NamedTuple of tensors shaped as every step's will be; `interrupted`, a
    function polled while the compiler works (a Ctrl-C stops it). Raises CompileError with the reason."""
    check_torch()
    if not is_tensor_tuple(example_inputs):
        raise CompileError("the update's inputs must be a NamedTuple (or tuple) of tensors")
    outputs = copy.deepcopy(learner)(example_inputs)  # the outputs' type, from one eager step on a copy
    if not is_tensor_tuple(outputs):
        raise CompileError("the update must return a NamedTuple (or tuple) of tensors")
    with tempfile.TemporaryDirectory(prefix="compile_update_") as folder:
        folder = Path(folder)
        main = sys.modules.get("__main__")
        torch.save({"learner": learner, "inputs": example_inputs}, folder / "job.pt")
        (folder / "job.json").write_text(json.dumps({
            "sys_path": [p for p in sys.path if p], "main_file": getattr(main, "__file__", None),
            "learner_module": type(learner).__module__}))
        result = run_child(folder, interrupted)
        library = load_library(result["library"])
    try:
        aoti = torch._C._aoti
        calls = (aoti.unsafe_alloc_void_ptrs_from_tensors, aoti.alloc_tensors_by_stealing_from_void_ptrs)
    except AttributeError as e:
        raise CompileError(f"this torch lacks what calling the compiled library needs ({e})") from None
    return CompiledUpdate(library, [*learner.parameters(), *learner.buffers()], example_inputs, outputs,
                          result["outputs"], calls)


def run_child(folder, interrupted):
    log = open(folder / "child.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")
    # Its own session: a Ctrl-C reaches the run, which decides (through `interrupted`) to stop the compiler.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
            f"from incremental_utils.compiling import child_main; child_main({str(folder)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        while proc.poll() is None:
            if interrupted is not None and interrupted():
                proc.kill()
                proc.wait()
                raise CompileError("interrupted")
            time.sleep(0.05)
    finally:
        log.close()
    result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").exists() else None
    if proc.returncode != 0 or result is None or "error" in result:
        if result and "error" in result:
            raise CompileError(result["error"])
        tail = [line.strip() for line in (folder / "child.log").read_text(errors="replace").splitlines() if line.strip()]
        raise CompileError(f"the compiler process ended with status {proc.returncode}" +
                           (f": {tail[-1][:300]}" if tail else ""))
    return result


def load_library(path):
    """The compiled library as a Python extension module. It finds torch's tensor accessor through an environment
    variable, as Inductor's own loader sets it."""
    key = "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"
    previous = os.environ.get(key)
    try:
        os.environ[key] = str(torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr)
        spec = importlib.util.spec_from_file_location("compiled_update.inductor_entry_cpp", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:
        raise CompileError(f"the compiled library {path} did not load ({type(e).__name__}: {e})") from None
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
    return module


class CompiledUpdate:
    """learner(inputs) as compiled C++: reads and writes the learner's state tensors in place, returns the
    learner's own outputs type. Inputs must have the example's shapes and dtypes (checked at the first call)."""

    def __init__(self, library, state, example_inputs, example_outputs, n_outputs, calls):
        self.entry, self.state, self.n_outputs = library.inductor_entry_cpp, state, n_outputs
        self.to_handles, self.from_handles = calls  # torch's private converters, found inside the fence
        self.example = [(tuple(t.shape), t.dtype) for t in leaves(example_inputs)]
        self.nested_inputs = any(layout(example_inputs))
        self.outputs_type, self.outputs_layout = type(example_outputs), layout(example_outputs)
        self.nested_outputs = any(self.outputs_layout)
        self.checked = False

    def __call__(self, inputs):
        # The compiled code assumes each input's strides as traced (contiguous): a view (of moved axes, say) is copied.
        flat = [t.contiguous() for t in (leaves(inputs) if self.nested_inputs else inputs)]
        if not self.checked:
            got = [(tuple(t.shape), t.dtype) for t in flat]
            if got != self.example:
                raise ValueError(f"the update was compiled for inputs {self.example}, got {got}")
            self.checked = True
        out = self.from_handles(self.entry(self.to_handles([*self.state, *flat])))
        return rebuild(self.outputs_type, self.outputs_layout, out) if self.nested_outputs else self.outputs_type(*out)


# ----------------------------------------------------------------------------------------------- the child
def merge_repeats(graph):
    """Common-subexpression elimination that knows which tensors an in-place op writes: an operation repeated on the
    same values (the same inputs, none written to in between) is computed once. A learner whose actor reads a shared
    image encoder runs it on S once for both networks this way, with no caching in the algorithm's code. An
    operation whose result is written in place later (or a view of such a tensor) is never merged. Returns how many
    operations it removed."""
    base, same, written = {}, {}, set()  # a view's base tensor; detach/alias's source; tensors written in place

    def root(node):
        return base.get(node, node)

    def writes(node):
        return [a for a, spec in zip(node.args, node.target._schema.arguments)
                if isinstance(a, torch.fx.Node) and spec.alias_info is not None and spec.alias_info.is_write]

    nodes = [n for n in graph.nodes if n.op == "call_function" and hasattr(n.target, "_schema")]
    for node in nodes:
        returns = node.target._schema.returns
        if returns and returns[0].alias_info is not None and node.args and isinstance(node.args[0], torch.fx.Node):
            base[node] = root(node.args[0])
        written.update(root(a) for a in writes(node))
    version, seen, removed = {}, {}, 0

    def key(value):
        if isinstance(value, torch.fx.Node):
            value = same.get(value, value)
            return value.name, version.get(root(value), 0)
        if isinstance(value, (list, tuple)):
            return tuple(key(v) for v in value)
        return repr(value)

    for node in nodes:
        targets = writes(node)
        for target in targets:
            version[root(target)] = version.get(root(target), 0) + 1
        if str(node.target) in ("aten.detach.default", "aten.alias.default"):
            same[node] = same.get(node.args[0], node.args[0])  # the same values under another name
            continue
        if targets or root(node) in written:
            continue
        signature = (str(node.target), key(node.args), key(tuple(sorted(node.kwargs.items()))))
        if signature in seen:
            node.replace_all_uses_with(seen[signature])
            graph.erase_node(node)
            removed += 1
        else:
            seen[signature] = node
    return removed


def trace(learner, example_inputs):
    """learner(example_inputs) as an FX graph of aten operations whose inputs are the state tensors, then the inputs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    names = [*dict(learner.named_parameters()), *dict(learner.named_buffers())]
    state = [*learner.parameters(), *learner.buffers()]
    inputs_type, inputs_layout = type(example_inputs), layout(example_inputs)

    def step(*tensors):
        inputs = rebuild(inputs_type, inputs_layout, tensors[len(names):])
        out = torch.func.functional_call(learner, dict(zip(names, tensors)), (inputs,))
        # Contiguous copies, so that no output is a view of an input or of the state, and an output fed back as the next
        # step's input has the strides the code was compiled for (Inductor fuses the copies away where it can).
        return tuple(t.clone(memory_format=torch.contiguous_format) for t in leaves(out))

    graph = make_fx(step, decomposition_table=SMALL_MATMULS_AS_SUMS)(*[t.clone() for t in state],
                                                                      *[t.contiguous() for t in leaves(example_inputs)])
    if merge_repeats(graph.graph):
        graph.graph.lint()
        graph.recompile()
    return graph, state


def child_main(folder):
    """Traces and compiles the learner in `folder`/job.pt, checks the library against Inductor's runtime, and writes
    result.json: {"library", "outputs"} or {"error"}."""
    folder = Path(folder)
    job = json.loads((folder / "job.json").read_text())
    sys.path[:0] = [p for p in job["sys_path"] if p not in sys.path]
    torch.set_num_threads(1)
    try:
        main_module = None
        if job["learner_module"] == "__main__" and job["main_file"]:
            # The learner's classes live in the script that was run: load it under another name (so its main block
            # does not run) and let unpickling find them there.
            spec = importlib.util.spec_from_file_location("__compiled_script__", job["main_file"])
            main_module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(main_module)
        own_main, sys.modules["__main__"] = sys.modules["__main__"], main_module or sys.modules["__main__"]
        try:
            payload = torch.load(folder / "job.pt", weights_only=False)
        finally:
            sys.modules["__main__"] = own_main
        learner, example = payload["learner"], payload["inputs"]
        graph, state = trace(learner, example)
        import torch._inductor.config as inductor_config
        from torch._inductor.codecache import PyCodeCache

        example = [t.contiguous() for t in leaves(example)]
        with inductor_config.patch(cpp_wrapper=True, memory_planning=True, compile_threads=1):
            compiled = torch._inductor.standalone_compile(graph, [*state, *example], dynamic_shapes="from_example_inputs")
        entries = [m.inductor_entry for m in PyCodeCache.modules if hasattr(m, "inductor_entry")]
        if len(entries) != 1:
            raise CompileError(f"Inductor made {len(entries)} compiled modules, not one")
        library = sys.modules[entries[0].__module__].__file__
        # The probe: one step through Inductor's runtime and one through the library as the run will call it.
        runtime_state, direct_state = [t.clone() for t in state], [t.clone() for t in state]
        runtime_out = compiled(*runtime_state, *[t.clone() for t in example])
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors([*direct_state, *[t.clone() for t in example]])
        direct_out = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(entries[0](handles))
        same = len(runtime_out) == len(direct_out) and all(
            torch.equal(a, b) for a, b in zip([*runtime_out, *runtime_state], [*direct_out, *direct_state]))
        if not same:
            raise CompileError("the compiled library called directly disagrees with Inductor's runtime")
        result = {"library": library, "outputs": len(direct_out)}
    except Exception as e:
        message = " ".join(str(e).split())[:300]
        result = {"error": f"{type(e).__name__}: {message}" if not isinstance(e, CompileError) else message}
    (folder / "result.json").write_text(json.dumps(result))

