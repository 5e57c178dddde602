"""Host (CPU) cost per call against GPU time, decode steps: where an eager caller waits on Python.

    python bench/bench_host.py [--shapes flash pro] [--batch 1 16] [--profile] [--json out.json]

Per decode shape (top-6 routing of B tokens, as bench_fused) and per call: the torch bf16 anchors
(FC1 ``_grouped_mm`` + SwiGLU, FC2 ``_grouped_mm``, the MLP forward), the SM90 kernels' front door
as bench_fused calls them (FC1 with the columnwise h a training forward writes, FC2), and
``grouped_mlp``'s forward in ``no_grad`` under ``autocast(MXFP8BlockScaling(cache_weights=True))``
(weights from the weight cache; also without it), value checks off.
Columns, us: ``cpu`` = wall time of 20 calls issued without a sync / 20 (median of 15), ``gpu`` =
a CUDA graph of 10 calls replayed / 10 (``do_bench``), ``eager`` = ``do_bench`` of the plain call
(what an eager loop gets: the larger of the two, roughly). ``--profile``: cProfile of 300 calls of
each cute_moe row, top functions by own time.
"""

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from triton.testing import do_bench

import cute_moe
from bench_fused import decode_sizes, mx_rows, torch_fc1_swiglu  # bench/ is on sys.path as a script
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets
from shapes import DECODE, write_results


def cpu_us(fn, calls=20, reps=15):
    torch.cuda.synchronize()
    per = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter() - t0) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(per)


def gpu_us(fn, calls=10):
    """GPU time per call from a CUDA graph of ``calls`` calls (None if the call cannot be captured)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
    except Exception as exc:  # noqa: BLE001 (a row without a graph time, not a failed run)
        print(f"  (no CUDA graph: {type(exc).__name__}: {exc})")
        return None
    return do_bench(g.replay, warmup=10, rep=100) * 1000 / calls


def profile(name, fn, calls=300):
    fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    print(f"\n--- cProfile: {name}, {calls} calls (tottime / cumtime in s) ---")
    pstats.Stats(pr).sort_stats("tottime").print_stats(18)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["flash", "pro"], choices=list(DECODE))
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cute_moe.set_split_size_checks(False)  # no sync per call: what a decode loop runs
    rows = []
    for shape in args.shapes:
        e, k, h = DECODE[shape]
        w1 = torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        w2 = torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5
        w1q, w1s = mx_rows(w1)
        w2q, w2s = mx_rows(w2)
        w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)
        for batch in args.batch:
            sizes = decode_sizes(e, batch, torch.Generator().manual_seed(0)).cuda()
            t = int(sizes.sum())
            off = exclusive_offsets(sizes.to(torch.int32))
            x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
            p = torch.rand(t, device="cuda")
            xd = quantize_mxfp8_cuda(x, row_dequant=True)[0]
            hb = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
            hd = quantize_mxfp8_cuda(hb, row_dequant=True)[0]

            def torch_mlp():
                v = torch_fc1_swiglu(x, w1t, off[1:], h).reshape(t, h) * p[:, None].bfloat16()
                return torch._grouped_mm(v, w2t, offs=off[1:])

            def ours_mlp(cache=True):
                recipe = cute_moe.MXFP8BlockScaling(cache_weights=cache)
                with torch.no_grad(), cute_moe.autocast(recipe=recipe):
                    return cute_moe.grouped_mlp(x, w1, w2, sizes, p)

            cases = [
                ("torch FC1+SwiGLU", lambda: torch_fc1_swiglu(x, w1t, off[1:], h)),
                ("ours FC1", lambda: mx_grouped_gemm_sm90(None, None, w1q, w1s, off, swiglu=True, probs=p,
                                                          h_dequant=True, h_col=True, a_dequant=xd)),
                ("torch FC2", lambda: torch._grouped_mm(hb, w2t, offs=off[1:])),
                ("ours FC2", lambda: mx_grouped_gemm_sm90(None, None, w2q, w2s, off, a_dequant=hd)),
                ("torch MLP fwd", torch_mlp),
                ("grouped_mlp fwd (cached weights)", ours_mlp),
                ("grouped_mlp fwd (cache_weights=False)", lambda: ours_mlp(False)),
            ]
            print(f"\n{shape} B={batch} ({t} routed tokens, E={e}, K={k}, H={h}); us per call")
            print(f"{'call':40s} {'cpu':>8s} {'gpu':>8s} {'eager':>8s}")
            for name, fn in cases:
                slow = "cache_weights=False" in name
                if slow:
                    cute_moe.clear_weight_cache()  # (pro's weights: the cached copies and a fresh pass do not both fit)
                fn()  # compile / fill the weight cache outside the timing
                r = dict(shape=shape, batch=batch, call=name,
                         cpu_us=cpu_us(fn, calls=3 if slow else 20, reps=5 if slow else 15),
                         gpu_us=gpu_us(fn), eager_us=do_bench(fn, warmup=10, rep=100) * 1000)
                rows.append(r)
                gpu = "-" if r["gpu_us"] is None else f"{r['gpu_us']:8.1f}"
                print(f"{name:40s} {r['cpu_us']:8.1f} {gpu:>8s} {r['eager_us']:8.1f}", flush=True)
            if args.profile:
                profile(f"{shape} B={batch} ours FC1", cases[1][1])
                profile(f"{shape} B={batch} grouped_mlp fwd (cached weights)", cases[5][1])
        w1 = w2 = w1q = w1s = w2q = w2s = w1t = w2t = None  # frees them
        cute_moe.clear_weight_cache()
        torch.cuda.empty_cache()
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
