"""PyTorch's ``kl_div`` and ``KLDivLoss`` on kldiv's kernels.

``kldiv.torch.kl_div`` and ``kldiv.torch.KLDivLoss`` take the arguments of
``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` and give the same
results, gradients, warnings and errors, for CPU and CUDA tensors of float32,
float64, float16 and bfloat16 with any strides. Anything else (mixed dtypes or
devices, integer or complex dtypes, sparse layouts, other devices) goes to
PyTorch's own ``kl_div``, so it gives PyTorch's result or PyTorch's error.

When only ``input`` requires grad, the forward runs kldiv's fused kernel: one
read of ``input`` and ``target`` gives the loss and the gradient for an upstream
gradient of 1, which backward only scales.

``kldiv.torch.distill_kl`` is the distillation loss from logits (the KL
divergence between the teacher's and the student's softmax at a temperature,
per row), fused, with masks and a vocabulary-parallel form.
"""
import ctypes
import math
import mmap
import sys
import threading
import typing
import warnings

import torch
from torch.nn import _reduction as _Reduction

from . import _lib

__all__ = ["kl_div", "KLDivLoss", "distill_kl", "empty_cache"]

_DTYPES = {
    torch.float32: _lib.FLOAT32,
    torch.float64: _lib.FLOAT64,
    torch.float16: _lib.FLOAT16,
    torch.bfloat16: _lib.BFLOAT16,
}
_ELEMENT_BYTES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2}
_NONE, _MEAN, _SUM, _BATCHMEAN = (_lib.REDUCTIONS[name] for name in ("none", "mean", "sum", "batchmean"))

# torch.nn.functional.kl_div's text, sentences joined as PyTorch joins them.
_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)


# ---- Calls into the C ABI ---------------------------------------------------


def _view(tensor):
    rank = tensor.dim()
    sizes = (ctypes.c_int64 * rank)(*tensor.shape) if rank else None
    strides = (ctypes.c_int64 * rank)(*tensor.stride()) if rank else None
    device = _lib.DEVICE_CUDA if tensor.is_cuda else _lib.DEVICE_CPU
    # The Structure keeps the size and stride arrays alive with it.
    return ctypes.byref(_lib.Tensor(tensor.data_ptr(), _DTYPES[tensor.dtype], rank, sizes, strides, device))


def _use_stream(tensor):
    """CUDA work goes on PyTorch's current stream of the tensor's device."""
    if tensor.is_cuda:
        _lib.lib.kldiv_set_thread_cuda_stream(torch.cuda.current_stream(tensor.device).cuda_stream)


def _loss_shape(input, target, reduction):
    """The loss's shape, or None when the shapes do not broadcast (the library then says why)."""
    if reduction != _NONE:
        return ()
    shape = []
    for a, b in zip(reversed((1,) * (target.dim() - input.dim()) + tuple(input.shape)),
                    reversed((1,) * (input.dim() - target.dim()) + tuple(target.shape))):
        if a != b and a != 1 and b != 1:
            return None
        shape.append(b if a == 1 else a)
    return tuple(reversed(shape))


def _empty(shape, like):
    return torch.empty(shape if shape is not None else (), dtype=like.dtype, device=like.device)


def _forward(input, target, reduction, log_target):
    out = _empty(_loss_shape(input, target, reduction), input)
    _use_stream(input)
    _lib.check(_lib.lib.kldiv_forward(_view(input), _view(target), reduction, log_target, _view(out)))
    return out


class _GradientMemory:
    """CPU memory for the fused pass's gradient, reused from one training step to the next.

    PyTorch's CPU allocator hands large blocks back to the kernel when they are
    freed, so each step's new gradient is fresh memory that the kernel must map
    and zero on first touch. For a 64 MiB or larger gradient that costs more
    than the kernel itself (several times more on some virtual machines). Such
    a gradient lives instead in an anonymous mapping that its tensor holds a
    reference to. Once no tensor uses it any more (the optimiser set .grad to
    None, the graph was freed), the mapping serves the next step. Nothing is
    shared while in use: a mapping is reused only when its reference count
    says that this cache alone holds it.
    """

    _MIN_BYTES = 1 << 20  # below this the heap keeps and reuses the memory anyway
    _KEEP = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._mappings = []

    def empty(self, shape, dtype):
        nbytes = math.prod(shape) * _ELEMENT_BYTES[dtype]
        if nbytes < self._MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            mapping = None
            for i in range(len(self._mappings)):
                # A free mapping has two references: the list's and getrefcount's argument.
                if sys.getrefcount(self._mappings[i]) == 2 and nbytes <= len(self._mappings[i]) <= 2 * nbytes:
                    mapping = self._mappings.pop(i)
                    break
            if mapping is None:
                mapping = mmap.mmap(-1, nbytes)
            self._mappings.append(mapping)
            del self._mappings[:-self._KEEP]
            return torch.frombuffer(mapping, dtype=dtype, count=math.prod(shape)).view(shape)

    def clear(self):
        with self._lock:
            self._mappings.clear()


_gradient_memory = _GradientMemory()


