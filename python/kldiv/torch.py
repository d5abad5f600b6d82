"""PyTorch's ``kl_div`` and ``KLDivLoss`` on kldiv's kernels, and distillation from logits.

``kldiv.torch.kl_div`` and ``kldiv.torch.KLDivLoss`` take the arguments of
``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` and give the same
results, gradients, warnings and errors, for CPU and CUDA tensors of float32,
float64, float16 and bfloat16 with any strides. Anything else (mixed dtypes or
devices, integer or complex dtypes, sparse layouts, other devices) goes to
PyTorch's own ``kl_div``, so it gives PyTorch's result or PyTorch's error.

``kldiv.torch.install()`` makes PyTorch's own ``kl_div`` (``F.kl_div``,
``torch.kl_div``, ``nn.KLDivLoss``) run kldiv's kernels, for code one does not
own. ``kldiv.torch.distill_kl`` is the distillation loss from logits, fused,
with masks and a vocabulary-parallel form.
"""
import warnings

import torch
from torch.nn import _reduction as _Reduction

from . import _lib
from ._distill import distill_kl
from ._install import install, installed, is_installed, uninstall
from ._kernels import HAS_OPS, gradient_memory
from ._loss import BATCHMEAN, loss, sharded_loss

__all__ = ["kl_div", "KLDivLoss", "distill_kl", "empty_cache", "install", "uninstall", "installed", "is_installed"]

_CODES = {"none": _lib.REDUCTIONS["none"], "mean": _lib.REDUCTIONS["mean"], "sum": _lib.REDUCTIONS["sum"],
          "batchmean": BATCHMEAN}


def empty_cache():
    """Lets go of the CPU memory kept for reuse by the next step's gradient
    (as torch.cuda.empty_cache does for CUDA); tensors using it keep it until they go."""
    gradient_memory.clear()


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

    Example::

        >>> import torch, kldiv.torch
        >>> x = torch.tensor([[0.5, 0.5]]).log()
        >>> kldiv.torch.kl_div(x, torch.tensor([[0.25, 0.75]]), reduction="batchmean")
        tensor(0.1308)
    """
    if size_average is not None or reduce is not None:
        code = _Reduction.legacy_get_enum(size_average, reduce)  # warns with PyTorch's text
        result = loss(input, target, code, log_target) if process_group is None else \
            sharded_loss(input, target, code, log_target, process_group)
        # PyTorch still divides by the batch size when reduction='batchmean' came with legacy arguments.
        return result / input.size(0) if reduction == "batchmean" and input.dim() != 0 else result
    if reduction == "mean":
        warnings.warn(_lib.MEAN_WARNING)
    code = _CODES.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        code = _Reduction.get_enum(reduction)  # PyTorch's ValueError
    if process_group is not None:
        return sharded_loss(input, target, code, log_target, process_group)
    return loss(input, target, code, log_target)


if HAS_OPS:
    # torch.compile puts kl_div into its graph whole, as it does torch.nn.functional.kl_div,
    # and traces it with fake tensors (through kldiv's custom ops): so the 'mean'
    # warning comes when a graph is traced, not on calls of the compiled graph, as PyTorch's does.
    torch.compiler.allow_in_graph(kl_div)


class KLDivLoss(torch.nn.KLDivLoss):
    r"""``torch.nn.KLDivLoss`` on kldiv's kernels: same arguments, attributes and results."""

    def forward(self, input, target):
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
