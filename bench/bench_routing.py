"""How the swapped kernels' training form reacts to the routing (qwen3_30b: E=128, K=2048, H=768),
FC1 as the fused forward runs it and FC2, against torch bf16 re-measured in the same process.

    python bench/bench_routing.py [--json out.json]

Routings, T about 32768 tokens: uniform (256 per expert, whole 256-token units), Zipf (shapes.py's
skewed sizes, an eighth of the experts empty), 258 per expert over 127 experts (two tokens past a
unit: a second unit converts the expert's whole weight tile for them) and random sizes around 256
(what routing looks like). Session 17 (H200, 5897c63), FC1 / FC2 ms: uniform 0.390 / 0.198,
Zipf 0.508 / 0.248, 258 each 0.563 / 0.276, random 0.509 / 0.261 (1.22-1.34x / 1.06-1.30x torch).
"""

import argparse

import torch
from triton.testing import do_bench

from bench_fused import mx_rows, torch_fc1_swiglu  # bench/ is on sys.path as a script
from shapes import split_sizes, write_results
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets

K, H = 2048, 768


def routings():
    gen = torch.Generator().manual_seed(0)
    return {
        "uniform": split_sizes("qwen3_30b", 128, 256),
        "zipf": split_sizes("qwen3_30b_zipf", 128, 256),
        "258_each": torch.full((127,), 258),
        "random": torch.clamp(torch.normal(256.0, 48.0, (128,), generator=gen), min=0).round().to(torch.int64),
    }


def run(name, sizes):
    e, t = sizes.numel(), int(sizes.sum())
    off = exclusive_offsets(sizes.to(torch.int32).cuda())
    torch.manual_seed(0)
    x = torch.randn(t, K, device="cuda", dtype=torch.bfloat16)
    p = torch.rand(t, device="cuda")
    xd = quantize_mxfp8_cuda(x, row_dequant=True)[0]
    hb = torch.randn(t, H, device="cuda", dtype=torch.bfloat16)
    hd = quantize_mxfp8_cuda(hb, row_dequant=True)[0]
    w1 = torch.randn(e, 2 * H, K, device="cuda", dtype=torch.bfloat16) / K**0.5
    w2 = torch.randn(e, K, H, device="cuda", dtype=torch.bfloat16) / H**0.5
    (w1q, w1s), (w2q, w2s) = mx_rows(w1), mx_rows(w2)
    w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)
    ours = {
        "fc1": lambda: mx_grouped_gemm_sm90(None, None, w1q, w1s, off, swiglu=True, probs=p, h_dequant=True,
                                            h_col=True, a_dequant=xd),
        "fc2": lambda: mx_grouped_gemm_sm90(None, None, w2q, w2s, off, a_dequant=hd),
    }
    torch_ref = {"fc1": lambda: torch_fc1_swiglu(x, w1t, off[1:], H),
                 "fc2": lambda: torch._grouped_mm(hb, w2t, offs=off[1:])}
    r = dict(routing=name, E=e, T=t)
    for key in ours:
        ours[key]()
        r[f"{key}_ms"] = do_bench(ours[key], warmup=20, rep=300)
        r[f"torch_{key}_ms"] = do_bench(torch_ref[key], warmup=20, rep=300)
        r[f"{key}_speedup"] = r[f"torch_{key}_ms"] / r[f"{key}_ms"]
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [run(name, sizes) for name, sizes in routings().items()]
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'routing':10} {'E':>4} {'T':>6} | {'FC1 torch':>9} {'ours':>7} {'speed':>5} | {'FC2 torch':>9} {'ours':>7} "
          f"{'speed':>5}")
    for r in rows:
        print(f"{r['routing']:10} {r['E']:>4} {r['T']:>6} | {r['torch_fc1_ms']:9.4f} {r['fc1_ms']:7.4f} "
              f"{r['fc1_speedup']:5.2f} | {r['torch_fc2_ms']:9.4f} {r['fc2_ms']:7.4f} {r['fc2_speedup']:5.2f}")
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