def empty_cache():
    """Lets go of the CPU memory kept for reuse by the next step's gradient
    (as torch.cuda.empty_cache does for CUDA); tensors using it keep it until they go."""
    _gradient_memory.clear()


def _forward_backward(input, target, reduction, log_target):
    out = _empty(_loss_shape(input, target, reduction), input)
    if input.is_cuda:
        grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        grad_input = _gradient_memory.empty(tuple(input.shape), input.dtype)
    _use_stream(input)
    _lib.check(_lib.lib.kldiv_forward_backward(_view(input), _view(target), reduction, log_target,
                                               _view(out), _view(grad_input)))
    return out, grad_input


def _backward(grad_output, input, target, reduction, log_target, need_input, need_target):
    grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device) if need_input else None
    grad_target = torch.empty(target.shape, dtype=target.dtype, device=target.device) if need_target else None
    _use_stream(input)
    _lib.check(_lib.lib.kldiv_backward(_view(grad_output.to(input.dtype)), _view(input), _view(target),
                                       reduction, log_target,
                                       _view(grad_input) if need_input else None,
                                       _view(grad_target) if need_target else None))
    return grad_input, grad_target


def _fuses(input, target, reduction):
    """Whether the fused pass's gradient, scaled by the upstream one, is input's gradient.

    It is for a reduced loss (a scalar upstream gradient), and for 'none'
    unless broadcasting made the loss larger than input (its gradient is then a sum).
    """
    return reduction != _NONE or _loss_shape(input, target, reduction) == tuple(input.shape)


# ---- Autograd ---------------------------------------------------------------


class _KLDivFunction(torch.autograd.Function):
    """The loss with gradients for input and target (torch without custom_op)."""

    @staticmethod
    def forward(ctx, input, target, reduction, log_target):
        ctx.reduction, ctx.log_target = reduction, log_target
        need_input, need_target = ctx.needs_input_grad[:2]
        ctx.fused = need_input and not need_target and _fuses(input, target, reduction)
        if ctx.fused:
            loss, grad_input = _forward_backward(input, target, reduction, log_target)
            ctx.save_for_backward(grad_input)
        else:
            loss = _forward(input, target, reduction, log_target)
            ctx.save_for_backward(input, target)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.fused:
            (grad_input,) = ctx.saved_tensors
            return _scaled(grad_input, grad_output), None, None, None
        return (*_gradients(ctx, grad_output, _backward), None, None)


def _gradients(ctx, grad_output, backward):
    """input's and target's gradients (None where not needed) from the saved
    operands: by `backward` (the backward kernel), or with create_graph=True
    by PyTorch's formulas."""
    input, target = ctx.saved_tensors
    need_input, need_target = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        return _double_differentiable_gradients(grad_output, input, target, ctx.reduction, ctx.log_target,
                                                need_input, need_target)
    return backward(grad_output, input, target, ctx.reduction, ctx.log_target, need_input, need_target)


def _scaled(grad_input, grad_output):
    """The fused pass's gradient (for an upstream gradient of 1) times the upstream gradient.

    input's gradient does not depend on input, so this product is all that double
    backward needs. `loss.backward()` on the CPU passes a 0-dim 1: the saved gradient
    is then the answer itself, and autograd hands it to input's .grad without a copy
    when the graph is not retained (and copies it when it is). On CUDA, reading the
    value would wait for the GPU, so the product is always taken there.
    """
    if (grad_output.dim() == 0 and not grad_output.is_cuda and not grad_output.requires_grad
            and grad_output.item() == 1.0):
        return grad_input
    return grad_input * grad_output


def _double_differentiable_gradients(grad_output, input, target, reduction, log_target, need_input, need_target):
    """Gradients that autograd can differentiate again (backward with create_graph=True):
    PyTorch's own kl_div formulas, so that double backward is PyTorch's."""
    with torch.enable_grad():
        loss = torch.kl_div(input, target, _SUM if reduction == _BATCHMEAN else reduction, log_target=log_target)
        if reduction == _BATCHMEAN and input.dim() != 0:
            loss = loss / input.size(0)
        wanted = [operand for operand, need in ((input, need_input), (target, need_target)) if need]
        grads = iter(torch.autograd.grad(loss, wanted, grad_output, create_graph=True, allow_unused=True))
    return (next(grads) if need_input else None), (next(grads) if need_target else None)


def _differentiable_loss(input, target, reduction, log_target):
    return _KLDivFunction.apply(input, target, reduction, log_target)


