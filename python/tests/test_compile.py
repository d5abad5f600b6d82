"""kldiv.torch's custom ops and torch.compile (torch 2.4 and later).

Every op passes torch.library.opcheck over dtypes, reductions, log_target,
layouts and gradients; fake kernels give the real kernels' shapes, dtypes and
strides; no output aliases an input or another output. Training steps that
call kl_div, KLDivLoss or distill_kl compile with fullgraph=True, give eager
kldiv's loss and gradients, compile once for every batch size under
dynamic=True, and warn of 'mean' as PyTorch's own kl_div does under compile.
"""
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import kldiv.torch

if not hasattr(torch.library, "custom_op"):
    pytest.skip(f"torch {torch.__version__} has no torch.library.custom_op (2.4 and later)",
                allow_module_level=True)

from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402 (torch 2.x only)
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = {
    "contiguous": lambda a: a,
    "transposed": lambda a: a.t().contiguous().t(),
    "sliced": lambda a: torch.cat([a, a], 1)[:, 1::2],
    "expanded": lambda a: a[:1].expand(a.shape),
}
GRADIENTS = {"none": (False, False), "input": (True, False), "target": (False, True), "both": (True, True)}
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles afresh: closures of one code object would otherwise add up to dynamo's recompile limit."""
    torch._dynamo.reset()


def _pair(shape, dtype=torch.float32, log_target=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).log_softmax(-1)
    t = torch.randn(shape, generator=generator)
    t = t.log_softmax(-1) if log_target else t.softmax(-1)
    return x.to(dtype), t.to(dtype)


def _logits(shape, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=generator)).to(dtype)


def _operands(x, t, layout, gradient):
    needs = GRADIENTS[gradient]
    return (LAYOUTS[layout](x.clone()).requires_grad_(needs[0]),
            LAYOUTS[layout](t.clone()).requires_grad_(needs[1]))


