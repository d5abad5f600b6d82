"""Every case of the PyTorch golden file through kldiv.torch: the loss, both
gradients through autograd, and input's gradient alone (the fused pass).

Values are compared as SPEC.md "Checking against the golden file" says: the
NaN / inf / signed-zero pattern exactly, finite values within a dtype tolerance
of PyTorch's value or of torch.nn.functional.kl_div in float64 on this machine,
scaled by the magnitude of the terms behind each value. PyTorch's value is the
file's (PyTorch 2.11), and again the installed torch's own F.kl_div, computed
live in the case's dtype (torch 1.13 lacks some 16-bit CPU kernels: those cases
it cannot compute are checked against the file only, and counted).
"""
import contextlib
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kldiv.torch

GOLDEN = Path(os.environ.get("KLDIV_GOLDEN", Path(__file__).resolve().parents[2] / "../shared/golden/torch_kldiv_cases.json"))
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {  # (relative, absolute): SPEC.md's, the absolute one two of the dtype's smallest denormals
    "float64": (1e-12, 2 * 2.0 ** -1074),
    "float32": (3e-6, 2 * 2.0 ** -149),
    "float16": (6e-3, 2 * 2.0 ** -24),
    "bfloat16": (4e-2, 2 * 2.0 ** -133),
}


def _cases():
    with open(GOLDEN) as f:
        return json.load(f)["cases"]


CASES = _cases()


def test_the_file_has_every_case():
    assert len(CASES) == 1152


def _values(strings, shape, dtype):
    values = torch.tensor([float.fromhex(s) for s in strings], dtype=torch.float64).reshape(shape)
    converted = values.to(dtype)
    assert torch.equal(converted.double().isnan(), values.isnan())
    return converted


def _finite(v):
    return torch.where(torch.isfinite(v), v, torch.zeros_like(v))


def _magnitudes(x, t, g, log_target):
    """Per broadcast element: the magnitude of the terms behind the loss and each gradient."""
    if log_target:
        e = t.exp()
        return (_finite(e * (t.abs() + x.abs())), _finite((g * e).abs()),
                _finite(g.abs() * e * (t.abs() + x.abs() + 1)))
    log_t = torch.where(t != 0, t.log().abs(), torch.zeros_like(t))
    return (_finite(torch.xlogy(t, t).abs() + (t * x).abs()), _finite((g * t).abs()),
            _finite(g.abs() * (log_t + 1 + x.abs())))


