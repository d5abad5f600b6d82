"""kldiv.torch.distill_kl against the composite in float64: values, gradients,
edge values, masks, layouts, errors, and the C ABI's in-place gradient."""
import ctypes
import itertools
import math
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch as kt

_LEVEL = os.environ.get("KLDIV_CPU_TARGET")
_RUNS = kldiv.cpu_target()
if _LEVEL and not (_LEVEL in _RUNS or (_LEVEL == "sse41" and "avx" not in _RUNS)):
    pytest.skip(f"[SKIP] KLDIV_CPU_TARGET={_LEVEL}, but this CPU runs {_RUNS}", allow_module_level=True)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
# Relative rounding of a result stored in the dtype.
OUT_RTOL = {torch.float64: 1e-15, torch.float32: 2 ** -24, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}
# The spacing of the dtype's subnormals (small gradients of float16 are subnormal).
SUBNORMAL_STEP = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2 ** -24, torch.bfloat16: 0.0}
# Arithmetic: float64 for float64, else float32 (relative to the sum of the terms' magnitudes).
COMPUTE_RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}


def reference_rows(s, t, T, reverse):
    """Row losses and the terms' magnitudes, float64, with 0 where the weight is 0."""
    log_q = torch.log_softmax(s.double() / T, -1)
    log_p = torch.log_softmax(t.double() / T, -1)
    log_w, log_other = (log_q, log_p) if reverse else (log_p, log_q)
    w = log_w.exp()
    term = w * torch.where(w == 0, torch.zeros_like(w), log_w - log_other)
    return term.sum(-1), term.abs().sum(-1)


def reference(s, t, T=1.0, reduction="batchmean", reverse=False, mask=None, temperature_squared=False):
    row, magnitude = reference_rows(s, t, T, reverse)
    if mask is not None:
        row = torch.where(mask, row, torch.zeros_like(row))
        magnitude = torch.where(mask, magnitude, torch.zeros_like(magnitude))
        rows = int(mask.sum())
    else:
        rows = row.numel()
    factor = T * T if temperature_squared else 1.0
    row, magnitude = row * factor, magnitude * factor
    if reduction == "none":
        return row, magnitude
    divisor = {"sum": 1, "batchmean": rows, "mean": rows * s.shape[-1]}[reduction]
    return row.sum() / divisor, magnitude.sum() / divisor


def assert_loss_close(got, s, t, dtype, **kw):
    expected, magnitude = reference(s.to(dtype), t.to(dtype), **kw)
    got = got.double()
    assert got.shape == expected.shape
    tolerance = OUT_RTOL[dtype] * expected.abs() + COMPUTE_RTOL[dtype] * magnitude + 1e-300
    assert torch.all((got - expected).abs() <= tolerance), (got, expected)


def logits(shape, dtype, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ---- values ---------------------------------------------------------------


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 3.0])
def test_equals_the_composite(T):
    s, t = logits((6, 300), torch.float64, seed=1), logits((6, 300), torch.float64, seed=2)
    composite = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    assert kt.distill_kl(s, t, T).item() == pytest.approx(composite.item(), rel=1e-13)


@pytest.mark.parametrize("dtype,reverse,T,reduction",
                         list(itertools.product(DTYPES, [False, True], [0.5, 1.0, 4.0], REDUCTIONS)))
def test_values(dtype, reverse, T, reduction):
    s, t = logits((3, 5, 700), dtype, seed=3), logits((3, 5, 700), dtype, seed=4)
    mask = torch.rand((3, 5), generator=torch.Generator().manual_seed(5)) > 0.3
    for m in (None, mask):
        got = kt.distill_kl(s, t, T, reduction, reverse, m)
        assert got.dtype == dtype
        assert_loss_close(got, s, t, dtype, T=T, reduction=reduction, reverse=reverse, mask=m)


@pytest.mark.parametrize("vocab", [1, 2, 31, 32, 33, 2047, 2048, 2049, 4113, 32000, 262144])
def test_vocabulary_sizes(vocab):
    rows = 2 if vocab > 10000 else 5
    for dtype in (torch.float32, torch.bfloat16):
        s, t = logits((rows, vocab), dtype, seed=vocab), logits((rows, vocab), dtype, seed=vocab + 1)
        for reverse in (False, True):
            got = kt.distill_kl(s, t, 1.0, "none", reverse)
            assert_loss_close(got, s, t, dtype, reduction="none", reverse=reverse)


