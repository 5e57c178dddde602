"""Where the swapped SM90 kernels' two geometries cross over (issue 3, item 4): FC1 (as the fused
forward runs it) and FC2 in the decode geometry (128 tokens x 256 features per CTA, weight stream)
and the training geometry (256-token units x 128 features), over tokens per expert.

    python bench/bench_geometry.py [--shapes qwen3_30b flash] [--tpe 4 8 ...] [--json out.json]

Routing: top-6 of T = tpe * E / 6 tokens to random distinct experts (``bench_fused.decode_sizes``,
as the decode rows; the per-expert counts vary around ``tpe``). The launcher picks the training
geometry when T >= TRAIN_MIN_TOKENS_PER_EXPERT * E; the table shows each geometry's time and the
launcher's pick.
"""

import argparse
import json

import torch

import bench_fused  # bench/ is on sys.path as a script
from bench_fused import decode_sizes, mx_rows
from shapes import DECODE, SHAPES, TOPK
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import TRAIN_MIN_TOKENS_PER_EXPERT, mx_grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets

TPE = (4, 8, 16, 32, 64, 96, 128, 192, 256)


def shape_ekh(name):
    if name in DECODE:
        return DECODE[name]
    e, _, k, h = SHAPES[name]
    return e, k, h


def run(name, tpes):
    e, k, h = shape_ekh(name)
    gen = torch.Generator().manual_seed(0)
    w1q, w1s = mx_rows(torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5)
    w2q, w2s = mx_rows(torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5)
    rows = []
    for tpe in tpes:
        sizes = decode_sizes(e, max(1, tpe * e // TOPK), gen)
        t = int(sizes.sum())
        offsets = exclusive_offsets(sizes.to(torch.int32).cuda())
        xd = quantize_mxfp8_cuda(torch.randn(t, k, device="cuda", dtype=torch.bfloat16), row_dequant=True)[0]
        hd = quantize_mxfp8_cuda(torch.randn(t, h, device="cuda", dtype=torch.bfloat16), row_dequant=True)[0]
        p = torch.rand(t, device="cuda")
        r = dict(shape=name, E=e, K=k, H=h, T=t, tokens_per_expert=t / e,
                 launcher="training" if t >= TRAIN_MIN_TOKENS_PER_EXPERT * e else "decode")
        for geom, decode in (("decode", True), ("training", False)):
            def fc1():
                return mx_grouped_gemm_sm90(None, None, w1q, w1s, offsets, swiglu=True, probs=p, h_dequant=True,
                                            h_col=True, a_dequant=xd, _decode=decode)

            def fc2():
                return mx_grouped_gemm_sm90(None, None, w2q, w2s, offsets, a_dequant=hd, _decode=decode)

            for kind, fn in (("fc1", fc1), ("fc2", fc2)):
                fn()  # compile outside the timing
                r[f"{kind}_{geom}_ms"] = bench_fused.bench(fn)
        rows.append(r)
        print(f"{name:10s} T/E {t / e:7.1f} | FC1 decode {r['fc1_decode_ms']:.4f} training {r['fc1_training_ms']:.4f}"
              f" ({r['fc1_decode_ms'] / r['fc1_training_ms']:.2f}x) | FC2 decode {r['fc2_decode_ms']:.4f} training"
              f" {r['fc2_training_ms']:.4f} ({r['fc2_decode_ms'] / r['fc2_training_ms']:.2f}x) | launcher:"
              f" {r['launcher']}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["qwen3_30b", "flash"])
    ap.add_argument("--tpe", nargs="+", type=int, default=list(TPE), help="tokens per expert (mean)")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  (ms; 'x' = decode / training time)")
    rows = [r for name in args.shapes for r in run(name, args.tpe)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
