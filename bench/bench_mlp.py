"""Grouped MoE MLP through the autograd API vs torch bf16, per training shape (same run).

    python bench/bench_mlp.py [--shapes dsv3_ep8 qwen3_30b ...] [--json out.json]

Rows: torch bf16 FC1+SwiGLU (``torch._grouped_mm`` + ``silu(g)*u``, the REFERENCE §7 anchor);
cute_moe ``grouped_mlp`` forward+backward on the bf16 path, under ``autocast(MXFP8BlockScaling())``
(on an H100 the fused SM90 forward kernels, backward unfused) and under
``MXFP8BlockScaling(fused=False)`` (CuTe DSL quantize kernels + dequantize + ``torch._grouped_mm``).
Input value checks are off (``set_split_size_checks(False)``) so nothing syncs inside the timing.
"""

import argparse

import torch
from triton.testing import do_bench

import cute_moe
from cute_moe import MXFP8BlockScaling, autocast
from shapes import SHAPES, split_sizes, write_results  # bench/ is on sys.path when run as a script

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cute_moe.set_split_size_checks(False)
    rows = []
    for name in args.shapes:
        e, tpe, k, h = SHAPES[name]
        sizes = split_sizes(name, e, tpe).cuda()
        t = int(sizes.sum())
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w1 = torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        w2 = torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5
        p = torch.rand(t, device="cuda")
        dy = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        offs = torch.cumsum(sizes, 0).to(torch.int32)
        w1t = w1.transpose(1, 2)

        def torch_fc1_swiglu():
            z = torch._grouped_mm(x, w1t, offs=offs)
            v = z.view(t, h // 32, 2, 32)
            return torch.nn.functional.silu(v[:, :, 0]) * v[:, :, 1]

        leaves = [a.detach().requires_grad_() for a in (x, w1, w2, p)]

        def mlp_fwd_bwd(mx):
            with autocast(enabled=mx is not None, recipe=mx):
                y = cute_moe.grouped_mlp(leaves[0], leaves[1], leaves[2], sizes, leaves[3])
            y.backward(dy)

        def mlp_fwd(mx):
            with torch.no_grad(), autocast(enabled=mx is not None, recipe=mx):
                cute_moe.grouped_mlp(x, w1, w2, sizes, p)

        flops_fc1 = 2 * t * k * 2 * h
        flops_mlp = 3 * (flops_fc1 + 2 * t * h * k)
        r = dict(shape=name, E=e, T=t, K=k, H=h)
        r["torch_fc1_swiglu_ms"] = do_bench(torch_fc1_swiglu, warmup=25, rep=200)
        r["torch_fc1_tflops"] = flops_fc1 / r["torch_fc1_swiglu_ms"] / 1e9
        recipes = (("bf16", None), ("mxfp8", MXFP8BlockScaling()), ("unfused", MXFP8BlockScaling(fused=False)))
        for tag, mx in recipes:
            mlp_fwd(mx)
            mlp_fwd_bwd(mx)
            r[f"{tag}_fwd_ms"] = do_bench(lambda: mlp_fwd(mx), warmup=25, rep=200)
            r[f"{tag}_fwd_bwd_ms"] = do_bench(lambda: mlp_fwd_bwd(mx), warmup=25, rep=200)
        r["mxfp8_vs_bf16_fwd_bwd"] = r["bf16_fwd_bwd_ms"] / r["mxfp8_fwd_bwd_ms"]
        r["mlp_bf16_tflops"] = flops_mlp / r["bf16_fwd_bwd_ms"] / 1e9
        rows.append(r)
        x = w1 = w2 = dy = leaves = None  # free this shape's tensors before the next
        torch.cuda.empty_cache()
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    hdr = (f"{'shape':16s} {'torch FC1+SwiGLU ms':>20s} {'bf16 fwd':>9s} {'bf16 f+b':>9s} {'mx fwd':>8s} {'mx f+b':>8s}"
           f" {'unfused fwd':>11s} {'unfused f+b':>11s} {'mx/bf16 speed':>13s}")
    print(hdr)
    for r in rows:
        print(f"{r['shape']:16s} {r['torch_fc1_swiglu_ms']:20.3f} {r['bf16_fwd_ms']:9.3f} {r['bf16_fwd_bwd_ms']:9.3f} "
              f"{r['mxfp8_fwd_ms']:8.3f} {r['mxfp8_fwd_bwd_ms']:8.3f} {r['unfused_fwd_ms']:11.3f} {r['unfused_fwd_bwd_ms']:11.3f}"
              f" {r['mxfp8_vs_bf16_fwd_bwd']:13.2f}")
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