def test_temperature_squared_and_mask():
    s, t = logits((8, 100), torch.float64, seed=6), logits((8, 100), torch.float64, seed=7)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    for reduction in ("sum", "batchmean", "mean"):
        whole = kt.distill_kl(s[mask], t[mask], 2.0, reduction)
        assert kt.distill_kl(s, t, 2.0, reduction, mask=mask).item() == pytest.approx(whole.item(), rel=1e-14)
        squared = kt.distill_kl(s, t, 2.0, reduction, mask=mask, temperature_squared=True)
        assert squared.item() == pytest.approx(4 * whole.item(), rel=1e-14)
    rows = kt.distill_kl(s, t, 2.0, "none", mask=mask)
    assert torch.all(rows[~mask] == 0) and torch.all(rows[mask] > 0)


def test_layouts():
    """Views of any strides give the contiguous result, bit for bit."""
    base_s, base_t = logits((4, 6, 300), torch.float32, seed=8), logits((4, 6, 300), torch.float32, seed=9)
    views = [
        lambda x: x.transpose(0, 1),             # leading dimensions that do not view as one
        lambda x: x[:, :, ::3],                  # strided vocabulary
        lambda x: x[1:3, 2:],                    # sliced rows
        lambda x: x.transpose(1, 2).contiguous().transpose(1, 2),  # vocabulary not innermost
    ]
    for view in views:
        s, t = view(base_s), view(base_t)
        for reduction in ("none", "batchmean"):
            got = kt.distill_kl(s, t, 1.5, reduction)
            assert torch.equal(got, kt.distill_kl(s.contiguous(), t.contiguous(), 1.5, reduction))


def test_deterministic_across_threads():
    s, t = logits((64, 5000), torch.float32, seed=10), logits((64, 5000), torch.float32, seed=11)
    results = []
    for threads in (1, 2, 0):
        kldiv.set_num_threads(threads)
        results.append((kt.distill_kl(s, t, 2.0, "none"), kt.distill_kl(s, t, 2.0, "sum")))
    kldiv.set_num_threads(0)
    for rows, total in results[1:]:
        assert torch.equal(rows, results[0][0]) and torch.equal(total, results[0][1])


def test_threads_at_once():
    s, t = logits((32, 3000), torch.float32, seed=20), logits((32, 3000), torch.float32, seed=21)
    want = kt.distill_kl(s, t, 2.0, "none")
    results = [None] * 8

    def run(k):
        x = s.clone().requires_grad_()
        loss = kt.distill_kl(x, t, 2.0, "none")
        loss.sum().backward()
        results[k] = (loss.detach(), x.grad)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for loss, grad in results:
        assert torch.equal(loss, want) and torch.equal(grad, results[0][1])


_LEVEL_SCRIPT = """
import sys, torch, kldiv, kldiv.torch as kt
g = torch.Generator().manual_seed(3)
out = {"level": kldiv.cpu_target()}
for dt in (torch.float32, torch.bfloat16, torch.float64):
    s = (torch.randn(16, 5003, generator=g) * 3).to(dt)
    t = (torch.randn(16, 5003, generator=g) * 3).to(dt)
    for reverse in (False, True):
        x = s.clone().requires_grad_()
        y = t.clone().requires_grad_()
        loss = kt.distill_kl(x, y, 2.0, "none", reverse)
        loss.sum().backward()
        out[f"{dt} {reverse}"] = (loss.detach(), x.grad, y.grad)
torch.save(out, sys.argv[1])
"""


def test_same_bits_at_avx2_and_avx512(tmp_path):
    """AVX2 and AVX-512 sum in one order with the same fused multiply-adds: the same bits."""
    if "avx512" not in kldiv.cpu_target():
        pytest.skip("this CPU has no AVX-512")
    results = {}
    for level in ("avx2", "avx512"):
        path = tmp_path / f"{level}.pt"
        subprocess.run([sys.executable, "-c", _LEVEL_SCRIPT, str(path)], check=True,
                       env={**os.environ, "KLDIV_CPU_TARGET": level})
        results[level] = torch.load(path)
    assert "avx2" in results["avx2"].pop("level") and "avx512" in results["avx512"].pop("level")
    for key, tensors in results["avx2"].items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, results["avx512"][key])), key


