"""kldiv: PyTorch's KL-divergence loss and its gradients as generated kernels.

``kldiv.torch`` holds the PyTorch ops (``kl_div``, ``KLDivLoss``, ``distill_kl``). This module
loads the kldiv library the package was installed with ($KLDIV_LIBRARY
overrides it) and says what it runs.
"""
from ._lib import cpu_target, cuda_in_build, library_path, set_num_threads

__version__ = "0.1.0"
__all__ = ["cpu_target", "cuda_in_build", "library_path", "set_num_threads"]
