"""The KL-divergence loss's passes on kldiv's kernels, with autograd.

Eager calls on plain tensors run the library directly inside an
autograd.Function; traced calls (torch.compile, torch.export, dispatch modes)
go through the custom ops ``kldiv::kl_div``, ``kldiv::kl_div_forward_backward``
and ``kldiv::kl_div_backward`` (torch 2.4 and later), which have fake kernels
and the same autograd. When only ``input`` requires grad, the forward runs the
fused kernel: one read of ``input`` and ``target`` gives the loss and the
gradient for an upstream gradient of 1, which backward only scales.
"""
import typing

import torch

from . import _ext, _lib
from ._kernels import (CUSTOM_OP_DEVICES, DTYPES, HAS_OPS, new_gradient, new_like, new_scalar, runs_ops, scaled,
                       use_stream)
if HAS_OPS:
    from ._kernels import scaled_gradient

NONE, MEAN, SUM, BATCHMEAN = (_lib.REDUCTIONS[name] for name in ("none", "mean", "sum", "batchmean"))


def takes(input, target):
    """Whether kldiv's kernels take this pair (else PyTorch's kl_div does the work)."""
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    dtype = input.dtype
    if target.dtype != dtype or dtype not in DTYPES or input.layout != torch.strided or \
            target.layout != torch.strided:
        return False
    if input.is_cpu:
        return target.is_cpu
    return input.is_cuda and _lib.has_cuda and target.device == input.device


def loss_shape(input, target, reduction):
    """The loss's shape, or None when the shapes do not broadcast (the library then says why)."""
    if reduction != NONE:
        return ()
    if input.shape == target.shape:
        return tuple(input.shape)
    shape = []
    for a, b in zip(reversed((1,) * (target.dim() - input.dim()) + tuple(input.shape)),
                    reversed((1,) * (input.dim() - target.dim()) + tuple(target.shape))):
        if a != b and a != 1 and b != 1:
            return None
        shape.append(b if a == 1 else a)
    return tuple(reversed(shape))


def _new_loss(input, target, reduction):
    if reduction != NONE:
        return new_scalar(input)
    if input.shape == target.shape:
        return new_like(input)
    shape = loss_shape(input, target, reduction)
    return input.new_empty(shape if shape is not None else ())


def fuses(input, target, reduction):
    """Whether the fused pass's gradient, scaled by the upstream one, is input's gradient.

    It is for a reduced loss (a scalar upstream gradient), and for 'none'
    unless broadcasting made the loss larger than input (its gradient is then a sum).
    """
    return reduction != NONE or loss_shape(input, target, reduction) == tuple(input.shape)


# ---- The library's passes ---------------------------------------------------


def forward(input, target, reduction, log_target):
    out = _new_loss(input, target, reduction)
    use_stream(input)
    _ext.forward(input, target, reduction, log_target, out)
    return out


def forward_backward(input, target, reduction, log_target):
    out = _new_loss(input, target, reduction)
    grad_input = new_gradient(input)
    use_stream(input)
    _ext.forward_backward(input, target, reduction, log_target, out, grad_input)
    return out, grad_input


def backward(grad_output, input, target, reduction, log_target, need_input, need_target):
    grad_input = new_like(input) if need_input else None
    grad_target = new_like(target) if need_target else None
    use_stream(input)
    _ext.backward(grad_output.to(input.dtype), input, target, reduction, log_target, grad_input, grad_target)
    return grad_input, grad_target


def pytorch_kl_div(input, target, reduction, log_target):
    """PyTorch's own kl_div (its decomposition into other operators, whatever kl_div is bound to)."""
    loss = torch.ops.aten.kl_div.default.decompose(input, target, SUM if reduction == BATCHMEAN else reduction,
                                                   log_target=log_target)
    return loss / input.size(0) if reduction == BATCHMEAN and input.dim() != 0 else loss


def _double_differentiable_gradients(grad_output, input, target, reduction, log_target, need_input, need_target):
    """Gradients that autograd can differentiate again (backward with create_graph=True):
    PyTorch's own kl_div formulas, so that double backward is PyTorch's."""
    with torch.enable_grad():
        loss = pytorch_kl_div(input, target, reduction, log_target)
        wanted = [operand for operand, need in ((input, need_input), (target, need_target)) if need]
        grads = iter(torch.autograd.grad(loss, wanted, grad_output, create_graph=True, allow_unused=True))
    return (next(grads) if need_input else None), (next(grads) if need_target else None)


def _gradients(ctx, grad_output, backward_pass):
    """input's and target's gradients (None where not needed) from the saved
    operands: by `backward_pass` (the backward kernel), or with create_graph=True
    by PyTorch's formulas."""
    input, target = ctx.saved_tensors
    need_input, need_target = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        return _double_differentiable_gradients(grad_output, input, target, ctx.reduction, ctx.log_target,
                                                need_input, need_target)
    return backward_pass(grad_output, input, target, ctx.reduction, ctx.log_target, need_input, need_target)


# ---- Eager autograd (every torch) -------------------------------------------


