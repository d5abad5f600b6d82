"""Loads libkldiv and declares its C ABI (kldiv/kldiv.h) for ctypes.

The package talks to the library through the C ABI only, so one build serves
every torch: nothing here links against PyTorch.
"""
import ctypes
import os
from pathlib import Path

FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
DEVICE_CPU, DEVICE_CUDA = 0, 1


class Tensor(ctypes.Structure):
    """kldiv_tensor: a strided view of memory (16-bit data as raw bits)."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("rank", ctypes.c_int32),
        ("sizes", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("device", ctypes.c_int),
    ]


class DistillOptions(ctypes.Structure):
    """kldiv_distill_options."""

    _fields_ = [
        ("temperature", ctypes.c_double),
        ("reduction", ctypes.c_int),
        ("reverse", ctypes.c_int32),
        ("temperature_squared", ctypes.c_int32),
        ("row_mask", ctypes.c_void_p),
    ]


DISTILL_STATS_PER_ROW = 5


def library_path():
    """The libkldiv this package uses: $KLDIV_LIBRARY, else the copy installed with it."""
    return os.environ.get("KLDIV_LIBRARY") or str(Path(__file__).with_name("libkldiv.so"))


def _load():
    path = library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        raise ImportError(
            f"kldiv: cannot load the kldiv library {path!r} ({error}). Install the package "
            "from a kldiv build (see the README), or set KLDIV_LIBRARY to a libkldiv.so."
        ) from error
    tensor_p = ctypes.POINTER(Tensor)
    options_p = ctypes.POINTER(DistillOptions)
    for name, args in {
        "kldiv_forward": [tensor_p, tensor_p, ctypes.c_int, ctypes.c_int, tensor_p],
        "kldiv_backward": [tensor_p, tensor_p, tensor_p, ctypes.c_int, ctypes.c_int, tensor_p, tensor_p],
        "kldiv_forward_backward": [tensor_p, tensor_p, ctypes.c_int, ctypes.c_int, tensor_p, tensor_p],
        "kldiv_distill_forward": [tensor_p, tensor_p, options_p, tensor_p, ctypes.c_void_p],
        "kldiv_distill_forward_backward": [tensor_p, tensor_p, options_p, tensor_p, tensor_p, ctypes.c_void_p],
        "kldiv_distill_backward": [tensor_p, tensor_p, tensor_p, options_p, ctypes.c_void_p, tensor_p, tensor_p],
    }.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = ctypes.c_int
    lib.kldiv_last_error.argtypes = []
    lib.kldiv_last_error.restype = ctypes.c_char_p
    lib.kldiv_cpu_target.argtypes = []
    lib.kldiv_cpu_target.restype = ctypes.c_char_p
    lib.kldiv_cuda_in_build.argtypes = []
    lib.kldiv_cuda_in_build.restype = ctypes.c_int
    lib.kldiv_set_num_threads.argtypes = [ctypes.c_int]
    lib.kldiv_set_num_threads.restype = None
    lib.kldiv_set_thread_cuda_stream.argtypes = [ctypes.c_void_p]
    lib.kldiv_set_thread_cuda_stream.restype = None
    return lib


lib = _load()
has_cuda = bool(lib.kldiv_cuda_in_build())


def check(status):
    """Raises the library's error, with its text, for a nonzero status.

    Every kldiv error is one PyTorch reports as RuntimeError (shape mismatch,
    overlapping outputs, devices), so they all map to it.
    """
    if status != 0:
        raise RuntimeError(lib.kldiv_last_error().decode())


def cuda_in_build():
    """Whether the library has CUDA kernels (it says nothing of a GPU being present)."""
    return has_cuda


def cpu_target():
    """The x86 feature level the library's CPU kernels run at (sse41, avx2, avx512...)."""
    return lib.kldiv_cpu_target().decode()


def set_num_threads(threads):
    """Threads of the CPU kernels (0: one per core)."""
    lib.kldiv_set_num_threads(int(threads))
