#!/usr/bin/env python3
"""kldiv.torch against what PyTorch users would pick, in a training step of
the KL-divergence loss, on the same data in one process.

Each contender f runs `loss = f(x, t, reduction='batchmean'); loss.backward()`
with x a leaf log_softmax output that requires grad (its gradient freed
between steps) and t the target probabilities:

    eager            torch.nn.functional.kl_div
    torch.compile    torch.compile(torch.nn.functional.kl_div)
    kldiv            kldiv.torch.kl_div
    kldiv compiled   torch.compile(kldiv.torch.kl_div) (kldiv's custom ops in the compiled graph)

The compiled contenders need torch 2.4 or later. For each shape and dtype it
prints the median time per step, the speed-ups of kldiv over eager and over
torch.compile, and for each contender the percentage of the bandwidth ceiling
its step reaches: a step must read x and t and write x's gradient (3 tensors
of x's size), and the ceiling is the copy loop of the C++ benchmarks (two
arrays read, a third written: bench/bandwidth_module.cpp, built in
build/bench), measured in this process next to each shape; on a GPU, or
without that module, PyTorch's out = x + t on the data. With memory on (the default),
each contender's peak memory on top of the data, from a fresh process (CPU:
the peak resident set; CUDA: the allocator's peak).

First, the cost per call on small and large tensors: kldiv.torch.kl_div
against F.kl_div, eager, interleaved, at 8 and 2^20 elements: the forward of
each reduction, and the training step.

    .venv/bin/python bench/torch_train_bench.py [--shapes 512x32768] [--dtype float32 bfloat16]
        [--device cuda] [--threads N] [--no-memory] [--json FILE]
"""
import argparse
import json
import statistics
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch
from bench_common import (add_common_arguments, peak_resident_since, reset_peak_resident, step_ceiling, step_header,
                          step_row, use_threads)
from bench_common import median_seconds as common_median_seconds

SHAPES = [(512, 32768), (32, 32000), (128, 32000), (64, 128256), (256, 128256), (512, 128256)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
REDUCTIONS = ["none", "sum", "batchmean", "mean"]


def median_seconds(function, device, repeats, inner=1, warmup=1):
    return common_median_seconds(function, repeats, inner, warmup, device)


def data(rows, vocab, dtype, device, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, device=device)
    x = logits.log_softmax(-1).to(dtype).requires_grad_()
    t = torch.randn(rows, vocab, generator=generator, device=device).softmax(-1).to(dtype)
    return x, t


def contenders():
    found = {"eager": F.kl_div}
    if hasattr(torch.library, "custom_op"):
        found["torch.compile"] = torch.compile(F.kl_div)
    found["kldiv"] = kldiv.torch.kl_div
    if hasattr(torch.library, "custom_op"):
        found["kldiv compiled"] = torch.compile(kldiv.torch.kl_div)
    return found


def step(loss_function, x, t, reduction="batchmean"):
    x.grad = None
    loss = loss_function(x, t, reduction=reduction)
    loss.backward()
    return loss


def peak_memory_child(name, rows, vocab, dtype_name, device):
    """In a fresh process: the peak memory of the steps on top of the data, in bytes."""
    x, t = data(rows, vocab, DTYPES[dtype_name], device)
    function = contenders()[name]
    # Load the code (kernels, compiled graphs) first: what the steps then add
    # is theirs, a reused gradient buffer included.
    step(function, x, t)
    x.grad = None
    # kldiv keeps a freed gradient's memory for the next step: let it go too,
    # so that the steps' peak counts it, as it counts PyTorch's new gradients.
    kldiv.torch.empty_cache()
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
                          "--device", device, "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


def per_call_costs(device, repeats):
    """kldiv.torch.kl_div against F.kl_div at 8 and 2^20 float32 elements: forward per reduction, training step."""
    rows = []
    for elements in (8, 1 << 20):
        x, t = data(1, elements, torch.float32, device) if elements == 8 else data(1024, 1024, torch.float32, device)
        x = x.detach()
        x_leaf = x.clone().requires_grad_()
        cases = [(f"forward '{r}'", (lambda r: lambda f: f(x, t, reduction=r))(r)) for r in REDUCTIONS]
        cases.append(("training step 'batchmean'", lambda f: step(f, x_leaf, t)))
        inner = 2000 if elements == 8 else (200 if device == "cuda" else 5)
        for label, call in cases:
            times = {"eager": [], "kldiv": []}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 'mean' warns on every call, alike for both
                for _ in range(repeats):  # interleaved, so that a shared machine's drifts touch both alike
                    for name, function in (("eager", F.kl_div), ("kldiv", kldiv.torch.kl_div)):
                        times[name].append(median_seconds(lambda: call(function), device, 3, inner))
            rows.append({"elements": elements, "call": label,
                         "seconds": {name: statistics.median(v) for name, v in times.items()}})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--shapes", nargs="+", default=[f"{r}x{v}" for r, v in SHAPES],
                        help="rows x vocab, e.g. 64x128256")
    parser.add_argument("--no-per-call", action="store_true", help="skip the per-call costs")
    add_common_arguments(parser, repeats=7)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.memory_child:
        name, rows, vocab, dtype_name = args.memory_child
        print(peak_memory_child(name, int(rows), int(vocab), dtype_name, args.device))
        return

    print(f"torch {torch.__version__}, kldiv library {kldiv.library_path()} ({kldiv.cpu_target()}), "
          f"device {args.device}, {args.threads} CPU threads for each")
    results = {"torch": torch.__version__, "device": args.device, "per_call": [], "steps": []}

    if not args.no_per_call:
        results["per_call"] = per_call_costs(args.device, args.repeats)
        print("\nper call, float32, eager (medians of interleaved rounds); x = F.kl_div's time over kldiv's:")
        print(f"{'elements':>9s}  {'call':28s} {'F.kl_div':>11s} {'kldiv':>11s} {'x':>6s}")
        for row in results["per_call"]:
            s = row["seconds"]
            print(f"{row['elements']:9d}  {row['call']:28s} {s['eager'] * 1e6:8.2f} us {s['kldiv'] * 1e6:8.2f} us "
                  f"{s['eager'] / s['kldiv']:5.2f}x", flush=True)

    names = list(contenders())
    if "torch.compile" not in names:
        print("\n[SKIP] the compiled contenders: torch.compile over custom ops needs torch 2.4 or later")
    print("\nloss + backward per step ('batchmean'): median ms, and % of the ceiling (measured next to each shape) "
          "for the step's bytes (read x and t, write x's gradient)")
    print(step_header(names))
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
            moved = 3 * x.numel() * x.element_size()
            ceiling, ceiling_name = step_ceiling(x, t, args.threads, args.repeats, args.device)
            memory = {} if args.no_memory else {
                name: peak_memory(name, rows, vocab, dtype_name, args.device) for name in functions}
            print(step_row(shape, dtype_name, names, seconds, moved, ceiling, memory), flush=True)
            results["steps"].append({"shape": [rows, vocab], "dtype": dtype_name, "seconds": seconds,
                                     "step_bytes": moved, "ceiling_bytes_per_second": ceiling, "ceiling": ceiling_name,
                                     "peak_bytes": memory})
            del x, t
    if args.shapes:
        print(f"(ceiling: the {ceiling_name})")
    if not args.no_memory:
        print("(the M column: peak memory on top of the data, MiB, from a fresh process per contender)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
