"""Where the fused FC1's time goes, per training shape (issue 3): the same SM90 kernel with its
epilogue outputs added one at a time, against torch bf16 in the same run.

    python bench/bench_breakdown.py [--shapes ...] [--forms swap dense]

Columns (ms): torch ``_grouped_mm`` alone and + SwiGLU; cuBLAS's bf16 matmul of one expert's mean
token count, times the expert count ("cublas_xE": a plain-GEMM ceiling, no grouping); ours as
GEMM + bf16 z only ("z"), + SwiGLU with no h written ("z+swiglu"), + bf16 h ("z+h"), + h as the
dequantized rowwise MXFP8 FC2 reads ("z+hrow"), + h columnwise MXFP8 too ("full": what the forward
runs), for the swapped (MXFP8 weights) and dense (bf16 weights) mainloops. Differences between
columns are what each epilogue step costs.
"""

import argparse

import torch

import bench_fused
from bench_fused import dense_weights, fc1_problem, mx_rows
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90


def bench(fn):
    fn()  # compile outside the timing
    return bench_fused.bench(fn)


def run_shape(name, forms):
    e, h, off, x, w1, p, xd = fc1_problem(name)
    t, k = x.shape
    w1q, w1s = mx_rows(w1)
    w1d = dense_weights(w1)
    w1t = w1.transpose(1, 2)

    r = {"torch_gemm": bench(lambda: torch._grouped_mm(x, w1t, offs=off[1:])),
         "torch_fc1": bench(lambda: bench_fused.torch_fc1_swiglu(x, w1t, off[1:], h))}
    x_one = x[:t // e]
    r["cublas_xE"] = e * bench(lambda: x_one @ w1[0].t())
    steps = {"z": {}, "z+swiglu": dict(swiglu=True), "z+h": dict(swiglu=True, probs=p, h_bf16=True),
             "z+hrow": dict(swiglu=True, probs=p, h_dequant=True),
             "full": dict(swiglu=True, probs=p, h_dequant=True, h_col=True)}
    for form, weights in (("swap", dict(b_q=w1q, b_s=w1s)), ("dense", dict(b_q=None, b_s=None, b_dequant=w1d))):
        if form not in forms:
            continue
        for step, kw in steps.items():
            r[f"{form} {step}"] = bench(lambda: mx_grouped_gemm_sm90(None, None, offsets=off, a_dequant=xd, **weights,
                                                                     **kw))
    flops = 2 * t * k * 2 * h
    print(f"{name}: " + "  ".join(f"{key} {ms:.3f} ({flops / ms / 1e9:.0f} TF/s)" for key, ms in r.items()), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["qwen3_30b", "mixtral_like", "dsv3_ep8"])
    ap.add_argument("--forms", nargs="+", default=["swap", "dense"], choices=["swap", "dense"])
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    for name in args.shapes:
        run_shape(name, args.forms)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
