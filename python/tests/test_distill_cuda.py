"""distill_kl on CUDA tensors through kldiv's CUDA kernels (KLDIV_DISTILL_CUDA=1):
the same loss and gradients as the CPU kernels, every dtype, both directions,
every reduction, masks, views, PyTorch's current stream. Skipped without a GPU."""
import pytest
import torch

import kldiv
import kldiv.torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to this torch", allow_module_level=True)
if not kldiv.cuda_in_build():
    pytest.skip("this kldiv library was built without CUDA kernels", allow_module_level=True)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Gradient and loss tolerances against the CPU kernels (the same algorithm in
# another order of operations only where the compilers differ).
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def _cuda_kernels(monkeypatch):
    monkeypatch.setenv("KLDIV_DISTILL_CUDA", "1")


def _logits(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=generator)).to(dtype)


def _run(device, s, t, need_teacher, **options):
    a = s.to(device).requires_grad_()
    b = t.to(device).requires_grad_(need_teacher)
    mask = options.pop("mask", None)
    loss = kldiv.torch.distill_kl(a, b, mask=None if mask is None else mask.to(device), **options)
    loss.backward(torch.ones_like(loss))
    return [loss.detach().cpu(), a.grad.cpu()] + ([b.grad.cpu()] if need_teacher else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("need_teacher", [False, True])
def test_cuda_kernels_equal_cpu_kernels(dtype, reduction, reverse, need_teacher):
    s, t = _logits((37, 2500), dtype, 1), _logits((37, 2500), dtype, 2)
    mask = torch.arange(37) % 5 != 0
    options = dict(temperature=2.0, reduction=reduction, reverse=reverse, mask=mask, temperature_squared=True)
    cuda = _run("cuda", s, t, need_teacher, **dict(options))
    cpu = _run("cpu", s, t, need_teacher, **dict(options))
    tol = TOLERANCE[dtype]
    for got, want in zip(cuda, cpu):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("vocab", [32, 33, 2047, 2048, 2049, 32000])
def test_cuda_vocabularies_and_views(vocab):
    s, t = _logits((6, vocab), torch.float32, 3), _logits((6, vocab), torch.float32, 4)
    cpu = kldiv.torch.distill_kl(s, t, reduction="none")
    cuda = kldiv.torch.distill_kl(s.cuda(), t.cuda(), reduction="none")
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=2e-5, atol=2e-5)
    # Every other row of a wider tensor: a row stride of twice the vocabulary.
    wide_s, wide_t = torch.cat([s, s], 0).cuda()[::2], torch.cat([t, t], 0).cuda()[::2]
    strided = kldiv.torch.distill_kl(wide_s, wide_t, reduction="none")
    torch.testing.assert_close(strided.cpu(), kldiv.torch.distill_kl(s[[0, 2, 4, 0, 2, 4]], t[[0, 2, 4, 0, 2, 4]],
                                                                      reduction="none"), rtol=2e-5, atol=2e-5)


def test_cuda_edge_rows():
    s = _logits((4, 64), torch.float32, 5)
    t = _logits((4, 64), torch.float32, 6)
    t[0, 3] = -float("inf")  # a suppressed token adds 0
    s[1, 7] = float("nan")   # NaN in a row gives NaN
    t[2] = -float("inf")     # a row of -inf is NaN
    cuda = kldiv.torch.distill_kl(s.cuda(), t.cuda(), reduction="none").cpu()
    cpu = kldiv.torch.distill_kl(s, t, reduction="none")
    torch.testing.assert_close(cuda, cpu, rtol=2e-5, atol=2e-5, equal_nan=True)
    assert torch.isfinite(cuda[0]) and torch.isnan(cuda[1]) and torch.isnan(cuda[2])


def test_cuda_runs_on_the_current_stream():
    s, t = _logits((64, 4096), torch.float32, 7).cuda(), _logits((64, 4096), torch.float32, 8).cuda()
    want = kldiv.torch.distill_kl(s, t)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = kldiv.torch.distill_kl(s, t)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, want)
