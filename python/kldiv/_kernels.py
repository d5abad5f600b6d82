"""What the loss and distillation ops share on their way to the library:
dtypes, CUDA streams, the memory of fused gradients, and the choice between
calling the library directly and going through kldiv's custom ops."""
import math
import mmap
import sys
import threading

import torch

from . import _ext, _lib

DTYPES = {
    torch.float32: _lib.FLOAT32,
    torch.float64: _lib.FLOAT64,
    torch.float16: _lib.FLOAT16,
    torch.bfloat16: _lib.BFLOAT16,
}
ELEMENT_BYTES = {torch.float32: 4, torch.float64: 8, torch.float16: 2, torch.bfloat16: 2}
_ext.bind_dtypes(torch.float32, torch.float64, torch.float16, torch.bfloat16)

# torch 2.4 and later: the ops are torch.library custom ops (torch.compile,
# torch.export and opcheck see them); earlier, autograd.Functions only.
HAS_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")
CUSTOM_OP_DEVICES = ("cpu", "cuda")

_PLAIN = (torch.Tensor, torch.nn.Parameter)
if HAS_OPS:
    _is_compiling = torch.compiler.is_compiling
    _dispatch_modes = torch._C._len_torch_dispatch_stack


def runs_ops(a, b):
    """Whether a call on tensors a and b must go through kldiv's custom ops, not straight to the library.

    It must while torch.compile (or torch.export) traces it, when a tensor is
    not a plain one (a trace's FakeTensor or FunctionalTensor, a subclass), and
    under a dispatch mode, so that the trace or the mode sees the op. Eager calls
    on plain tensors skip the custom ops' dispatch, which costs more than a small
    tensor's kernel; they run the same kernels through autograd.Functions.
    """
    if not HAS_OPS:
        return False
    if _is_compiling():
        return True
    return type(a) not in _PLAIN or type(b) not in _PLAIN or _dispatch_modes() > 0


# 0-dim CPU tensors whose empty_like is the cheapest new 0-dim tensor PyTorch gives Python.
_SCALARS = {dtype: torch.empty((), dtype=dtype) for dtype in DTYPES}


def new_scalar(like):
    """A new 0-dim tensor of like's dtype and device."""
    return torch.empty_like(_SCALARS[like.dtype]) if like.is_cpu else like.new_empty(())


def new_like(like):
    """A new contiguous tensor of like's shape, dtype and device."""
    return torch.empty_like(like) if like.is_contiguous() else like.new_empty(like.shape)


def use_stream(tensor):
    """CUDA work goes on PyTorch's current stream of the tensor's device."""
    if tensor.is_cuda:
        _lib.lib.kldiv_set_thread_cuda_stream(torch.cuda.current_stream(tensor.device).cuda_stream)


class _GradientMemory:
    """CPU memory for the fused passes' gradients, reused from one training step to the next.

    PyTorch's CPU allocator hands large blocks back to the kernel when they are
    freed, so each step's new gradient is fresh memory that the kernel must map
    and zero on first touch. For a 1 MiB or larger gradient that costs more
    than the kernel itself (several times more on some virtual machines). Such
    a gradient lives instead in an anonymous mapping that its tensor holds a
    reference to. Once no tensor uses it any more (the optimiser set .grad to
    None, the graph was freed), the mapping serves the next step. Nothing is
    shared while in use: a mapping is reused only when its reference count
    says that this cache alone holds it, so a gradient never aliases another
    live tensor (as a custom op's output must not).
    """

    MIN_BYTES = 1 << 20  # below this the heap keeps and reuses the memory anyway
    _KEEP = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._mappings = []

    def empty(self, shape, dtype):
        """A contiguous tensor of `shape` and `dtype` (at least MIN_BYTES) in a mapping nothing else uses."""
        nbytes = math.prod(shape) * ELEMENT_BYTES[dtype]
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


gradient_memory = _GradientMemory()


def new_gradient(like):
    """Memory for the fused pass's gradient of `like` (contiguous, its shape, dtype and device)."""
    if like.is_cuda or like.numel() * ELEMENT_BYTES[like.dtype] < _GradientMemory.MIN_BYTES:
        return new_like(like)
    return gradient_memory.empty(tuple(like.shape), like.dtype)


if HAS_OPS:

    @torch.library.custom_op("kldiv::scaled_gradient", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def scaled_gradient(gradient: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """A fused pass's gradient times the upstream gradient: the fused ops' backward under torch.compile.

        The product goes into memory that the next step reuses (new_gradient):
        PyTorch's allocator would map and zero fresh pages for it on every step,
        which cost more than the product itself.
        """
        if grad_output.dtype != gradient.dtype:
            return gradient * grad_output
        return torch.mul(gradient, grad_output, out=new_gradient(gradient))

    @scaled_gradient.register_fake
    def _(gradient, grad_output):
        if grad_output.dtype != gradient.dtype:
            return gradient * grad_output
        return gradient.new_empty(gradient.shape)

    def _setup_scaled(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward_scaled(ctx, grad):
        gradient, grad_output = ctx.saved_tensors
        return grad * grad_output, (grad * gradient).sum_to_size(grad_output.shape)

    torch.library.register_autograd("kldiv::scaled_gradient", _backward_scaled, setup_context=_setup_scaled)


def scaled(gradient, grad_output):
    """A fused pass's gradient (for an upstream gradient of 1) times the upstream gradient, in eager autograd.

    `loss.backward()` on the CPU passes a 0-dim 1: the saved gradient is then the
    answer itself, and autograd hands it to .grad without a copy when the graph
    is not retained. On CUDA, reading the value would wait for the GPU, so the
    product is always taken there. (The custom ops' backward, which torch.compile
    traces, always multiplies: a traced graph cannot branch on a value.)
    """
    if (grad_output.dim() == 0 and not grad_output.is_cuda and not grad_output.requires_grad
            and grad_output.item() == 1.0):
        return gradient
    return gradient * grad_output
