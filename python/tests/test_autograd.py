"""Gradients of kldiv.torch.kl_div: gradcheck in float64, the fused pass,
repeated backward, and the error of double backward."""
import pytest
import torch
import torch.nn.functional as F

import kldiv.torch

REDUCTIONS = ["none", "mean", "sum", "batchmean"]

# PyTorch's 'mean' warning is expected here (test_api checks it).
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")


def _operands(input_shape, target_shape, log_target, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=generator, dtype=torch.float64)
    t = torch.rand(target_shape, generator=generator, dtype=torch.float64) + 0.1
    return x, (t.log() if log_target else t)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shapes", [((3, 5), (3, 5)), ((3, 5), (5,)), ((1, 5), (3, 5)), ((), ())],
                         ids=["same", "target-broadcast", "input-broadcast", "0-dim"])
@pytest.mark.parametrize("wrt", ["both", "input", "target"])
def test_gradcheck(reduction, log_target, shapes, wrt):
    x, t = _operands(*shapes, log_target)
    x.requires_grad_(wrt in ("both", "input"))
    t.requires_grad_(wrt in ("both", "target"))
    assert torch.autograd.gradcheck(
        lambda a, b: kldiv.torch.kl_div(a, b, reduction=reduction, log_target=log_target), (x, t))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
# 16-bit gradients are checked against the golden file: PyTorch rounds them at
# each step, kldiv once, so they differ from PyTorch's by more than a tolerance.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_equal_pytorchs(reduction, log_target, dtype):
    x, t = _operands((4, 33), (4, 33), log_target, seed=1)
    x, t = x.to(dtype), t.to(dtype)
    upstream = torch.rand((4, 33) if reduction == "none" else (), dtype=torch.float64).to(dtype)
    for needs in ((True, False), (False, True), (True, True)):
        got, want = [], []
        for function, grads in ((kldiv.torch.kl_div, got), (F.kl_div, want)):
            a, b = x.clone().requires_grad_(needs[0]), t.clone().requires_grad_(needs[1])
            loss = function(a, b, reduction=reduction, log_target=log_target)
            loss.backward(upstream)
            grads += [a.grad, b.grad]
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if g is not None:
                torch.testing.assert_close(g, w)


def test_training_forward_runs_the_fused_pass_and_keeps_only_the_gradient():
    x, t = _operands((4, 8), (4, 8), False)
    x.requires_grad_()
    loss = kldiv.torch.kl_div(x, t, reduction="batchmean")
    saved = loss.grad_fn.saved_tensors
    # One tensor the size of input: its gradient for an upstream gradient of 1.
    assert len(saved) == 1 and saved[0].shape == x.shape
    torch.testing.assert_close(saved[0], -t / 4)
    # Not for 'none' with an input that broadcasting made larger (its gradient is a sum).
    wide = kldiv.torch.kl_div(x[:1], t, reduction="none")
    assert len(wide.grad_fn.saved_tensors) == 2


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_retain_graph_and_repeated_backward(reduction):
    x, t = _operands((3, 7), (3, 7), False)
    x.requires_grad_()
    loss = kldiv.torch.kl_div(x, t, reduction=reduction).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    torch.testing.assert_close(first, -t)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("wrt", ["both", "input", "target"])
def test_gradgradcheck(reduction, log_target, wrt):
    x, t = _operands((3, 5), (3, 5), log_target)
    x.requires_grad_(wrt in ("both", "input"))
    t.requires_grad_(wrt in ("both", "target"))
    assert torch.autograd.gradgradcheck(
        lambda a, b: kldiv.torch.kl_div(a, b, reduction=reduction, log_target=log_target), (x, t))


def test_double_backward_equals_pytorchs():
    second = []
    for function in (kldiv.torch.kl_div, F.kl_div):
        x, t = _operands((3, 7), (3, 7), False)
        x.requires_grad_(), t.requires_grad_()
        (grad,) = torch.autograd.grad(function(x, t, reduction="batchmean"), x, create_graph=True)
        (grad * grad).sum().backward()
        second.append(t.grad)
    torch.testing.assert_close(*second)


def test_no_grad_mode_builds_no_graph():
    x, t = _operands((3, 7), (3, 7), False)
    x.requires_grad_()
    with torch.no_grad():
        loss = kldiv.torch.kl_div(x, t, reduction="sum")
    assert loss.grad_fn is None and not loss.requires_grad


def test_training_steps_reuse_the_gradients_memory_only_once_it_is_free():
    x, t = _operands((64, 8192), (64, 8192), False)  # 4 MiB gradients in float64
    x.requires_grad_()
    kldiv.torch.kl_div(x, t, reduction="sum").backward()
    first = x.grad.data_ptr()
    x.grad = None  # as optimiser.zero_grad() does: the memory is free
    kldiv.torch.kl_div(x, t, reduction="sum").backward()
    assert x.grad.data_ptr() == first
    kept = x.grad  # still in use: the next step must not write it
    x.grad = None
    kldiv.torch.kl_div(x, t * 2, reduction="sum").backward()
    assert x.grad.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept, -t)
    torch.testing.assert_close(x.grad, -2 * t)
    kldiv.torch.empty_cache()
