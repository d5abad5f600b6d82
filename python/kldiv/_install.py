"""kldiv as PyTorch's own kl_div: ``install()``, ``uninstall()``, ``installed()``.

``aten::kl_div`` is a composite operator: PyTorch computes it from other
operators and differentiates those. ``install()`` registers kldiv's loss as its
autograd kernel for CPU tensors (and CUDA tensors, when the library has CUDA
kernels) through ``torch.library``, so that ``torch.nn.functional.kl_div``,
``torch.kl_div``, ``torch.nn.KLDivLoss`` and anything built on them run kldiv's
kernels and gradients, eagerly and under ``torch.compile`` (whose traces then
hold kldiv's custom ops). Tensors kldiv does not take run PyTorch's own
decomposition. ``uninstall()`` removes the registration.
"""
import contextlib
import threading

import torch

from . import _lib
from ._loss import loss, pytorch_kl_div, takes

_lock = threading.Lock()
_library = None  # the torch.library.Library holding the registration while installed


def _aten_kl_div(self, target, reduction=1, log_target=False):
    """aten::kl_div(Tensor self, Tensor target, int reduction=Mean, *, bool log_target=False).

    The reduction is an at::Reduction (none, mean, sum): F.kl_div has already
    warned of 'mean' and divides 'batchmean' itself.
    """
    if not takes(self, target):
        return pytorch_kl_div(self, target, reduction, log_target)
    return loss(self, target, reduction, log_target)


def _refresh_python_dispatcher():
    """torch.compile's tracer resolves operators through PyTorch's Python dispatcher,
    which caches each operator's kernel per dispatch key and is not told when a
    torch.library registration comes or goes: without this, a trace after
    install() could miss kldiv, and one after uninstall() could reach the removed
    kernel's slot (autograd then has no formula for kl_div)."""
    cache = getattr(torch.ops.aten.kl_div.default, "_dispatch_cache", None)
    if cache is not None:
        cache.clear()


def install():
    """Makes PyTorch's own ``kl_div`` run kldiv's kernels, for the tensors kldiv takes.

    After it, ``torch.nn.functional.kl_div``, ``torch.kl_div`` and
    ``torch.nn.KLDivLoss`` (and code that calls them, such as a trainer
    library's distillation loss) compute on kldiv's kernels: CPU tensors, and
    CUDA tensors when the library has CUDA kernels, of float32, float64,
    float16 and bfloat16 with one dtype. Other tensors keep PyTorch's own
    computation. Idempotent and thread-safe.

    Functions that ``torch.compile`` compiled before keep the kernels they were
    compiled with until they are compiled again (``torch.compiler.reset()``).
    """
    global _library
    with _lock:
        if _library is not None:
            return
        library = torch.library.Library("aten", "IMPL")
        library.impl("kl_div", _aten_kl_div, "AutogradCPU")
        if _lib.has_cuda:
            library.impl("kl_div", _aten_kl_div, "AutogradCUDA")
        _library = library
        _refresh_python_dispatcher()


def uninstall():
    """Gives ``kl_div`` back to PyTorch's own kernels (undoes ``install()``; idempotent)."""
    global _library
    with _lock:
        if _library is None:
            return
        destroy = getattr(_library, "_destroy", None)
        if destroy is not None:
            destroy()
        # Older torch: the registration goes with the Library object, held here only.
        _library = None
        _refresh_python_dispatcher()


def is_installed():
    """Whether ``install()`` is in effect."""
    return _library is not None


@contextlib.contextmanager
def installed():
    """``install()`` for a ``with`` block; on leaving, the state before it comes back.

    Example::

        >>> import torch, torch.nn.functional as F, kldiv.torch
        >>> x, t = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75])
        >>> with kldiv.torch.installed():
        ...     loss = F.kl_div(x, t, reduction="sum")  # on kldiv's kernels
        >>> loss
        tensor(0.1308)
    """
    was = is_installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()
