#!/usr/bin/env python3
"""kldiv.torch against PyTorch in a training step: loss plus backward on
log_softmax outputs, (rows x vocab) from 32x32000 to 512x128256, on the same
data in one process.

Contenders: kldiv.torch.kl_div, F.kl_div eager, and torch.compile(F.kl_div)
where torch has torch.compile. Each step is `loss = kl_div(x, t, 'batchmean');
loss.backward()` with x a leaf that requires grad (its gradient freed between
steps). Prints the median time per step, the speed-up over eager, kldiv's
GB/s against the bytes its step must move, with the percentage of a copy's
bandwidth measured in the same run, and each contender's peak memory on top of
the data (CUDA: the allocator's peak; CPU: the peak resident set of a fresh
process per contender).

First, the cost of the Python layer: kldiv.torch.kl_div at 2^20 elements
against the same C call (kldiv_forward through ctypes with prepared
descriptors), interleaved.

    .venv/bin/python bench/torch_train_bench.py [--device cuda] [--dtype float32 bfloat16] [--json FILE]
"""
import argparse
import ctypes
import json
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch
from kldiv import _lib
from bench_common import add_common_arguments, peak_resident_since, reset_peak_resident, result_line, use_threads
from bench_common import median_seconds as common_median_seconds

SHAPES = [(32, 32000), (128, 32000), (64, 128256), (256, 128256), (512, 128256)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def median_seconds(function, device, repeats, inner=1, warmup=1):
    return common_median_seconds(function, repeats, inner, warmup, device)


def data(rows, vocab, dtype, device, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, device=device)
    x = logits.log_softmax(-1).to(dtype).requires_grad_()
    t = torch.randn(rows, vocab, generator=generator, device=device).softmax(-1).to(dtype)
    return x, t


def contenders():
    found = {"kldiv": kldiv.torch.kl_div, "eager": F.kl_div}
    if hasattr(torch, "compile"):
        found["torch.compile"] = torch.compile(F.kl_div)
    return found


def step(loss_function, x, t):
    x.grad = None
    loss = loss_function(x, t, reduction="batchmean")
    loss.backward()
    return loss


def copy_bandwidth(x, t, device, repeats):
    """Bytes per second of out = x + t (two reads, one write) on this data."""
    a, b = x.detach(), t
    out = torch.empty_like(a)
    seconds = median_seconds(lambda: torch.add(a, b, out=out), device, repeats)
    return 3 * a.numel() * a.element_size() / seconds


def peak_memory_child(name, rows, vocab, dtype_name, device):
    """In a fresh process: the peak memory of the steps on top of the data, in bytes."""
    x, t = data(rows, vocab, DTYPES[dtype_name], device)
    function = contenders()[name]
    # Load the code (kernels, compiled graphs) on a small tensor: what the steps
    # then add is theirs, a reused gradient buffer included.
    small_x, small_t = data(2, 64, DTYPES[dtype_name], device)
    step(function, small_x, small_t)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_resident()
    for _ in range(3):
        step(function, x, t)
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return peak_resident_since(base)


def peak_memory(name, rows, vocab, dtype_name, device):
    run = subprocess.run([sys.executable, __file__, "--memory-child", name, str(rows), str(vocab), dtype_name,
                          "--device", device, "--threads", str(torch.get_num_threads())], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


def python_layer_cost(device, repeats):
    """kldiv.torch.kl_div against kldiv_forward with prepared descriptors, 2^20 float32 elements."""
    x, t = data(1024, 1024, torch.float32, device)
    x = x.detach()
    out = torch.empty((), device=device)
    sizes = (ctypes.c_int64 * 2)(1024, 1024)
    strides = (ctypes.c_int64 * 2)(1024, 1)
    kind = _lib.DEVICE_CUDA if device == "cuda" else _lib.DEVICE_CPU
    views = [_lib.Tensor(x.data_ptr(), _lib.FLOAT32, 2, sizes, strides, kind),
             _lib.Tensor(t.data_ptr(), _lib.FLOAT32, 2, sizes, strides, kind),
             _lib.Tensor(out.data_ptr(), _lib.FLOAT32, 0, None, None, kind)]
    refs = [ctypes.byref(v) for v in views]
    if device == "cuda":
        _lib.lib.kldiv_set_thread_cuda_stream(torch.cuda.current_stream().cuda_stream)
    forward = _lib.lib.kldiv_forward

    def c_call():
        _lib.check(forward(refs[0], refs[1], _lib.REDUCTIONS["sum"], 0, refs[2]))

    def python_call():
        kldiv.torch.kl_div(x, t, reduction="sum")

    def eager_call():
        F.kl_div(x, t, reduction="sum")

    inner = 200 if device == "cuda" else 20
    rounds = {"C call": [], "kldiv.torch": [], "eager": []}
    for _ in range(repeats):  # interleaved, so that drifts of a shared machine touch all alike
        for name, function in (("C call", c_call), ("kldiv.torch", python_call), ("eager", eager_call)):
            rounds[name].append(median_seconds(function, device, 3, inner))
    return {name: statistics.median(values) for name, values in rounds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--shapes", nargs="+", default=[f"{r}x{v}" for r, v in SHAPES],
                        help="rows x vocab, e.g. 64x128256")
    add_common_arguments(parser, repeats=7)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.memory_child:
        name, rows, vocab, dtype_name = args.memory_child
        print(peak_memory_child(name, int(rows), int(vocab), dtype_name, args.device))
        return

    print(f"torch {torch.__version__}, kldiv library {kldiv.library_path()} ({kldiv.cpu_target()}), "
          f"device {args.device}, {args.threads} CPU threads for each")
    results = {"torch": torch.__version__, "device": args.device, "python_layer": {}, "steps": []}

    cost = python_layer_cost(args.device, args.repeats)
    results["python_layer"] = cost
    print("\nforward 'sum', 1024x1024 float32 (2^20 elements), per call:")
    for name, seconds in cost.items():
        print(f"  {name:12s} {seconds * 1e6:9.1f} us   {seconds / cost['C call']:5.2f}x the C call")

    names = list(contenders())
    print(f"\nloss + backward per step ('batchmean'); x{'eager':>6s} = eager's time over kldiv's; "
          "ceiling: a copy (x + t) in this run")
    header = "  ".join(f"{n:>14s}" for n in names)
    print(f"{'shape':>12s} {'dtype':>9s}  {header}  {'x eager':>8s} {'kldiv GB/s':>10s} {'% ceil':>6s}  peak MiB "
          + " / ".join(names))
    for shape in args.shapes:
        rows, vocab = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtype:
            x, t = data(rows, vocab, DTYPES[dtype_name], args.device)
            functions = contenders()
            times = {name: [] for name in functions}
            for function in functions.values():
                # Warm up: kernels loaded or compiled, the allocator's pools grown.
                median_seconds(lambda: step(function, x, t), args.device, 1, warmup=3)
            for _ in range(args.repeats):
                for name, function in functions.items():
                    times[name].append(median_seconds(lambda: step(function, x, t), args.device, 1))
            seconds = {name: statistics.median(v) for name, v in times.items()}
            # kldiv's step: the fused pass reads x and t and writes the gradient;
            # backward reads it and writes x.grad.
            moved = 5 * x.numel() * x.element_size()
            ceiling = copy_bandwidth(x, t, args.device, args.repeats)
            achieved = moved / seconds["kldiv"]
            memory = {} if args.no_memory else {
                name: peak_memory(name, rows, vocab, dtype_name, args.device) for name in functions}
            print(result_line(shape, dtype_name, names, seconds, achieved, ceiling, memory, 3), flush=True)
            results["steps"].append({"shape": [rows, vocab], "dtype": dtype_name, "seconds": seconds,
                                     "kldiv_bytes": moved, "copy_bytes_per_second": ceiling,
                                     "peak_bytes": memory})
            del x, t
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
