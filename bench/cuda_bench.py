#!/usr/bin/env python3
"""kldiv's CUDA kernels against PyTorch on one NVIDIA GPU, in one run.

Measures, on the same tensors and in the same process: kldiv (through its C
API, on PyTorch's current stream), PyTorch eager F.kl_div, torch.compile(F.kl_div),
Liger-Kernel's LigerKLDivLossFunction when --liger names a directory it can be
imported from, and a device-to-device copy as the bandwidth ceiling.
Forward, and forward+backward (kldiv's fused pass against each baseline's
forward then backward), float32, bfloat16 and float16, each reduction.

    python3 bench/cuda_bench.py --lib build/runtime/libkldiv_aot.so [--liger DIR] [--json FILE]

Times are CUDA-event medians over repeated back-to-back calls; GB/s counts the
bytes a kernel must move (inputs read, outputs written).
"""
import argparse
import ctypes
import json
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

DTYPES = {"float32": (torch.float32, 0), "bfloat16": (torch.bfloat16, 3), "float16": (torch.float16, 2)}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
SHAPES = [(32, 32768), (512, 32768), (8192, 32768)]


class KlTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int32),
                ("sizes", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("device", ctypes.c_int)]


class Kldiv:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.kldiv_last_error.restype = ctypes.c_char_p
        for name in ("kldiv_forward", "kldiv_forward_backward", "kldiv_backward"):
            getattr(self.lib, name).restype = ctypes.c_int
        self.lib.kldiv_set_thread_cuda_stream.argtypes = [ctypes.c_void_p]
        self.keep = []

    def view(self, t, code):
        sizes = (ctypes.c_int64 * max(t.dim(), 1))(*t.shape)
        strides = (ctypes.c_int64 * max(t.dim(), 1))(*t.stride())
        self.keep += [sizes, strides]
        return KlTensor(t.data_ptr(), code, t.dim(), sizes, strides, 1)

    def check(self, rc):
        if rc != 0:
            raise RuntimeError("kldiv: " + self.lib.kldiv_last_error().decode())

    def use_current_stream(self):
        self.lib.kldiv_set_thread_cuda_stream(ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))


