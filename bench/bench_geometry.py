"""Where the swapped SM90 kernels' geometries cross over (issue 3, item 4): FC1 (as the fused
forward runs it) and FC2 in the decode geometry (128 tokens x 256 features per CTA, weight stream),
the narrow decode geometry (128 x 128: twice the CTAs) and the training geometry (256-token units x
128 features), over tokens per expert.

    python bench/bench_geometry.py [--shapes qwen3_30b flash pro] [--tpe 4 8 ... | --batch 1 2 ...]
                                   [--json out.json]

Routing: top-6 of T = tpe * E / 6 tokens (or of ``--batch`` tokens) to random distinct experts
(``bench_fused.decode_sizes``, as the decode rows; the per-expert counts vary around ``tpe``). The
table shows each geometry's time and the launcher's pick (``swapped_geometry``).
"""

import argparse

import torch

import bench_fused  # bench/ is on sys.path as a script
from bench_fused import decode_sizes, mx_rows
from shapes import DECODE, SHAPES, TOPK, write_results
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90, swapped_geometry
from cute_moe.quant.api import exclusive_offsets

TPE = (4, 8, 16, 32, 64, 96, 128, 192, 256)
GEOMS = ("training", "decode", "narrow")  # GEOMETRIES' order: the ``_decode`` index


def shape_ekh(name):
    if name in DECODE:
        return DECODE[name]
    e, _, k, h = SHAPES[name]
    return e, k, h


def run(name, batches):
    e, k, h = shape_ekh(name)
    gen = torch.Generator().manual_seed(0)
    w1q, w1s = mx_rows(torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5)
    w2q, w2s = mx_rows(torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5)
    rows = []
    for batch in batches:
        sizes = decode_sizes(e, batch, gen)
        t = int(sizes.sum())
        offsets = exclusive_offsets(sizes.to(torch.int32).cuda())
        xd = quantize_mxfp8_cuda(torch.randn(t, k, device="cuda", dtype=torch.bfloat16), row_dequant=True)[0]
        hd = quantize_mxfp8_cuda(torch.randn(t, h, device="cuda", dtype=torch.bfloat16), row_dequant=True)[0]
        p = torch.rand(t, device="cuda")
        r = dict(shape=name, E=e, K=k, H=h, T=t, tokens_per_expert=t / e,
                 launcher=GEOMS[swapped_geometry("cuda", 2 * h, k, t, e)],
                 launcher_fc2=GEOMS[swapped_geometry("cuda", k, h, t, e)])
        for decode, geom in enumerate(GEOMS):
            def fc1():
                return mx_grouped_gemm_sm90(None, None, w1q, w1s, offsets, swiglu=True, probs=p, h_dequant=True,
                                            h_col=True, a_dequant=xd, _decode=decode)

            def fc2():
                return mx_grouped_gemm_sm90(None, None, w2q, w2s, offsets, a_dequant=hd, _decode=decode)

            for kind, fn in (("fc1", fc1), ("fc2", fc2)):
                fn()  # compile outside the timing
                r[f"{kind}_{geom}_ms"] = bench_fused.bench(fn)
        rows.append(r)
        print(f"{name:10s} T {t:6d} T/E {t / e:7.2f} | " + " | ".join(
            f"{kind.upper()} " + " ".join(f"{g} {r[f'{kind}_{g}_ms']:.4f}" for g in GEOMS) for kind in ("fc1", "fc2"))
            + f" | launcher: {r['launcher']} / {r['launcher_fc2']}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["qwen3_30b", "flash"])
    ap.add_argument("--tpe", nargs="+", type=int, default=list(TPE), help="tokens per expert (mean)")
    ap.add_argument("--batch", nargs="+", type=int, help="tokens of a decode step (top-6), instead of --tpe")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  (ms)")
    rows = []
    for name in args.shapes:
        e = shape_ekh(name)[0]
        rows += run(name, args.batch or [max(1, tpe * e // TOPK) for tpe in args.tpe])
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