# torch 2.4 and later: custom ops that torch.compile traces without a graph break.
if hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd"):

    @torch.library.custom_op("kldiv::kl_div", mutates_args=())
    def _kl_div_op(input: torch.Tensor, target: torch.Tensor, reduction: int, log_target: bool) -> torch.Tensor:
        return _forward(input, target, reduction, log_target)

    @_kl_div_op.register_fake
    def _(input, target, reduction, log_target):
        return input.new_empty(() if reduction != _NONE else torch.broadcast_shapes(input.shape, target.shape))

    @torch.library.custom_op("kldiv::kl_div_forward_backward", mutates_args=())
    def _forward_backward_op(input: torch.Tensor, target: torch.Tensor, reduction: int,
                             log_target: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        return _forward_backward(input, target, reduction, log_target)

    @_forward_backward_op.register_fake
    def _(input, target, reduction, log_target):
        loss = input.new_empty(() if reduction != _NONE else torch.broadcast_shapes(input.shape, target.shape))
        return loss, input.new_empty(input.shape)

    @torch.library.custom_op("kldiv::kl_div_backward", mutates_args=())
    def _backward_op(grad_output: torch.Tensor, input: torch.Tensor, target: torch.Tensor, reduction: int,
                     log_target: bool, need_input: bool,
                     need_target: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        grad_input, grad_target = _backward(grad_output, input, target, reduction, log_target,
                                            need_input, need_target)
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
        return _scaled(grad_input, grad_loss), None, None, None

    torch.library.register_autograd("kldiv::kl_div", _backward_loss, setup_context=_setup_loss)
    torch.library.register_autograd("kldiv::kl_div_forward_backward", _backward_fused, setup_context=_setup_fused)

    def _differentiable_loss(input, target, reduction, log_target):  # noqa: F811 (the custom-op form)
        if input.requires_grad and not target.requires_grad and _fuses(input, target, reduction):
            return _forward_backward_op(input, target, reduction, log_target)[0]
        return _kl_div_op(input, target, reduction, log_target)


# ---- The functional and module forms ----------------------------------------


def _kldiv_takes(input, target):
    """Whether kldiv's kernels take this pair (else PyTorch's kl_div does the work)."""
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    if input.dtype not in _DTYPES or target.dtype != input.dtype or input.device != target.device:
        return False
    if input.layout != torch.strided or target.layout != torch.strided:
        return False
    return input.device.type == "cpu" or (input.device.type == "cuda" and _lib.has_cuda)


def _loss(input, target, reduction, log_target):
    if not _kldiv_takes(input, target):
        loss = torch.kl_div(input, target, _SUM if reduction == _BATCHMEAN else reduction, log_target=log_target)
        return loss / input.size(0) if reduction == _BATCHMEAN and input.dim() != 0 else loss
    if torch.is_grad_enabled() and (input.requires_grad or target.requires_grad):
        return _differentiable_loss(input, target, reduction, log_target)
    return _forward(input, target, reduction, log_target)


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


def _sharded_loss(input, target, reduction, log_target, group):
    """The loss over tensors sharded along their last dimension across `group`."""
    if reduction == _NONE:
        return _loss(input, target, _NONE, log_target)
    local = _loss(input, target, _SUM, log_target)
    numel = torch.broadcast_shapes(input.shape, target.shape).numel()
    # One all-reduce carries the partial sum and the element count (shards may differ in size).
    partial = torch.stack([local.to(torch.float64), torch.tensor(float(numel), dtype=torch.float64,
                                                                 device=local.device)])
    total = _AllReduceSum.apply(partial, group)
    if reduction == _MEAN:
        loss = total[0] / total[1]
    elif reduction == _BATCHMEAN and input.dim() != 0:
        loss = total[0] / input.size(0)
    else:
        loss = total[0]
    return loss.to(local.dtype)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False, *,
           process_group=None):
    r"""The Kullback-Leibler divergence loss, as ``torch.nn.functional.kl_div``.

    Args:
        input: log-probabilities.
        target: probabilities, or log-probabilities with ``log_target=True``.
        size_average, reduce: deprecated, as in PyTorch (they override ``reduction``).
        reduction: ``'none'``, ``'batchmean'``, ``'sum'`` or ``'mean'`` (PyTorch's
            default, which warns that it divides by the number of elements).
        log_target: whether ``target`` holds log-probabilities.
        process_group: a ``torch.distributed`` group across whose ranks ``input``
            and ``target`` are sharded along their last dimension (vocabulary
            parallelism). Each rank passes its shards and gets the loss of the
            whole tensors (one all-reduce); ``'none'`` gives each rank its shard of
            the loss. ``None``: the tensors are whole.
    """
    if size_average is not None or reduce is not None:
        code = _Reduction.legacy_get_enum(size_average, reduce)  # warns with PyTorch's text
        loss = _loss(input, target, code, log_target) if process_group is None else \
            _sharded_loss(input, target, code, log_target, process_group)
        # PyTorch still divides by the batch size when reduction='batchmean' came with legacy arguments.
        return loss / input.size(0) if reduction == "batchmean" and input.dim() != 0 else loss
    if reduction == "mean":
        warnings.warn(_MEAN_WARNING)
    code = _BATCHMEAN if reduction == "batchmean" else _Reduction.get_enum(reduction)
    if process_group is not None:
        return _sharded_loss(input, target, code, log_target, process_group)
    return _loss(input, target, code, log_target)


class KLDivLoss(torch.nn.KLDivLoss):
    r"""``torch.nn.KLDivLoss`` on kldiv's kernels: same arguments, attributes and results."""

    def forward(self, input, target):
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


from ._distill import distill_kl  # noqa: E402 (it uses the helpers above)
