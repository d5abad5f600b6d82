"""What the PyTorch benchmarks share: timing, the peak resident set of a child
process, and the command-line options for threads, memory and output."""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import kldiv

# The bandwidth probe of the C++ benchmarks (bench/bandwidth_module.cpp), from
# the build beside this folder unless KLDIV_BENCH_MODULES names another place.
sys.path.insert(0, os.environ.get("KLDIV_BENCH_MODULES") or str(Path(__file__).resolve().parents[1] / "build/bench"))
try:
    import kldiv_bandwidth
except ImportError:
    kldiv_bandwidth = None


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(function, repeats, inner=1, warmup=1, device="cpu"):
    """Median over `repeats` of the time of `inner` back-to-back calls, per call."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def resident_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_resident():
    """Starts the peak resident set (VmHWM) again from the current one (Linux); returns that, in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return resident_kib("VmRSS") * 1024


def peak_resident_since(base):
    return resident_kib("VmHWM") * 1024 - base


def add_common_arguments(parser, repeats):
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads of PyTorch and kldiv alike (default: the cores this process may use)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)


def use_threads(threads):
    torch.set_num_threads(threads)
    kldiv.set_num_threads(threads)


def step_ceiling(a, b, threads, repeats, device="cpu"):
    """The ceiling, in bytes per second, of a step that reads two tensors and
    writes a third of their size, measured now in this process, and its name.

    On the CPU, the copy loop of the C++ benchmarks (two arrays read, a third
    written; tools/bandwidth.h); where that module is not built (or on a GPU),
    PyTorch's out = a + b on the data itself.
    """
    if device == "cpu" and kldiv_bandwidth is not None:
        return kldiv_bandwidth.measure(threads, max(3, repeats))["copy_gbps"] * 1e9, "copy loop"
    a = a.detach()
    out = torch.empty_like(a)
    seconds = median_seconds(lambda: torch.add(a, b, out=out), repeats, warmup=2, device=device)
    return 3 * a.numel() * a.element_size() / seconds, "torch.add"


def step_header(names):
    """The header of step_row's table."""
    return (f"{'shape':>12s} {'dtype':>9s} " + " ".join(f"{n:>22s}" for n in names)
            + "  kldiv over: eager  compile   ceiling GB/s")


def step_row(shape, dtype_name, names, seconds, moved, ceiling, memory):
    """One row: each contender's median time, the percentage of the ceiling its step's `moved` bytes reach,
    and its peak memory (MiB, when measured); then kldiv's speed-ups over eager and torch.compile."""
    cells = " ".join(f"{seconds[n] * 1e3:9.2f} ms {100 * moved / seconds[n] / ceiling:4.0f}% "
                     + (f"{memory[n] / 2**20:4.0f}M" if memory else "     ") for n in names)
    over_compile = f"{seconds['torch.compile'] / seconds['kldiv']:7.2f}x" if "torch.compile" in seconds else "      -"
    return (f"{shape:>12s} {dtype_name:>9s} {cells}  {seconds['eager'] / seconds['kldiv']:9.2f}x "
            f"{over_compile} {ceiling / 1e9:10.1f}")
