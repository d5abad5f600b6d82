#!/usr/bin/env python3
"""Distillation from logits: kldiv.torch.distill_kl against the composite
PyTorch users write, in a training step, on the same data in one process.

    loss = kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, reduction='batchmean')
    loss.backward()    # the student's logits s require grad; the teacher's t do not

Contenders, on the same data:

    eager            the composite above
    torch.compile    torch.compile of the composite
    kldiv            kldiv.torch.distill_kl (its fused pass: the loss and the
                     student's gradient from one pass over each row)
    kldiv compiled   torch.compile of a function calling kldiv.torch.distill_kl

The compiled contenders need torch 2.4 or later. Prints the median time per
step (a contender's steps back to back, after one to warm up), the
percentage of the bandwidth ceiling each step reaches (a step must read s and
t and write s's gradient; the ceiling is the copy loop of the C++ benchmarks,
two arrays read and a third written, measured in this process next to each
shape; on a GPU, PyTorch's out = s + t), the speed-ups of kldiv, and each
contender's peak memory on top of the data (the peak resident set of a fresh
process per contender), with what it needs beyond the gradient as a share of
the logits.

    .venv/bin/python bench/distill_bench.py [--shapes 4096x32000 8192x128256] [--dtype float32 bfloat16]

With --device cuda (any NVIDIA GPU) the same on the GPU: kldiv's CUDA kernels
(experimental, so this sets KLDIV_DISTILL_CUDA=1), times from synchronised
steps, and peak memory from PyTorch's CUDA allocator (its peak over the data
during two steps).
"""
import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch
from bench_common import (add_common_arguments, median_seconds, peak_resident_since, reset_peak_resident,
                          step_ceiling, step_header, step_row, use_threads)

SHAPES = ["4096x32000", "1024x128256"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
TEMPERATURE = 2.0


def composite(s, t):
    return F.kl_div(F.log_softmax(s / TEMPERATURE, -1), F.log_softmax(t / TEMPERATURE, -1), log_target=True,
                    reduction="batchmean")


def fused(s, t):
    return kldiv.torch.distill_kl(s, t, TEMPERATURE, "batchmean")


def contenders():
    found = {"eager": composite}
    if hasattr(torch.library, "custom_op"):
        found["torch.compile"] = torch.compile(composite)
    found["kldiv"] = fused
    if hasattr(torch.library, "custom_op"):
        found["kldiv compiled"] = torch.compile(fused)
    return found


def data(rows, vocab, dtype, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    s = (torch.randn(rows, vocab, generator=generator) * 2).to(device=device, dtype=dtype).requires_grad_()
    t = (torch.randn(rows, vocab, generator=generator) * 2).to(device=device, dtype=dtype)
    return s, t


def step(function, s, t):
    s.grad = None
    loss = function(s, t)
    loss.backward()
    return loss


def peak_cuda_memory(function, s, t):
    """The CUDA allocator's peak over the data during two steps, in bytes."""
    step(function, s, t)
    s.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step(function, s, t)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_memory_child(name, rows, vocab, dtype_name):
    """In a fresh process: the peak memory of the steps on top of the data, in bytes."""
    s, t = data(rows, vocab, DTYPES[dtype_name])
    function = contenders()[name]
    # Load the code (kernels, compiled graphs) first: what the steps then add
    # is theirs, a reused gradient buffer included.
    step(function, s, t)
    s.grad = None
    # kldiv keeps a freed gradient's memory for the next step: let it go too,
    # so that the steps' peak counts it, as it counts PyTorch's new gradients.
    kldiv.torch.empty_cache()
    base = reset_peak_resident()
    for _ in range(2):
        step(function, s, t)
    return peak_resident_since(base)


def peak_memory(name, rows, vocab, dtype_name, threads):
    run = subprocess.run([sys.executable, __file__, "--memory-child", name, str(rows), str(vocab), dtype_name,
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="rows x vocab, e.g. 8192x128256")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_common_arguments(parser, repeats=3)
    args = parser.parse_args()
    use_threads(args.threads)
    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("[SKIP] --device cuda: no CUDA GPU visible to this torch")
            return
        os.environ["KLDIV_DISTILL_CUDA"] = "1"  # kldiv's CUDA kernels, experimental
    if args.memory_child:
        name, rows, vocab, dtype_name = args.memory_child
        print(peak_memory_child(name, int(rows), int(vocab), dtype_name))
        return

    where = (torch.cuda.get_device_name() if device == "cuda"
             else f"{kldiv.cpu_target()}, {args.threads} CPU threads for each")
    print(f"torch {torch.__version__}, kldiv library {kldiv.library_path()} ({where}); T = {TEMPERATURE}")
    names = list(contenders())
    if "torch.compile" not in names:
        print("[SKIP] the compiled contenders: torch.compile over custom ops needs torch 2.4 or later")
    print("\nloss + backward per step ('batchmean'): median ms, and % of the ceiling (measured next to each shape) "
          "for the step's bytes (read s and t, write s's gradient)")
    print(step_header(names))
    results = {"torch": torch.__version__, "temperature": TEMPERATURE, "device": device, "steps": []}
    for shape in args.shapes:
        rows, vocab = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtype:
            s, t = data(rows, vocab, DTYPES[dtype_name], device=device)
            functions = contenders()
            # Each contender's steps back to back, as a training loop calls it
            # (interleaving them would hand each one the other's memory state).
            seconds = {name: median_seconds(lambda: step(function, s, t), args.repeats, warmup=1, device=device)
                       for name, function in functions.items()}
            moved = 3 * s.numel() * s.element_size()
            ceiling, ceiling_name = step_ceiling(s, t, args.threads, args.repeats, device)
            if args.no_memory:
                memory = {}
            elif device == "cuda":
                memory = {name: peak_cuda_memory(function, s, t) for name, function in functions.items()}
            else:
                memory = {name: peak_memory(name, rows, vocab, dtype_name, args.threads) for name in functions}
            print(step_row(shape, dtype_name, names, seconds, moved, ceiling, memory), flush=True)
            logits = s.numel() * s.element_size()
            if memory:
                print(f"{'':22s} beyond the gradient, % of the logits: " + ", ".join(
                    f"{n} {100 * (memory[n] - logits) / logits:.2f}%" for n in names), flush=True)
            results["steps"].append({"shape": [rows, vocab], "dtype": dtype_name, "seconds": seconds,
                                     "step_bytes": moved, "ceiling_bytes_per_second": ceiling, "ceiling": ceiling_name,
                                     "peak_bytes": memory, "logits_bytes": logits})
            del s, t
    if args.shapes:
        print(f"(ceiling: the {ceiling_name})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