# Every dtype with every reduction and log_target; the layouts and gradient needs
# take turns across them, so that each dtype meets each layout and each need.
LOSS_CASES = [(dtype, reduction, log_target, list(LAYOUTS)[i % 4], list(GRADIENTS)[(i // 4 + i) % 4])
              for i, (dtype, reduction, log_target) in enumerate(itertools.product(DTYPES, REDUCTIONS, (False, True)))]


def _case_id(case):
    dtype, reduction, log_target, layout, gradient = case
    return f"{str(dtype)[6:]}-{reduction}-{'logt' if log_target else 'prob'}-{layout}-grad_{gradient}"


@pytest.mark.parametrize("case", LOSS_CASES, ids=_case_id)
def test_loss_ops_pass_opcheck(case):
    dtype, reduction, log_target, layout, gradient = case
    x, t = _pair((5, 17), dtype, log_target)
    a, b = _operands(x, t, layout, gradient)
    code = REDUCTIONS[reduction]
    torch.library.opcheck(torch.ops.kldiv.kl_div.default, (a, b, code, log_target))
    torch.library.opcheck(torch.ops.kldiv.kl_div_forward_backward.default,
                          (a.detach().requires_grad_(), b.detach(), code, log_target))
    upstream = torch.rand(() if reduction != "none" else x.shape).to(dtype)
    needs = GRADIENTS[gradient] if gradient != "none" else (True, True)
    torch.library.opcheck(torch.ops.kldiv.kl_div_backward.default,
                          (upstream, a.detach(), b.detach(), code, log_target, *needs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("upstream", [(), (5, 17)], ids=["scalar", "per-element"])
def test_the_fused_backwards_scaling_op_passes_opcheck(dtype, upstream):
    gradient = torch.randn(5, 17).to(dtype)
    for needs in ((False, False), (True, False), (True, True)):
        torch.library.opcheck(torch.ops.kldiv.scaled_gradient.default,
                              (gradient.clone().requires_grad_(needs[0]),
                               torch.rand(upstream).to(dtype).requires_grad_(needs[1])))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_loss_ops_pass_opcheck_in_every_layout_and_gradient(layout, gradient):
    x, t = _pair((6, 24), seed=2)
    a, b = _operands(x, t, layout, gradient)
    torch.library.opcheck(torch.ops.kldiv.kl_div.default, (a, b, REDUCTIONS["sum"], False))


DISTILL_CASES = [(dtype, reduction, reverse, temperature_squared)
                 for dtype in DTYPES for reduction in REDUCTIONS for reverse in (False, True)
                 for temperature_squared in ((False, True) if dtype == torch.float32 else (reverse,))]


@pytest.mark.parametrize("case", DISTILL_CASES, ids=lambda c: f"{str(c[0])[6:]}-{c[1]}-rev{int(c[2])}-t2{int(c[3])}")
def test_distill_ops_pass_opcheck(case):
    dtype, reduction, reverse, temperature_squared = case
    s, t = _logits((4, 40), dtype), _logits((4, 40), dtype, seed=2)
    row_on = torch.tensor([1, 0, 1, 1], dtype=torch.uint8)
    settings = (2.0, reduction, reverse, temperature_squared)
    for gradient in ("none", "input", "target", "both"):
        needs = GRADIENTS[gradient]
        a, b = s.clone().requires_grad_(needs[0]), t.clone().requires_grad_(needs[1])
        torch.library.opcheck(torch.ops.kldiv.distill_kl.default, (a, b, row_on, *settings))
    if reduction != "none":
        torch.library.opcheck(torch.ops.kldiv.distill_kl_forward_backward.default,
                              (s.clone().requires_grad_(), t, None, *settings))
    _, stats = torch.ops.kldiv.distill_kl(s, t, row_on, *settings)
    upstream = torch.rand(() if reduction != "none" else (4,)).to(dtype)
    torch.library.opcheck(torch.ops.kldiv.distill_kl_backward.default,
                          (upstream, s, t, row_on, stats, *settings, True, True))


def _op_calls():
    """(op, arguments) for every custom op, on each layout the loss takes."""
    calls = []
    for layout in LAYOUTS:
        x, t = _pair((6, 24), seed=3)
        a, b = LAYOUTS[layout](x), LAYOUTS[layout](t)
        for reduction in ("none", "sum"):
            code = REDUCTIONS[reduction]
            upstream = torch.rand(() if reduction == "sum" else a.shape)
            calls += [(torch.ops.kldiv.kl_div.default, (a, b, code, False)),
                      (torch.ops.kldiv.kl_div_forward_backward.default, (a, b, code, False)),
                      (torch.ops.kldiv.kl_div_backward.default, (upstream, a, b, code, False, True, True))]
    calls.append((torch.ops.kldiv.scaled_gradient.default, (torch.randn(6, 24), torch.tensor(0.5))))
    s, t = _logits((4, 40)).t().contiguous().t(), _logits((4, 40), seed=2)
    _, stats = torch.ops.kldiv.distill_kl(s, t, None, 1.0, "sum", False, False)
    calls += [(torch.ops.kldiv.distill_kl.default, (s, t, None, 1.0, "none", False, False)),
              (torch.ops.kldiv.distill_kl_forward_backward.default, (s, t, None, 1.0, "sum", False, False)),
              (torch.ops.kldiv.distill_kl_backward.default,
               (torch.tensor(1.0), s, t, None, stats, 1.0, "sum", False, False, True, True))]
    return calls


def _tensors(value):
    return [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("index", range(len(_op_calls())))
def test_fake_kernels_give_the_real_shapes_dtypes_and_strides(index):
    op, arguments = _op_calls()[index]
    real = _tensors(op(*arguments))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = _tensors(op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in arguments)))
    assert [(r.shape, r.dtype, r.stride(), r.device) for r in real] == \
           [(f.shape, f.dtype, f.stride(), f.device) for f in fake]


def _storage_range(tensor):
    start = tensor.untyped_storage().data_ptr()
    return start, start + tensor.untyped_storage().nbytes()


def _overlap(a, b):
    (a0, a1), (b0, b1) = _storage_range(a), _storage_range(b)
    return a0 < b1 and b0 < a1 and a1 > a0 and b1 > b0


@pytest.mark.parametrize("index", range(len(_op_calls())))
def test_no_output_aliases_an_input_or_another_output(index):
    op, arguments = _op_calls()[index]
    inputs = [a for a in arguments if isinstance(a, torch.Tensor)]
    outputs = [o for o in _tensors(op(*arguments)) if o.numel()]
    for i, output in enumerate(outputs):
        assert not any(_overlap(output, a) for a in inputs)
        assert not any(_overlap(output, other) for other in outputs[i + 1:])


def test_reused_gradient_memory_never_aliases_a_live_tensor():
    # 4 MiB gradients: the fused op's output comes from memory reused across steps.
    x, t = _pair((64, 16384), seed=4)
    live = []
    for step in range(6):
        loss, grad = torch.ops.kldiv.kl_div_forward_backward(x, t, REDUCTIONS["sum"], False)
        assert not any(_overlap(grad, other) for other in [x, t, loss] + live)
        if step % 2 == 0:
            live.append(grad)  # kept: later steps must not get its memory
        del loss, grad
    kldiv.torch.empty_cache()


def test_cpu_tensors_go_to_the_cpu_kernel_and_cuda_to_the_cuda_kernel():
    for op in ("kl_div", "kl_div_forward_backward", "kl_div_backward", "distill_kl", "distill_kl_forward_backward",
               "distill_kl_backward", "scaled_gradient"):
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"kldiv::{op}", key), (op, key)
    graphs = []
    compiled = torch.compile(lambda a, b: kldiv.torch.kl_div(a, b, reduction="sum"), fullgraph=True,
                             backend=_recording(graphs))
    x, t = _pair((3, 10))
    torch.testing.assert_close(compiled(x, t), F.kl_div(x, t, reduction="sum"))
    assert any("kldiv.kl_div" in graph for graph in graphs)


def _recording(graphs):
    """A torch.compile backend that keeps each forward and backward graph's text and runs them eagerly."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def keep(graph_module, example_inputs):
        graphs.append(str(graph_module.graph))
        return make_boxed_func(graph_module)

    return lambda gm, inputs: aot_module_simplified(gm, inputs, fw_compiler=keep, bw_compiler=keep)


@pytest.mark.parametrize("case", [
    (torch.randn(3, 4), torch.rand(3, 4, dtype=torch.float64)),  # mixed dtypes: PyTorch promotes
    (torch.randn(3, 4, dtype=torch.float16), torch.rand(3, 4)),
], ids=["float32-float64", "float16-float32"])
def test_what_kldiv_does_not_take_goes_to_pytorch_under_compile(case):
    x, t = case
    graphs = []
    compiled = torch.compile(lambda a, b: kldiv.torch.kl_div(a, b, reduction="batchmean"), fullgraph=True,
                             backend=_recording(graphs))
    torch.testing.assert_close(compiled(x, t), F.kl_div(x, t, reduction="batchmean"))
    assert graphs and not any("kldiv" in graph for graph in graphs)


# ---- Training steps under torch.compile -------------------------------------


def _steps(step, arguments, compile_options=None):
    """step(*arguments) eagerly and compiled (fullgraph=True, one graph): losses and gradients of the leaves."""
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, fullgraph=True, backend=counter, **(compile_options or {}))
    results = []
    for function in (step, compiled):
        leaves = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                  for a in arguments]
        loss = function(*leaves)
        loss.backward(torch.ones_like(loss))
        results.append([loss.detach()] + [a.grad for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad])
    assert counter.frame_count == 1
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("module", [False, True], ids=["kl_div", "KLDivLoss"])
def test_compiled_loss_step_gives_eager_kldivs_loss_and_gradients(dtype, reduction, module):
    x, t = _pair((8, 300), dtype, log_target=module)
    if module:
        criterion = kldiv.torch.KLDivLoss(reduction=reduction, log_target=True)
    else:
        def criterion(a, b):
            return kldiv.torch.kl_div(a, b, reduction=reduction)
    eager, compiled = _steps(criterion, (x.requires_grad_(), t))
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)


def test_compiled_loss_step_with_both_gradients():
    x, t = _pair((6, 70), log_target=True)
    eager, compiled = _steps(lambda a, b: kldiv.torch.kl_div(a, b, reduction="sum", log_target=True),
                             (x.requires_grad_(), t.requires_grad_()))
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)


class Student(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(32, 500)
        self.loss = kldiv.torch.KLDivLoss(reduction="batchmean", log_target=True)

    def forward(self, features, teacher_log_probs):
        return self.loss(self.linear(features).log_softmax(-1), teacher_log_probs)


def test_compiled_model_trains_as_eager():
    torch.manual_seed(0)
    model = Student()
    features, teacher = torch.randn(8, 32), torch.randn(8, 500).log_softmax(-1)
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for function in (model, compiled):
        model.zero_grad()
        loss = function(features, teacher)
        loss.backward()
        results.append((loss.detach(), model.linear.weight.grad.clone()))
    # Inductor fuses log_softmax, which rounds differently from eager: the loss's own ops are exact (above).
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_compiled_distill_step_gives_eager_kldivs_loss_and_gradients(dtype, reverse, reduction):
    s, t = _logits((6, 300), dtype), _logits((6, 300), dtype, seed=2)
    mask = torch.tensor([True, False, True, True, False, True])

    def step(student, teacher):
        return kldiv.torch.distill_kl(student, teacher, temperature=2.0, reduction=reduction, reverse=reverse,
                                      mask=mask, temperature_squared=True)

    eager, compiled = _steps(step, (s.requires_grad_(), t))
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)
    eager, compiled = _steps(step, (s.requires_grad_(), t.requires_grad_()))
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)


def test_dynamic_batch_sizes_compile_once():
    counter = CompileCounterWithBackend("inductor")
    loss_step = torch.compile(lambda a, b: kldiv.torch.kl_div(a, b, reduction="batchmean"), fullgraph=True,
                              dynamic=True, backend=counter)
    distill_counter = CompileCounterWithBackend("inductor")
    distill_step = torch.compile(lambda s, t: kldiv.torch.distill_kl(s, t, temperature=2.0), fullgraph=True,
                                 dynamic=True, backend=distill_counter)
    for rows in (3, 5, 8, 13):
        x, t = _pair((rows, 64), seed=rows)
        x.requires_grad_()
        loss = loss_step(x, t)
        loss.backward()
        torch.testing.assert_close(loss, kldiv.torch.kl_div(x.detach(), t, reduction="batchmean"))
        s = _logits((rows, 64), seed=rows).requires_grad_()
        distill_step(s, _logits((rows, 64), seed=rows + 1)).backward()
    assert counter.frame_count == 1 and distill_counter.frame_count == 1


def _warned(function, *arguments):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        function(*arguments)
    return any("'mean' divides the total loss" in str(w.message) for w in caught)


def test_mean_warning_under_compile_is_pytorchs():
    x, t = _pair((4, 9))
    theirs = torch.compile(lambda a, b: F.kl_div(a, b, reduction="mean"), fullgraph=True)
    ours = torch.compile(lambda a, b: kldiv.torch.kl_div(a, b, reduction="mean"), fullgraph=True)
    wide_x, wide_t = _pair((6, 9), seed=1)
    # Warned when traced (the first call, and a new shape), not on calls of the compiled graph.
    pattern = [(x, t), (x, t), (x, t), (wide_x, wide_t), (wide_x, wide_t)]
    theirs_pattern, ours_pattern = [_warned(theirs, *a) for a in pattern], [_warned(ours, *a) for a in pattern]
    assert ours_pattern == theirs_pattern
    assert ours_pattern[0] and not ours_pattern[1]


def test_export_of_a_module_with_kldivloss():
    class Distilled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 40)
            self.loss = kldiv.torch.KLDivLoss(reduction="batchmean")

        def forward(self, features, teacher_probs):
            return self.loss(self.linear(features).log_softmax(-1), teacher_probs)

    torch.manual_seed(0)
    model = Distilled()
    features, teacher = torch.randn(4, 16), torch.randn(4, 40).softmax(-1)
    exported = torch.export.export(model, (features, teacher))
    assert "kldiv.kl_div" in str(exported.graph)
    torch.testing.assert_close(exported.module()(features, teacher), model(features, teacher))
    other = torch.randn(4, 16)
    torch.testing.assert_close(exported.module()(other, teacher), model(other, teacher))