# ---- edge values ----------------------------------------------------------


def test_zero_teacher_probability_adds_zero():
    s = torch.tensor([[1.0, 2.0, 3.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[0.5, -math.inf, 1.0, -math.inf]], dtype=torch.float64)
    composite = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    assert math.isnan(composite.item())  # what the composite gives
    got = kt.distill_kl(s, t, 1.0, "sum")
    expected, _ = reference(s, t, reduction="sum")
    assert math.isfinite(got.item()) and got.item() == pytest.approx(expected.item(), rel=1e-14)
    # Also when the student is -inf there too, and in reverse KL where q == 0.
    s2 = s.clone()
    s2[0, 1] = -math.inf
    expected, _ = reference(s2, t, reduction="sum")
    assert kt.distill_kl(s2, t, 1.0, "sum").item() == pytest.approx(expected.item(), rel=1e-14)
    expected, _ = reference(t, s2, reduction="sum", reverse=True)
    assert kt.distill_kl(t, s2, 1.0, "sum", reverse=True).item() == pytest.approx(expected.item(), rel=1e-14)
    assert math.isfinite(expected.item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_rows(dtype):
    inf, nan = math.inf, math.nan
    s = torch.tensor([
        [1.0, 2.0, 3.0, 4.0],        # ordinary
        [1.0, -inf, 3.0, 4.0],       # student -inf where p > 0: +inf
        [1.0, nan, 3.0, 4.0],        # NaN: the row is NaN
        [-inf, -inf, -inf, -inf],    # all -inf: NaN
        [1e4, -1e4, 1e4, 0.0],       # huge logits
        [2.0, 2.0, 2.0, 2.0],        # ties
        [1.0, inf, 3.0, 4.0],        # +inf: NaN, as log_softmax gives
    ], dtype=torch.float64)
    t = torch.tensor([
        [0.5, 1.0, -1.0, 2.0],
        [0.5, 1.0, -1.0, 2.0],
        [0.5, 1.0, -1.0, 2.0],
        [0.5, 1.0, -1.0, 2.0],
        [-1e4, 1e4, 1e4, 5.0],
        [7.0, 7.0, 7.0, 7.0],
        [0.5, 1.0, -1.0, 2.0],
    ], dtype=torch.float64)
    rows = kt.distill_kl(s.to(dtype), t.to(dtype), 1.0, "none").double()
    assert math.isfinite(rows[0]) and rows[1] == inf
    assert math.isnan(rows[2]) and math.isnan(rows[3]) and math.isnan(rows[6])
    assert rows[5] == 0
    expected, _ = reference(s.to(dtype), t.to(dtype), reduction="none")
    assert rows[4].item() == pytest.approx(expected[4].item(), rel=OUT_RTOL[dtype] * 2 + 1e-6)
    # The teacher's all -inf row is NaN too, and NaN in the teacher.
    assert math.isnan(kt.distill_kl(t[3:4].to(dtype), s[3:4].to(dtype), 1.0, "sum").item())
    assert math.isnan(kt.distill_kl(t[2:3].to(dtype), s[2:3].to(dtype), 1.0, "sum").item())


def test_edge_gradients():
    s = torch.tensor([[1.0, math.nan, 3.0], [1.0, 2.0, 3.0], [1.0, -math.inf, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, -math.inf], [0.0, 1.0, 2.0]], dtype=torch.float64)
    for fused in (True, False):
        ss = s.clone().requires_grad_()
        tt = t.clone().requires_grad_(not fused)
        kt.distill_kl(ss, tt, 1.0, "sum").backward()
        assert torch.all(torch.isnan(ss.grad[0]))
        assert torch.all(torch.isfinite(ss.grad[1:]))
        # The student's -inf token: q = 0, gradient -p.
        p = torch.softmax(t[2], -1)
        assert ss.grad[2, 1].item() == pytest.approx(-p[1].item(), rel=1e-14)
    # A masked row adds nothing and gets gradient 0, NaN or not.
    ss = s.clone().requires_grad_()
    loss = kt.distill_kl(ss, t, 1.0, "batchmean", mask=torch.tensor([False, True, False]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.all(ss.grad[0] == 0) and torch.all(ss.grad[2] == 0)
    # Row 2 (student -inf where p > 0) gives +inf, with a finite gradient.
    ss = s.clone().requires_grad_()
    loss = kt.distill_kl(ss, t, 1.0, "batchmean", mask=torch.tensor([False, True, True]))
    loss.backward()
    assert loss.item() == math.inf and torch.all(ss.grad[0] == 0) and torch.all(torch.isfinite(ss.grad[1:]))


@pytest.mark.parametrize("shape", [(0, 7), (3, 0), (0, 0), (2, 0, 5), (7,), (4, 1)])
def test_empty_and_vocabulary_one(shape):
    s, t = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    for reduction in REDUCTIONS:
        got = kt.distill_kl(s, t, 1.0, reduction)
        composite = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        if reduction != "none":
            rows = math.prod(shape[:-1])
            composite = composite.sum() / {"sum": 1, "batchmean": rows, "mean": rows * shape[-1]}[reduction]
        assert got.shape == composite.shape
        assert torch.allclose(got, composite, equal_nan=True, atol=1e-15)
        if math.prod(shape):
            ss = s.clone().requires_grad_()
            kt.distill_kl(ss, t, 1.0, "sum").backward()
            assert ss.grad.shape == s.shape


# ---- gradients --------------------------------------------------------------


@pytest.mark.parametrize("reverse,reduction", list(itertools.product([False, True], REDUCTIONS)))
def test_gradcheck(reverse, reduction):
    mask = torch.tensor([[True, False, True], [True, True, True]])
    for need_student, need_teacher in ((True, False), (False, True), (True, True)):
        s = logits((2, 3, 9), torch.float64, 2.0, seed=12).requires_grad_(need_student)
        t = logits((2, 3, 9), torch.float64, 2.0, seed=13).requires_grad_(need_teacher)
        assert torch.autograd.gradcheck(
            lambda a, b: kt.distill_kl(a, b, 1.7, reduction, reverse, mask, temperature_squared=True), (s, t))


@pytest.mark.parametrize("dtype,reverse", list(itertools.product(DTYPES, [False, True])))
def test_gradient_values(dtype, reverse):
    s0, t0 = logits((6, 3000), dtype, seed=14), logits((6, 3000), dtype, seed=15)
    mask = torch.tensor([True, True, False, True, True, True])
    for reduction in ("batchmean", "none"):
        rs = s0.to(torch.float64, copy=True).requires_grad_()
        rt = t0.to(torch.float64, copy=True).requires_grad_()
        expected, _ = reference(rs, rt, 2.0, reduction, reverse, mask)
        upstream = torch.linspace(0.5, 2.0, expected.numel(), dtype=torch.float64).reshape(expected.shape)
        want = torch.autograd.grad(expected, (rs, rt), upstream)
        for need_teacher in (False, True):  # the fused pass, then the backward pass
            s = s0.clone().requires_grad_()
            t = t0.clone().requires_grad_(need_teacher)
            kt.distill_kl(s, t, 2.0, reduction, reverse, mask).backward(upstream.to(dtype))
            for got, ref in ((s.grad, want[0]), (t.grad if need_teacher else None, want[1])):
                if got is None:
                    continue
                assert got.dtype == dtype
                tolerance = (OUT_RTOL[dtype] * 2 * ref.abs() + COMPUTE_RTOL[dtype] * 4 * ref.abs().max()
                             + SUBNORMAL_STEP[dtype])
                assert torch.all((got.double() - ref).abs() <= tolerance)


def test_fused_and_backward_agree():
    s0, t0 = logits((5, 1000), torch.float32, seed=16), logits((5, 1000), torch.float32, seed=17)
    grads = []
    for need_teacher in (False, True):
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_(need_teacher)
        kt.distill_kl(s, t, 2.0, "sum").backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-9)


# ---- errors and the C ABI ---------------------------------------------------


def test_errors():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        kt.distill_kl(s, t, reduction="avg")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            kt.distill_kl(s, t, temperature=bad)
    with pytest.raises(RuntimeError, match="one shape"):
        kt.distill_kl(s, torch.randn(3, 6))
    with pytest.raises(RuntimeError, match="leading shape"):
        kt.distill_kl(s, t, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        kt.distill_kl(s, t, mask=torch.ones(3))
    with pytest.raises(RuntimeError, match="at least one dimension"):
        kt.distill_kl(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(NotImplementedError, match="process_group"):
        kt.distill_kl(s.to(torch.int32), t.to(torch.int32), process_group=object())


def test_fallback_agrees():
    # Tensors the kernels do not take (here: mixed dtypes) run the same definition on PyTorch's operators.
    s, t = logits((4, 50), torch.float64, seed=22), logits((4, 50), torch.float64, seed=23)
    t[0, :10] = -math.inf
    for reverse in (False, True):
        got = kt.distill_kl(s, t.to(torch.float32), 2.0, "none", reverse)
        expected, _ = reference(s, t.to(torch.float32), 2.0, "none", reverse)
        assert torch.allclose(got, expected, rtol=1e-6)


# The C ABI as kldiv.h declares it, for the tests that call it directly.
class _CTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int32),
                ("sizes", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("device", ctypes.c_int)]


class _CDistillOptions(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_double), ("reduction", ctypes.c_int), ("reverse", ctypes.c_int32),
                ("temperature_squared", ctypes.c_int32), ("row_mask", ctypes.c_void_p)]


_C_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _c_view(tensor):
    rank = tensor.dim()
    view = _CTensor(tensor.data_ptr(), _C_DTYPES[tensor.dtype], rank, (ctypes.c_int64 * rank)(*tensor.shape),
                    (ctypes.c_int64 * rank)(*tensor.stride()), 0)
    return ctypes.byref(view)


def _c_library():
    lib = ctypes.CDLL(kldiv.library_path())
    lib.kldiv_last_error.restype = ctypes.c_char_p
    return lib


def test_c_abi_in_place_gradient_and_errors():
    s, t = logits((6, 777), torch.float32, seed=18), logits((6, 777), torch.float32, seed=19)
    options = _CDistillOptions(2.0, 3, 0, 0, None)  # batchmean
    out, grad = torch.empty(()), torch.empty_like(s)
    lib = _c_library()
    assert lib.kldiv_distill_forward_backward(_c_view(s), _c_view(t), ctypes.byref(options), _c_view(out),
                                              _c_view(grad), None) == 0
    in_place, out2 = s.clone(), torch.empty(())
    assert lib.kldiv_distill_forward_backward(_c_view(in_place), _c_view(t), ctypes.byref(options), _c_view(out2),
                                              _c_view(in_place), None) == 0
    assert torch.equal(in_place, grad) and torch.equal(out, out2)
    # A gradient that partly overlaps the logits, or the teacher, is refused and nothing is written.
    storage = torch.full((7, 777), 5.0)
    student = storage[:6]
    student.copy_(s)
    before = storage.clone()
    status = lib.kldiv_distill_forward_backward(_c_view(student), _c_view(t), ctypes.byref(options), _c_view(out),
                                                _c_view(storage[1:]), None)
    assert status == 4 and "overlaps" in lib.kldiv_last_error().decode()
    assert torch.equal(storage, before)
    assert lib.kldiv_distill_forward_backward(_c_view(s), _c_view(t), ctypes.byref(options), _c_view(out),
                                              _c_view(t), None) == 4
    # Temperature 0 in a zero-initialised struct means 1; below 0 is an error.
    options.temperature = 0.0
    assert lib.kldiv_distill_forward(_c_view(s), _c_view(t), ctypes.byref(options), _c_view(out), None) == 0
    assert out.item() == pytest.approx(kt.distill_kl(s, t, 1.0).item(), rel=1e-6)
    options.temperature = -2.0
    assert lib.kldiv_distill_forward(_c_view(s), _c_view(t), ctypes.byref(options), _c_view(out), None) == 1
    assert "temperature" in lib.kldiv_last_error().decode()
    # Mixed dtypes and a wrong output shape.
    options.temperature = 1.0
    assert lib.kldiv_distill_forward(_c_view(s), _c_view(t.double()), ctypes.byref(options), _c_view(out), None) == 3
    assert lib.kldiv_distill_forward(_c_view(s), _c_view(t), ctypes.byref(options), _c_view(torch.empty(6)),
                                     None) == 2
