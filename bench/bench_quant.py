"""MXFP8 quantize kernel bandwidth vs the measured HBM copy bandwidth.

python bench/bench_quant.py [--json out.json]
Bytes counted: bf16 read once + e4m3 (and scale) bytes written per output direction.
"""

import argparse
import json
import time

import torch
from triton.testing import do_bench

from cute_moe.quant.api import exclusive_offsets, quantize_mxfp8
from cute_moe.kernels.quantize import quantize_mxfp8_cuda


def copy_bandwidth(n_bytes=2 << 30):
    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200)
    return 2 * n_bytes / ms / 1e6  # GB/s, read + write


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bw = copy_bandwidth()
    rows = []
    cases = [
        ("16384x7168 row", 16384, 7168, True, False, None, False),
        ("16384x7168 col", 16384, 7168, False, True, None, False),
        ("16384x7168 row+col", 16384, 7168, True, True, None, False),
        ("16384x7168 row+col swz", 16384, 7168, True, True, None, True),
        ("32768x2048 row+col grouped E=128 swz", 32768, 2048, True, True, 128, True),
        ("32768x4096 row+col grouped E=8", 32768, 4096, True, True, 8, False),
    ]
    for name, t, c, r, col, e, swz in cases:
        x = torch.randn(t, c, device="cuda").to(torch.bfloat16)
        offsets = None
        if e:
            sizes = torch.full((e,), t // e, dtype=torch.int32, device="cuda")
            offsets = exclusive_offsets(sizes)
        t0 = time.perf_counter()
        quantize_mxfp8_cuda(x, r, col, offsets, swz)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        ms = do_bench(lambda: quantize_mxfp8_cuda(x, r, col, offsets, swz), warmup=25, rep=200)
        nbytes = x.numel() * 2 + (r + col) * (x.numel() + x.numel() // 32)
        gbs = nbytes / ms / 1e6
        rows.append(dict(case=name, ms=ms, GBps=gbs, ratio=gbs / bw, first_call_s=first))
    print(f"\nHBM copy bandwidth (read+write): {bw:.0f} GB/s   GPU: {torch.cuda.get_device_name()}")
    print(f"{'case':48s} {'ms':>8s} {'GB/s':>8s} {'vs copy':>8s} {'1st call s':>10s}")
    for r_ in rows:
        print(f"{r_['case']:48s} {r_['ms']:8.4f} {r_['GBps']:8.0f} {r_['ratio']:8.2f} {r_['first_call_s']:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), copy_GBps=bw, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