@contextlib.contextmanager
def _quiet():
    """PyTorch's 'mean' warning is expected here (test_api checks its text)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check(what, got, expected, reference, scale, dtype_name):
    rel, absolute = TOLERANCE[dtype_name]
    got, expected, reference, scale = (v.double().flatten().tolist() for v in (got, expected, reference, scale))
    assert len(got) == len(expected), what
    bad = []
    for i, (g, e, r, s) in enumerate(zip(got, expected, reference, scale)):
        if math.isnan(e):
            ok = math.isnan(g)
        elif math.isinf(e):
            ok = g == e
        elif e == 0 and r == 0:
            ok = g == 0 and math.copysign(1, g) == math.copysign(1, e)
        else:
            limit = rel * s + absolute
            ok = math.isfinite(g) and (abs(g - e) <= limit or abs(g - r) <= limit)
        if not ok:
            bad.append(f"{what}[{i}]: got {g!r}, torch {e!r}, float64 {r!r} (scale {s!r})")
    assert not bad, "\n".join(bad[:6])


def _live(x, t, g, reduction, log_target):
    """The installed torch's own loss and gradients in the case's dtype, or None where it has no kernel for them."""
    a, b = x.clone().requires_grad_(), t.clone().requires_grad_()
    try:
        with _quiet():
            loss = F.kl_div(a, b, reduction=reduction, log_target=log_target)
        grads = torch.autograd.grad(loss, (a, b), g)
    except RuntimeError:
        if not hasattr(torch, "compile"):  # torch 1.x: e.g. no float16 exp on the CPU
            return None
        raise
    return loss.detach(), grads[0], grads[1]


LIVE_MISSING = []


def case_id(case):
    return f"{case['id']}-{case['dtype']}-{case['reduction']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_golden_case(case):
    check_golden_case(case, "cpu")


def check_golden_case(case, device):
    """The case's loss and gradients through kldiv.torch on `device`, against PyTorch's."""
    dtype_name = case["dtype"]
    dtype = DTYPES[dtype_name]
    x = _values(case["input"], case["input_shape"], dtype)
    t = _values(case["target"], case["target_shape"], dtype)
    g = _values(case["grad_output"], case["output_shape"] if case["reduction"] == "none" else [], dtype)
    reduction, log_target = case["reduction"], case["log_target"]
    expected = {name: _values(case[name], shape, dtype) for name, shape in
                (("output", case["output_shape"]), ("grad_input", case["input_shape"]),
                 ("grad_target", case["target_shape"]))}

    # float64 reference: PyTorch's own kl_div on the same values.
    x64, t64 = x.double().requires_grad_(), t.double().requires_grad_()
    with _quiet():
        ref = F.kl_div(x64, t64, reduction=reduction, log_target=log_target)
    ref_grads = torch.autograd.grad(ref, (x64, t64), g.double())

    shape = torch.broadcast_shapes(x.shape, t.shape)
    divisor = {"none": 1, "sum": 1, "mean": max(shape.numel(), 1),
               "batchmean": x.shape[0] if x.dim() else 1}[reduction]
    g_each = (g.double() / divisor).expand(shape) if reduction != "none" else g.double()
    m_loss, m_input, m_target = _magnitudes(x.double().expand(shape), t.double().expand(shape), g_each, log_target)
    scale_loss = m_loss if reduction == "none" else m_loss.sum() / divisor
    scale_input, scale_target = m_input.sum_to_size(x.shape), m_target.sum_to_size(t.shape)

    with _quiet():
        xd, td, gd = x.to(device), t.to(device), g.to(device)
        # Both gradients: the loss kernel, then the backward kernel.
        xb, tb = xd.clone().requires_grad_(), td.clone().requires_grad_()
        loss = kldiv.torch.kl_div(xb, tb, reduction=reduction, log_target=log_target)
        grad_input, grad_target = torch.autograd.grad(loss, (xb, tb), gd)
        # input's gradient alone: the fused pass.
        xf = xd.clone().requires_grad_()
        fused_loss = kldiv.torch.kl_div(xf, td, reduction=reduction, log_target=log_target)
        (fused_grad,) = torch.autograd.grad(fused_loss, (xf,), gd)
    assert loss.device == xd.device and grad_input.device == xd.device
    loss, fused_loss, grad_input, grad_target, fused_grad = (
        v.cpu() for v in (loss, fused_loss, grad_input, grad_target, fused_grad))

    for what, got in (("output", loss), ("fused output", fused_loss)):
        assert got.dtype == dtype and got.shape == expected["output"].shape
        _check(what, got.detach(), expected["output"], ref.detach(), scale_loss, dtype_name)
    for what, got in (("grad_input", grad_input), ("fused grad_input", fused_grad)):
        assert got.dtype == dtype and got.shape == x.shape
        _check(what, got, expected["grad_input"], ref_grads[0], scale_input, dtype_name)
    assert grad_target.dtype == dtype and grad_target.shape == t.shape
    _check("grad_target", grad_target, expected["grad_target"], ref_grads[1], scale_target, dtype_name)

    live = _live(x, t, g, reduction, log_target)
    if live is None:
        LIVE_MISSING.append(case_id(case))
        return
    for what, got, want, reference, scale in (("live output", loss, live[0], ref, scale_loss),
                                               ("live grad_input", grad_input, live[1], ref_grads[0], scale_input),
                                               ("live grad_target", grad_target, live[2], ref_grads[1], scale_target)):
        assert want.dtype == got.dtype and want.shape == got.shape
        _check(what, got.detach(), want, reference.detach(), scale, dtype_name)


def test_cases_the_installed_torch_computes():
    """Run last: how many cases were checked against the installed torch live (all of them on torch 2.x)."""
    if hasattr(torch, "compile"):
        assert LIVE_MISSING == []
    print(f"\n{len(CASES) - len(LIVE_MISSING)} of {len(CASES)} cases checked against torch {torch.__version__} "
          f"live; without a kernel in this torch: {len(LIVE_MISSING)}")
