"""kldiv.torch on CUDA tensors: the golden file, gradients, PyTorch's current
stream, no host synchronisation, CUDA graph capture. Skipped without a GPU."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch
from test_golden import CASES, case_id, check_golden_case

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to this torch", allow_module_level=True)
if not kldiv.cuda_in_build():
    pytest.skip("this kldiv library was built without CUDA kernels", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")
REDUCTIONS = ["none", "mean", "sum", "batchmean"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_case_on_cuda(case):
    check_golden_case(case, "cuda")


def _pair(shape, dtype=torch.float32, device="cuda"):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).log_softmax(-1)
    t = torch.randn(shape, generator=generator).softmax(-1)
    return x.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_equals_cpu(dtype, reduction):
    x, t = _pair((33, 1000), dtype)
    results = []
    for device in ("cuda", "cpu"):
        a, b = x.to(device).requires_grad_(), t.to(device).requires_grad_()
        loss = kldiv.torch.kl_div(a, b.t().contiguous().t(), reduction=reduction)
        loss.backward(torch.ones_like(loss))
        results.append([v.detach().cpu() for v in (loss, a.grad, b.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-2 if dtype.itemsize == 2 else 1e-5, atol=1e-6)


def test_work_goes_on_the_current_stream():
    x, t = _pair((256, 32768))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Written on the side stream just before the call: only a kernel on
        # that stream is ordered after the write.
        y = x * 1.0
        loss = kldiv.torch.kl_div(y, t, reduction="sum")
    side.synchronize()
    torch.testing.assert_close(loss.cpu(), F.kl_div(x, t, reduction="sum").cpu())


def test_no_host_synchronisation():
    x, t = _pair((64, 4096))
    x.requires_grad_()
    kldiv.torch.kl_div(x, t, reduction="batchmean").backward()  # warm up: loads the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = kldiv.torch.kl_div(x, t, reduction="batchmean")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture_and_replay():
    x, t = _pair((64, 4096))
    static_x = x.clone()
    kldiv.torch.kl_div(static_x, t, reduction="sum")  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = kldiv.torch.kl_div(static_x, t, reduction="sum")
    static_x.copy_(x * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_loss.cpu(), F.kl_div(x * 0.5, t, reduction="sum").cpu())


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.compile path needs torch 2.4 or later")
def test_torch_compile_fullgraph_on_cuda():
    x, t = _pair((16, 3000))

    def step(a, b):
        return kldiv.torch.kl_div(a.log_softmax(-1), b, reduction="batchmean")

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for function in (step, compiled):
        a = x.clone().requires_grad_()
        loss = function(a, t)
        loss.backward()
        results.append((loss.detach(), a.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
