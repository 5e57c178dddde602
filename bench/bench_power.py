"""SM clock and board power while one FC1 kernel runs back to back (issue 3): on the H200 every
large GEMM here runs at the 700 W cap, so the sustained clock, not the tensor cores' duty cycle,
sets the time (bench/RESULTS.md, session 11).

    python bench/bench_power.py [--shapes mixtral_like] [--seconds 3]

Per shape, each of: ours FC1 as the fused forward runs it (z + h as MXFP8 columnwise and dequantized
rowwise), ours GEMM alone (bf16 z only), torch ``_grouped_mm``, torch ``_grouped_mm`` + SwiGLU, is
launched back to back for ``--seconds`` while ``nvidia-smi`` is sampled every 0.1 s; printed: ms per
call over the whole window, median SM clock and power over its last three quarters.
"""

import argparse
import statistics
import subprocess
import threading
import time

import torch

import bench_fused
from bench_fused import dense_weights, fc1_problem, mx_rows
from cute_moe.functional import _FusedSm90Ops
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90


def sample(stop, out):
    while not stop.is_set():
        r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True).stdout.split(",")
        out.append((float(r[0]), float(r[1])))
        time.sleep(0.1)


def sustained(fn, seconds):
    fn()
    torch.cuda.synchronize()
    stop, out = threading.Event(), []
    th = threading.Thread(target=sample, args=(stop, out))
    th.start()
    t0, calls = time.time(), 0
    while time.time() - t0 < seconds:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        calls += 20
    elapsed = time.time() - t0
    stop.set()
    th.join()
    out = out[len(out) // 4:]  # past the ramp
    return elapsed / calls * 1e3, statistics.median(c for c, _ in out), statistics.median(w for _, w in out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["mixtral_like"])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    for name in args.shapes:
        e, h, off, x, w1, p, xd = fc1_problem(name)
        if _FusedSm90Ops.dense_weights(x.shape[0], e):
            weights, form = dict(b_q=None, b_s=None, b_dequant=dense_weights(w1)), "dense"
        else:
            w1q, w1s = mx_rows(w1)
            weights, form = dict(b_q=w1q, b_s=w1s), "swap"
        w1t = w1.transpose(1, 2)
        runs = {f"ours FC1 ({form})": lambda: mx_grouped_gemm_sm90(None, None, offsets=off, swiglu=True, probs=p,
                                                                   h_dequant=True, h_col=True, a_dequant=xd,
                                                                   **weights),
                f"ours z only ({form})": lambda: mx_grouped_gemm_sm90(None, None, offsets=off, a_dequant=xd, **weights),
                "torch _grouped_mm": lambda: torch._grouped_mm(x, w1t, offs=off[1:]),
                "torch FC1": lambda: bench_fused.torch_fc1_swiglu(x, w1t, off[1:], h)}
        for label, fn in runs.items():
            ms, mhz, watts = sustained(fn, args.seconds)
            print(f"{name:14s} {label:22s} {ms:8.3f} ms/call  SM clock {mhz:5.0f} MHz  power {watts:4.0f} W", flush=True)
        runs.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
