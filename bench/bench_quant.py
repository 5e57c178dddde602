"""MXFP8 quantize kernel bandwidth vs the measured HBM copy bandwidth (same run).

    python bench/bench_quant.py [--json out.json] [--rounds 3]

Bytes counted: bf16 read once + e4m3 data and E8M0 scale bytes written per direction. Each case
is timed eagerly (``do_bench``: what a caller gets, Python launch cost included; the ratio uses
this, like the copy) and in CUDA-graph replays (GPU time alone), ``--rounds`` times interleaved
with the other cases and the copy; medians are reported. The copy is timed eagerly: captured in a
graph, torch's device-to-device copy becomes a copy-engine memcpy node (~2.4 TB/s on an H100).
"""

import argparse
import statistics
import time

import torch
from triton.testing import do_bench, do_bench_cudagraph

from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.quant.api import exclusive_offsets
from shapes import write_results  # bench/ is on sys.path as a script

CASES = [
    # name, tokens, cols, rowwise, colwise, experts (None: dense), swizzled
    ("16384x7168 row", 16384, 7168, True, False, None, False),
    ("16384x7168 col", 16384, 7168, False, True, None, False),
    ("16384x7168 row+col", 16384, 7168, True, True, None, False),
    ("16384x7168 row+col swz", 16384, 7168, True, True, None, True),
    ("32768x2048 row+col grouped E=128 swz", 32768, 2048, True, True, 128, True),
    ("32768x4096 row+col grouped E=8", 32768, 4096, True, True, 8, False),
]


def copy_bandwidth(n_bytes=2 << 30):
    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200)
    return 2 * n_bytes / ms / 1e6  # GB/s, read + write


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    setups = []
    for name, t, c, r, col, e, swz in CASES:
        x = torch.randn(t, c, device="cuda", generator=gen).to(torch.bfloat16)
        offsets = None if e is None else exclusive_offsets(torch.full((e,), t // e, dtype=torch.int32, device="cuda"))
        t0 = time.perf_counter()
        quantize_mxfp8_cuda(x, r, col, offsets, swz)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0  # compile (or disk-cache load) + first launch
        nbytes = x.numel() * 2 + (r + col) * (x.numel() + x.numel() // 32)
        fn = (lambda x=x, r=r, col=col, o=offsets, s=swz: quantize_mxfp8_cuda(x, r, col, o, s))
        host = []
        for _ in range(50):  # Python-side cost of one call (the GPU runs behind it)
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        setups.append(dict(case=name, fn=fn, bytes=nbytes, first_call_s=first, host_us=1e6 * statistics.median(host), graph=[], eager=[]))
    bws = []
    for _ in range(args.rounds):
        bws.append(copy_bandwidth())
        for s in setups:
            s["graph"].append(do_bench_cudagraph(s["fn"], rep=100))
            s["eager"].append(do_bench(s["fn"], warmup=25, rep=100))
    bw = statistics.median(bws)
    rows = []
    for s in setups:
        g, e = statistics.median(s["graph"]), statistics.median(s["eager"])
        gbs = s["bytes"] / e / 1e6
        rows.append(dict(case=s["case"], ms=e, graph_ms=g, GBps=gbs, ratio=gbs / bw, first_call_s=s["first_call_s"], host_us=s["host_us"], rounds_ms=s["eager"]))
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  HBM copy (read+write, median of {args.rounds}): {bw:.0f} GB/s")
    print(f"{'case':40s} {'ms':>8s} {'graph ms':>9s} {'GB/s':>7s} {'vs copy':>8s} {'graph vs copy':>13s} {'host us':>8s} {'1st call s':>10s}")
    for r_ in rows:
        g_ratio = r_["ratio"] * r_["ms"] / r_["graph_ms"]
        print(f"{r_['case']:40s} {r_['ms']:8.4f} {r_['graph_ms']:9.4f} {r_['GBps']:7.0f} {r_['ratio']:8.2f} {g_ratio:13.2f} {r_['host_us']:8.0f} {r_['first_call_s']:10.2f}")
    write_results(args.json, rows, copy_GBps=bw, copy_rounds=bws)


if __name__ == "__main__":
    main()
