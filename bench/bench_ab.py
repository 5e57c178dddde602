"""A/B of two versions of the SM90 MXFP8 kernels in one process, measurements interleaved, so that
clock and power drift (these kernels run at the board's power cap; back-to-back runs of one
kernel drift by 3-5% on an H200) falls on both alike.

    python bench/bench_ab.py --other DIR [DIR ...] [--cases qwen3_uniform pro_b1 ...] [--rounds 7]

Each ``DIR`` holds another copy of the ``cute_moe`` package (e.g. ``git archive REV cute_moe | tar -x
-C DIR``), imported as ``cute_moe_other<i>``. Each round times A (this checkout), B1, B2, ... (the
others) and the torch bf16 anchor once each (``do_bench``, 100 ms), in an order that alternates by
round; the table gives the medians and each B / A. Cases: qwen3 training FC1 as the forward runs it under four
routings (``bench_routing``) and FC2 under uniform routing; the decode steps' FC1 / FC2
(``bench_fused``'s top-6 routing); the dense kernel on the training shapes (``mixtral_like_dense``, ..).
"""

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile

import torch
from triton.testing import do_bench

from bench_fused import decode_sizes, dense_weights, mx_rows, torch_fc1_swiglu  # bench/ is on sys.path as a script
from bench_routing import routings
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.quant.api import exclusive_offsets
from shapes import DECODE, SHAPES, split_sizes


def load_other(path, i):
    """The package in ``path``/cute_moe as ``cute_moe_other<i>`` (its imports are relative)."""
    tmp = tempfile.mkdtemp()
    shutil.copytree(os.path.join(path, "cute_moe"), os.path.join(tmp, f"cute_moe_other{i}"))
    sys.path.insert(0, tmp)
    return importlib.import_module(f"cute_moe_other{i}.kernels.sm90.mx_grouped_gemm").mx_grouped_gemm_sm90


def problem(case):
    """(sizes, K, H, fc, dense) of a case name: ``qwen3_<routing>[_fc2]``, ``<pro|flash>_b<B>[_fc2]``,
    or ``<training shape>_dense[_fc2]`` (the dense kernel: weights as their exact bf16 too)."""
    fc = 2 if case.endswith("_fc2") else 1
    name = case.removesuffix("_fc2")
    if name.endswith("_dense"):
        shape = name.removesuffix("_dense")
        e, tpe, k, h = SHAPES[shape]
        return split_sizes(shape, e, tpe), k, h, fc, True
    if name.startswith("qwen3_"):
        _, _, k, h = SHAPES["qwen3_30b"]
        return routings()[name.removeprefix("qwen3_")], k, h, fc, False
    shape, batch = name.split("_b")
    e, k, h = DECODE[shape]
    return decode_sizes(e, int(batch), torch.Generator().manual_seed(0)), k, h, fc, False


def calls(case, kernels):
    """The torch anchor and, per kernel version, the call as the fused forward makes it."""
    sizes, k, h, fc, dense = problem(case)
    e, t = sizes.numel(), int(sizes.sum())
    off = exclusive_offsets(sizes.to(torch.int32).cuda())
    torch.manual_seed(0)
    if fc == 1:
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        p = torch.rand(t, device="cuda")
        xd = quantize_mxfp8_cuda(x, row_dequant=True)[0]
        w = torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        wq, ws = (None, None) if dense else mx_rows(w)
        wd = dense_weights(w) if dense else None
        wt = w.transpose(1, 2)
        anchor = lambda: torch_fc1_swiglu(x, wt, off[1:], h)  # noqa: E731
        ours = [lambda f=f: f(None, None, wq, ws, off, swiglu=True, probs=p, h_dequant=True, h_col=True,
                              a_dequant=xd, b_dequant=wd) for f in kernels]
    else:
        hb = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        hd = quantize_mxfp8_cuda(hb, row_dequant=True)[0]
        w = torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5
        wq, ws = (None, None) if dense else mx_rows(w)
        wd = dense_weights(w) if dense else None
        wt = w.transpose(1, 2)
        anchor = lambda: torch._grouped_mm(hb, wt, offs=off[1:])  # noqa: E731
        ours = [lambda f=f: f(None, None, wq, ws, off, a_dequant=hd, b_dequant=wd) for f in kernels]
    return anchor, ours


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", nargs="+", required=True, help="directories holding other cute_moe packages")
    ap.add_argument("--cases", nargs="+", default=["qwen3_uniform", "qwen3_zipf", "qwen3_random", "qwen3_258_each",
                                                   "qwen3_uniform_fc2", "pro_b1", "flash_b1", "pro_b16"])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90

    kernels = [mx_grouped_gemm_sm90] + [load_other(path, i + 1) for i, path in enumerate(args.other)]
    names = [f"B{i + 1}" for i in range(len(args.other))]
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  A = this checkout, "
          + ", ".join(f"{n} = {p}" for n, p in zip(names, args.other)))
    print(f"{'case':20} {'torch':>8} {'A':>8} " + " ".join(f"{n:>8} {n + '/A':>6}" for n in names)
          + f" {'torch/A':>7}  (us, medians of {args.rounds})")
    for case in args.cases:
        anchor, ours = calls(case, kernels)
        for fn in ours:
            fn()  # compile outside the timing
        torch.cuda.synchronize()
        fns = [anchor, *ours]
        times = [[] for _ in fns]
        for r in range(args.rounds):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
            for i in order:
                times[i].append(1000 * do_bench(fns[i], warmup=10, rep=100))
        t_torch, t_a, *t_b = (statistics.median(x) for x in times)
        print(f"{case:20} {t_torch:8.1f} {t_a:8.1f} " + " ".join(f"{t:8.1f} {t / t_a:6.3f}" for t in t_b)
              + f" {t_torch / t_a:7.2f}", flush=True)
        del anchor, ours, fns
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