class _KLDivFunction(torch.autograd.Function):
    """The loss with gradients for input and target, calling the library directly."""

    @staticmethod
    def forward(ctx, input, target, reduction, log_target):
        ctx.reduction, ctx.log_target = reduction, log_target
        need_input, need_target = ctx.needs_input_grad[:2]
        ctx.fused = need_input and not need_target and fuses(input, target, reduction)
        if ctx.fused:
            loss, grad_input = forward_backward(input, target, reduction, log_target)
            ctx.save_for_backward(grad_input)
        else:
            loss = forward(input, target, reduction, log_target)
            ctx.save_for_backward(input, target)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.fused:
            (grad_input,) = ctx.saved_tensors
            return scaled(grad_input, grad_output), None, None, None
        return (*_gradients(ctx, grad_output, backward), None, None)


# ---- Custom ops (torch 2.4 and later) ---------------------------------------

if HAS_OPS:

    @torch.library.custom_op("kldiv::kl_div", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _kl_div_op(input: torch.Tensor, target: torch.Tensor, reduction: int, log_target: bool) -> torch.Tensor:
        return forward(input, target, reduction, log_target)

    @_kl_div_op.register_fake
    def _(input, target, reduction, log_target):
        return input.new_empty(() if reduction != NONE else torch.broadcast_shapes(input.shape, target.shape))

    @torch.library.custom_op("kldiv::kl_div_forward_backward", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _forward_backward_op(input: torch.Tensor, target: torch.Tensor, reduction: int,
                             log_target: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        return forward_backward(input, target, reduction, log_target)

    @_forward_backward_op.register_fake
    def _(input, target, reduction, log_target):
        loss = input.new_empty(() if reduction != NONE else torch.broadcast_shapes(input.shape, target.shape))
        return loss, input.new_empty(input.shape)

    @torch.library.custom_op("kldiv::kl_div_backward", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _backward_op(grad_output: torch.Tensor, input: torch.Tensor, target: torch.Tensor, reduction: int,
                     log_target: bool, need_input: bool,
                     need_target: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        grad_input, grad_target = backward(grad_output, input, target, reduction, log_target, need_input,
                                           need_target)
        # A custom op returns tensors: an empty one stands for a gradient not asked for.
        return (grad_input if need_input else input.new_empty(0),
                grad_target if need_target else target.new_empty(0))

    @_backward_op.register_fake
    def _(grad_output, input, target, reduction, log_target, need_input, need_target):
        return (input.new_empty(input.shape if need_input else 0),
                target.new_empty(target.shape if need_target else 0))

    def _setup_loss(ctx, inputs, output):
        input, target, ctx.reduction, ctx.log_target = inputs
        ctx.save_for_backward(input, target)

    def _backward_through_op(grad_output, input, target, reduction, log_target, need_input, need_target):
        grad_input, grad_target = _backward_op(grad_output, input, target, reduction, log_target,
                                               need_input, need_target)
        return (grad_input if need_input else None), (grad_target if need_target else None)

    def _backward_loss(ctx, grad_output):
        return (*_gradients(ctx, grad_output, _backward_through_op), None, None)

    def _setup_fused(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    def _backward_fused(ctx, grad_loss, grad_of_grad_input):
        (grad_input,) = ctx.saved_tensors
        return scaled_gradient(grad_input, grad_loss), None, None, None

    torch.library.register_autograd("kldiv::kl_div", _backward_loss, setup_context=_setup_loss)
    torch.library.register_autograd("kldiv::kl_div_forward_backward", _backward_fused, setup_context=_setup_fused)


def _loss_through_ops(input, target, reduction, log_target):
    if torch.is_grad_enabled() and input.requires_grad and not target.requires_grad and \
            fuses(input, target, reduction):
        return _forward_backward_op(input, target, reduction, log_target)[0]
    return _kl_div_op(input, target, reduction, log_target)


def loss(input, target, reduction, log_target):
    """The loss for a reduction code (BATCHMEAN included), differentiable, on kldiv's kernels where they take the tensors."""
    if not takes(input, target):
        result = torch.kl_div(input, target, SUM if reduction == BATCHMEAN else reduction, log_target=log_target)
        return result / input.size(0) if reduction == BATCHMEAN and input.dim() != 0 else result
    if runs_ops(input, target):
        return _loss_through_ops(input, target, reduction, log_target)
    if torch.is_grad_enabled() and (input.requires_grad or target.requires_grad):
        return _KLDivFunction.apply(input, target, reduction, log_target)
    return forward(input, target, reduction, log_target)


# ---- Vocabulary parallelism -------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of a group. Every rank back-propagates its own copy
    of the summed loss, so the gradient of its local part is the upstream one."""

    @staticmethod
    def forward(ctx, local, group):
        total = local.clone()
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        return grad_total, None


def sharded_loss(input, target, reduction, log_target, group):
    """The loss over tensors sharded along their last dimension across `group`."""
    if reduction == NONE:
        return loss(input, target, NONE, log_target)
    local = loss(input, target, SUM, log_target)
    numel = torch.broadcast_shapes(input.shape, target.shape).numel()
    # One all-reduce carries the partial sum and the element count (shards may differ in size).
    partial = torch.stack([local.to(torch.float64), torch.tensor(float(numel), dtype=torch.float64,
                                                                 device=local.device)])
    total = _AllReduceSum.apply(partial, group)
    if reduction == MEAN:
        result = total[0] / total[1]
    elif reduction == BATCHMEAN and input.dim() != 0:
        result = total[0] / input.size(0)
    else:
        result = total[0]
    return result.to(local.dtype)
