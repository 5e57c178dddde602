"""SM90 CuTe DSL grouped GEMM (bf16) vs torch._grouped_mm on the FC2 shapes (same run).

    python bench/bench_grouped_gemm.py [--json out.json]

FC2 = [T, H] x [E, K, H] -> [T, K] (REFERENCE §7). Both sides get the same device offsets.
"""

import argparse

import torch
from triton.testing import do_bench

from cute_moe.kernels.sm90.grouped_gemm import grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets
from shapes import SHAPES as ALL_SHAPES, write_results  # bench/ is on sys.path when run as a script

SHAPES = {k: v for k, v in ALL_SHAPES.items() if not k.endswith("zipf")}  # uniform splits only


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for name, (e, tpe, k, h) in SHAPES.items():
        t = e * tpe
        a = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5
        offsets = exclusive_offsets(torch.full((e,), tpe, dtype=torch.int32, device="cuda"))
        ends = offsets[1:]
        bt = b.transpose(1, 2)
        ours = grouped_gemm_sm90(a, b, offsets)
        ref = torch._grouped_mm(a, bt, offs=ends)
        err = float((ours.float() - ref.float()).norm() / ref.float().norm())
        flops = 2 * t * h * k
        ms_t = do_bench(lambda: torch._grouped_mm(a, bt, offs=ends), warmup=25, rep=200)
        ms_o = do_bench(lambda: grouped_gemm_sm90(a, b, offsets), warmup=25, rep=200)
        rows.append(dict(shape=name, torch_ms=ms_t, ours_ms=ms_o, torch_tflops=flops / ms_t / 1e9, ours_tflops=flops / ms_o / 1e9, rel_err=err))
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  (FC2, bf16)")
    print(f"{'shape':14s} {'torch ms':>9s} {'TFLOP/s':>8s} {'ours ms':>8s} {'TFLOP/s':>8s} {'speed':>6s} {'rel err':>8s}")
    for r in rows:
        print(f"{r['shape']:14s} {r['torch_ms']:9.3f} {r['torch_tflops']:8.0f} {r['ours_ms']:8.3f} {r['ours_tflops']:8.0f} {r['torch_ms'] / r['ours_ms']:6.2f} {r['rel_err']:8.1e}")
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