def time_us(fn, iters, repeats=5):
    """Median microseconds per call of `fn` over `repeats` runs of `iters` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / iters)
    return statistics.median(samples)


def iterations(elements):
    return max(5, min(200, int(2e9 / (elements * 8))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libkldiv_aot.so or libkldiv.so")
    ap.add_argument("--liger", help="directory to import liger_kernel from (not shipped with kldiv)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--compile-budget", type=float, default=240.0,
                    help="seconds of torch.compile baselines before the rest are skipped")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("[SKIP] no CUDA GPU visible to this torch")
        return

    if args.liger:
        sys.path.insert(0, args.liger)
    liger = None
    try:
        from liger_kernel.ops.kl_div import LigerKLDivLossFunction as liger  # noqa: N813
    except Exception as e:  # any import failure: no Liger baseline
        print(f"# Liger-Kernel: not importable ({type(e).__name__}: {e}); its columns are empty")

    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    # One compiled graph per (dtype, shape, reduction, pass): all come from
    # one function, so lift dynamo's per-function recompile limit.
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    kl = Kldiv(args.lib)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}, CUDA {torch.version.cuda}")

    # Bandwidth ceiling: a device-to-device copy of 1 GiB, bytes read + written.
    src = torch.empty(2 ** 28, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy_us = time_us(lambda: dst.copy_(src), 20)
    copy_gbps = 2 * src.numel() * 4 / copy_us / 1e3
    del src, dst
    print(f"# copy ceiling: {copy_gbps:.0f} GB/s ({copy_us:.1f} us for 2 x 1 GiB)")

    compile_spent = 0.0
    compiled = {}

    def compiled_fn(key, make):
        nonlocal compile_spent
        if key not in compiled:
            if compile_spent > args.compile_budget:
                return None
            compiled[key] = torch.compile(make(), dynamic=False)
        return compiled[key]

    rows = []

    def save(rows):
        # After every row, so that a run cut short keeps what it measured.
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(0), "copy_GBps": copy_gbps, "rows": rows}, f,
                          indent=1)

    header = ("dtype", "shape", "reduction", "pass", "kldiv_us", "kldiv_GBps", "pct_copy", "eager_us", "compile_us",
              "liger_us", "best_baseline", "speedup_vs_best")
    print("\t".join(header))
    for dname, (tdtype, code) in DTYPES.items():
        for shape in SHAPES:
            n = shape[0] * shape[1]
            elem = torch.tensor([], dtype=tdtype).element_size()
            torch.manual_seed(0)
            x = torch.randn(shape, device=dev, dtype=torch.float32).log_softmax(-1).to(tdtype)
            t = torch.randn(shape, device=dev, dtype=torch.float32).softmax(-1).to(tdtype)
            grad = torch.empty_like(x)
            full = torch.empty_like(x)
            scalar = torch.empty((), device=dev, dtype=tdtype)
            iters = iterations(n)
            for rname, rcode in REDUCTIONS.items():
                if shape != SHAPES[-1] and rname != "batchmean":
                    continue  # every reduction at the largest shape; batchmean at each
                out = full if rname == "none" else scalar
                xv, tv, ov, gv = kl.view(x, code), kl.view(t, code), kl.view(out, code), kl.view(grad, code)
                kl.use_current_stream()
                ours_fwd = time_us(lambda: kl.check(kl.lib.kldiv_forward(ctypes.byref(xv), ctypes.byref(tv), rcode, 0,
                                                                          ctypes.byref(ov))), iters)
                ours_fb = time_us(lambda: kl.check(kl.lib.kldiv_forward_backward(
                    ctypes.byref(xv), ctypes.byref(tv), rcode, 0, ctypes.byref(ov), ctypes.byref(gv))), iters)
                # Check the result once against eager, in float64.
                ref = F.kl_div(x.double(), t.double(), reduction=rname)
                kl.check(kl.lib.kldiv_forward(ctypes.byref(xv), ctypes.byref(tv), rcode, 0, ctypes.byref(ov)))
                torch.cuda.synchronize()
                err = ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                tol = 1e-5 if tdtype == torch.float32 else 1e-2
                if not err <= tol:
                    raise RuntimeError(f"kldiv result off by {err:.3g} relative ({dname} {shape} {rname})")

                def eager_fwd():
                    return F.kl_div(x, t, reduction=rname)

                xg = x.detach().clone().requires_grad_(True)
                ones = torch.ones_like(x) if rname == "none" else None

                def fwd_bwd(fn):
                    def run():
                        xg.grad = None
                        loss = fn(xg, t)
                        loss.backward(ones)
                    return run

                base = {"eager": (time_us(eager_fwd, iters),
                                  time_us(fwd_bwd(lambda a, b: F.kl_div(a, b, reduction=rname)), iters))}
                start = time.time()
                cf = compiled_fn((dname, shape, rname), lambda: (lambda a, b: F.kl_div(a, b, reduction=rname)))
                if cf is not None:
                    base["compile"] = (time_us(lambda: cf(x, t), iters), time_us(fwd_bwd(cf), iters))
                compile_spent += time.time() - start
                if liger is not None:
                    base["liger"] = (time_us(lambda: liger.apply(x, t, rname, False), iters),
                                     time_us(fwd_bwd(lambda a, b: liger.apply(a, b, rname, False)), iters))
                for pname, ours, moved in (("forward", ours_fwd, (2 + (rname == "none")) * n * elem),
                                           ("forward+backward", ours_fb, (3 + (rname == "none")) * n * elem)):
                    k = 0 if pname == "forward" else 1
                    times = {b: v[k] for b, v in base.items()}
                    best = min(times, key=times.get)
                    gbps = moved / ours / 1e3
                    row = {"dtype": dname, "shape": f"{shape[0]}x{shape[1]}", "reduction": rname, "pass": pname,
                           "kldiv_us": ours, "kldiv_GBps": gbps, "pct_copy": 100 * gbps / copy_gbps,
                           "eager_us": times.get("eager"), "compile_us": times.get("compile"),
                           "liger_us": times.get("liger"), "best_baseline": best,
                           "speedup_vs_best": times[best] / ours, "copy_GBps": copy_gbps}
                    rows.append(row)
                    save(rows)
                    print("\t".join("" if row[h] is None else (f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]))
                                    for h in header), flush=True)
                kl.lib.kldiv_clear_thread_cuda_stream()
            del x, t, grad, full
            torch.cuda.empty_cache()
    save(rows)


if __name__ == "__main__":
    main()
