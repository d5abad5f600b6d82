"""Loads libkldiv, binds the package's kernel calls (kldiv._ext) to it, and
declares the rest of its C ABI (kldiv/kldiv.h) for ctypes.

The package talks to the library through the C ABI only, so one build serves
every torch: nothing here links against PyTorch.
"""
import ctypes
import os
import warnings
from pathlib import Path

from . import _ext

FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
DEVICE_CPU, DEVICE_CUDA = 0, 1
DISTILL_STATS_PER_ROW = 5

# The library warns of 'mean' on every such call; the Python layer gives
# PyTorch's warning itself, where and when PyTorch does (under torch.compile
# too), so the library's copy is dropped here.
MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)


def library_path():
    """The libkldiv this package uses: $KLDIV_LIBRARY, else the copy installed with it."""
    return os.environ.get("KLDIV_LIBRARY") or str(Path(__file__).with_name("libkldiv.so"))


_WARNING_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


def _forward_warning(message, user_data):
    text = message.decode(errors="replace")
    if text != MEAN_WARNING:
        warnings.warn(text, stacklevel=2)


_warning_handler = _WARNING_HANDLER(_forward_warning)  # kept alive as long as the library may call it


def _load():
    path = library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        raise ImportError(
            f"kldiv: cannot load the kldiv library {path!r} ({error}). Install the package "
            "from a kldiv build (see the README), or set KLDIV_LIBRARY to a libkldiv.so."
        ) from error
    calls = ("kldiv_forward", "kldiv_backward", "kldiv_forward_backward", "kldiv_distill_forward",
             "kldiv_distill_forward_backward", "kldiv_distill_backward", "kldiv_last_error")
    _ext.bind(*(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in calls))
    lib.kldiv_cpu_target.argtypes = []
    lib.kldiv_cpu_target.restype = ctypes.c_char_p
    lib.kldiv_cuda_in_build.argtypes = []
    lib.kldiv_cuda_in_build.restype = ctypes.c_int
    lib.kldiv_set_num_threads.argtypes = [ctypes.c_int]
    lib.kldiv_set_num_threads.restype = None
    lib.kldiv_set_thread_cuda_stream.argtypes = [ctypes.c_void_p]
    lib.kldiv_set_thread_cuda_stream.restype = None
    lib.kldiv_set_warning_handler.argtypes = [_WARNING_HANDLER, ctypes.c_void_p]
    lib.kldiv_set_warning_handler.restype = None
    # The library's warnings (an unsafe cache directory, a bad KLDIV_* setting) reach Python's warnings.
    lib.kldiv_set_warning_handler(_warning_handler, None)
    return lib


lib = _load()
has_cuda = bool(lib.kldiv_cuda_in_build())


def cuda_in_build():
    """Whether the library has CUDA kernels (it says nothing of a GPU being present)."""
    return has_cuda


def cpu_target():
    """The x86 feature level the library's CPU kernels run at (sse41, avx2, avx512...)."""
    return lib.kldiv_cpu_target().decode()


def set_num_threads(threads):
    """Threads of the CPU kernels (0: one per core)."""
    lib.kldiv_set_num_threads(int(threads))
