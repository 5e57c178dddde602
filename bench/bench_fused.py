"""SM90 fused MXFP8 kernels vs torch bf16, per shape, in one run (issue 3).

    python bench/bench_fused.py [--shapes ...] [--json out.json]

Per shape (training and decode):
- torch bf16 anchors, re-measured here: FC1 = ``torch._grouped_mm`` + SwiGLU (``silu(g) * u`` on the
  interleaved output), FC2 = ``torch._grouped_mm``;
- cute_moe FC1 as the fused forward runs it ("swap"): MXFP8 W1 dequantized in registers, x as the
  exact bf16 dequantization of its MXFP8 values (written by the quantize pass, K-permuted) -> bf16 z
  (saved for backward) + h = p * silu(g) * u as MXFP8 columnwise and as the dequantized rowwise
  MXFP8 that FC2 reads (one kernel); FC2: that h, MXFP8 W2 -> bf16 y. Also ("mx" columns) the
  kernels on MXFP8 tokens, which dequantize them in the kernel too (FC1 then writes MXFP8 rowwise
  h), and, from 128 tokens per expert, "dense": the weights handed over as their exact bf16 too
  (a plain bf16 mainloop), with what producing them adds to the per-forward weight quantization;
- quack's ``gemm_act(..., activation="swiglu")`` as a peer when ``quack`` imports (bf16, its own layout).
Decode rows also give the bytes of expert weights the kernel must read (only touched experts) as GB/s
against the copy bandwidth measured in the same run. The first call's time (compile + run, the DSL's
in-memory cache empty) is reported per kernel configuration.
"""

import argparse
import time

import torch
from triton.testing import do_bench

from shapes import DECODE, DECODE_BATCHES, SHAPES, TOPK, split_sizes, write_results  # bench/ is on sys.path as a script
from cute_moe.functional import _FusedSm90Ops
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets, quantize_mxfp8

DENSE_MIN_TOKENS_PER_EXPERT = 128  # measure the dense variant from here (to show the crossover)
TRAIN = SHAPES  # (experts, tokens per expert, K, H)


def decode_sizes(e, batch, gen):
    """top-6 of ``batch`` tokens to random distinct experts -> tokens per expert."""
    experts = torch.stack([torch.randperm(e, generator=gen)[:TOPK] for _ in range(batch)]).flatten()
    return torch.bincount(experts, minlength=e)


def mx_rows(w):
    """MXFP8 rowwise of [E, N, K] bf16 -> (e4m3 [E, N, K], scales [E, N, K/32])."""
    e, n, k = w.shape
    q = quantize_mxfp8(w.reshape(e * n, k))[0]
    return q.data.view(e, n, k), q.scale.view(e, n, k // 32)


def bench(fn):
    return do_bench(fn, warmup=10, rep=100)


def torch_fc1_swiglu(x, w1t, ends, h):
    """The torch bf16 anchor: ``_grouped_mm`` + SwiGLU on the 32-interleaved gate/up output."""
    v = torch._grouped_mm(x, w1t, offs=ends).view(x.shape[0], h // 32, 2, 32)
    return torch.nn.functional.silu(v[:, :, 0]) * v[:, :, 1]


def first_call(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def quack_fc1():
    try:
        from quack.gemm_interface import gemm_act  # noqa: F401
    except Exception:  # not installed, or no GPU build: no peer row
        return None
    return gemm_act


def dense_weights(w):
    """The weights as the dense path takes them: exact bf16 of their rowwise MXFP8, K-permuted."""
    e, n, k = w.shape
    return quantize_mxfp8_cuda(w.reshape(e * n, k), row_dequant=True)[0].view(e, n, k)


def fc1_problem(name):
    """A training shape's FC1 operands: (E, H, offsets, x bf16, W1 bf16 [E, 2H, K], probs, x as the
    fused forward hands it over: the exact bf16 of its MXFP8 values, K-permuted)."""
    e, tpe, k, h = SHAPES[name]
    sizes = split_sizes(name, e, tpe)
    t, dev = int(sizes.sum()), "cuda"
    off = exclusive_offsets(sizes.to(torch.int32).to(dev))
    x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
    w1 = torch.randn(e, 2 * h, k, device=dev, dtype=torch.bfloat16) / k**0.5
    p = torch.rand(t, device=dev)
    return e, h, off, x, w1, p, quantize_mxfp8_cuda(x, row_dequant=True)[0]


def weight_pass_ms(w, name):
    """Per-forward weight quantization: MXFP8 rowwise (what the swapped kernels read) vs its bf16
    dequantization (what the dense path reads): the dense path's extra cost is the difference."""
    w2d = w.reshape(-1, w.shape[-1])
    return {f"{name}_pass_mx_ms": bench(lambda: quantize_mxfp8_cuda(w2d)),
            f"{name}_pass_dense_ms": bench(lambda: quantize_mxfp8_cuda(w2d, row_dequant=True))}


def run_shape(name, sizes, k, h, compile_times, peer):
    e = sizes.numel()
    t = int(sizes.sum())
    # the dense (bf16 weights) variant is for many tokens per expert: training shapes only
    dense = t >= DENSE_MIN_TOKENS_PER_EXPERT * max(1, int((sizes > 0).sum()))
    dev = "cuda"
    sizes = sizes.to(dev)
    offsets = exclusive_offsets(sizes.to(torch.int32))
    ends = offsets[1:]
    touched = int((sizes > 0).sum())
    r = dict(shape=name, E=e, T=t, K=k, H=h, touched_experts=touched)

    # ---- FC1
    x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
    w1 = torch.randn(e, 2 * h, k, device=dev, dtype=torch.bfloat16) / k**0.5
    p = torch.rand(t, device=dev)
    xq = quantize_mxfp8(x)[0]
    xd = quantize_mxfp8_cuda(x, row_dequant=True)[0]
    w1q, w1s = mx_rows(w1)
    w1t = w1.transpose(1, 2)

    def ours_fc1():
        return mx_grouped_gemm_sm90(None, None, w1q, w1s, offsets, swiglu=True, probs=p, h_dequant=True, h_col=True,
                                    a_dequant=xd)

    def ours_fc1_mx():
        return mx_grouped_gemm_sm90(xq.data, xq.scale, w1q, w1s, offsets, swiglu=True, probs=p, h_row=True, h_col=True)

    key = ("fc1", 2 * h, k)
    if key not in compile_times:
        compile_times[key] = first_call(ours_fc1)
    r["fc1_first_call_s"] = compile_times[key]
    flops = 2 * t * k * 2 * h
    r["torch_fc1_ms"] = bench(lambda: torch_fc1_swiglu(x, w1t, ends, h))
    r["ours_fc1_ms"] = bench(ours_fc1)
    ours_fc1_mx()  # compile outside the timing
    r["ours_fc1_mx_ms"] = bench(ours_fc1_mx)
    r["fc1_mx_speedup"] = r["torch_fc1_ms"] / r["ours_fc1_mx_ms"]
    r["fc1_speedup"] = r["torch_fc1_ms"] / r["ours_fc1_ms"]
    r["ours_fc1_tflops"] = flops / r["ours_fc1_ms"] / 1e9
    r["torch_fc1_tflops"] = flops / r["torch_fc1_ms"] / 1e9
    if dense:
        w1d = dense_weights(w1)

        def ours_fc1_dense():
            return mx_grouped_gemm_sm90(None, None, None, None, offsets, swiglu=True, probs=p, h_dequant=True,
                                        h_col=True, a_dequant=xd, b_dequant=w1d)

        ours_fc1_dense()
        r["ours_fc1_dense_ms"] = bench(ours_fc1_dense)
        r["fc1_dense_speedup"] = r["torch_fc1_ms"] / r["ours_fc1_dense_ms"]
        r["ours_fc1_dense_tflops"] = flops / r["ours_fc1_dense_ms"] / 1e9
        r.update(weight_pass_ms(w1, "w1"))
        del w1d
    w1_bytes_mx = touched * 2 * h * k * (1 + 1 / 32)
    r["fc1_weight_gbps"] = w1_bytes_mx / r["ours_fc1_ms"] / 1e6
    r["torch_fc1_weight_gbps"] = touched * 2 * h * k * 2 / r["torch_fc1_ms"] / 1e6
    if peer is not None and t > 0:
        try:
            w1_kn = w1.transpose(1, 2).contiguous()  # quack takes [E, K, N]
            peer(x, w1_kn, activation="swiglu", cu_seqlens_m=offsets)
            r["quack_fc1_ms"] = bench(lambda: peer(x, w1_kn, activation="swiglu", cu_seqlens_m=offsets))
        except Exception as exc:  # the peer's API moves; say why there is no number
            r["quack_fc1_error"] = f"{type(exc).__name__}: {exc}"[:200]
    w1 = w1t = w1q = w1s = x = xq = xd = None  # free the FC1 operands (the closures above are done)
    torch.cuda.empty_cache()

    # ---- FC2
    hb = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
    w2 = torch.randn(e, k, h, device=dev, dtype=torch.bfloat16) / h**0.5
    hq = quantize_mxfp8(hb)[0]
    hd = quantize_mxfp8_cuda(hb, row_dequant=True)[0]
    w2q, w2s = mx_rows(w2)
    w2t = w2.transpose(1, 2)

    def ours_fc2():
        return mx_grouped_gemm_sm90(None, None, w2q, w2s, offsets, a_dequant=hd)

    def ours_fc2_mx():
        return mx_grouped_gemm_sm90(hq.data, hq.scale, w2q, w2s, offsets)

    key = ("fc2", k, h)
    if key not in compile_times:
        compile_times[key] = first_call(ours_fc2)
    r["fc2_first_call_s"] = compile_times[key]
    r["torch_fc2_ms"] = bench(lambda: torch._grouped_mm(hb, w2t, offs=ends))
    r["ours_fc2_ms"] = bench(ours_fc2)
    ours_fc2_mx()
    r["ours_fc2_mx_ms"] = bench(ours_fc2_mx)
    r["fc2_mx_speedup"] = r["torch_fc2_ms"] / r["ours_fc2_mx_ms"]
    r["fc2_speedup"] = r["torch_fc2_ms"] / r["ours_fc2_ms"]
    r["ours_fc2_tflops"] = 2 * t * h * k / r["ours_fc2_ms"] / 1e9
    r["fc2_weight_gbps"] = touched * k * h * (1 + 1 / 32) / r["ours_fc2_ms"] / 1e6
    if dense:
        w2d = dense_weights(w2)

        def ours_fc2_dense():
            return mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=hd, b_dequant=w2d)

        ours_fc2_dense()
        r["ours_fc2_dense_ms"] = bench(ours_fc2_dense)
        r["fc2_dense_speedup"] = r["torch_fc2_ms"] / r["ours_fc2_dense_ms"]
        r["ours_fc2_dense_tflops"] = 2 * t * h * k / r["ours_fc2_dense_ms"] / 1e9
        r.update(weight_pass_ms(w2, "w2"))
        del w2d
    w2 = w2t = w2q = w2s = hb = hq = hd = None
    torch.cuda.empty_cache()
    return r


def print_table(rows):
    print(f"{'shape':15s} {'T':>6s} | {'FC1 torch':>9s} {'swap':>7s} {'speed':>5s} {'GB/s':>5s} {'mx':>5s}"
          f" {'dense':>7s} {'speed':>5s} {'TF/s':>4s} | {'FC2 torch':>9s} {'swap':>7s} {'speed':>5s} {'GB/s':>5s}"
          f" {'mx':>5s} {'dense':>7s} {'speed':>5s} {'TF/s':>4s} | {'fwd':>5s} {'+wpass':>6s} | {'quack FC1':>9s}")

    def opt(r, key, fmt):
        return format(r[key], fmt) if key in r else "-"

    for r in rows:
        q = r.get("quack_fc1_ms")
        fwd = "dense" if _FusedSm90Ops.dense_weights(r["T"], r["E"]) else "swap"
        extra = (r["w1_pass_dense_ms"] - r["w1_pass_mx_ms"] + r["w2_pass_dense_ms"] - r["w2_pass_mx_ms"]
                 if "w1_pass_dense_ms" in r else None)
        print(f"{r['shape']:15s} {r['T']:6d} | {r['torch_fc1_ms']:9.3f} {r['ours_fc1_ms']:7.3f}"
              f" {r['fc1_speedup']:5.2f} {r['fc1_weight_gbps']:5.0f} {r['fc1_mx_speedup']:5.2f}"
              f" {opt(r, 'ours_fc1_dense_ms', '7.3f'):>7s} {opt(r, 'fc1_dense_speedup', '5.2f'):>5s}"
              f" {opt(r, 'ours_fc1_dense_tflops', '4.0f'):>4s} |"
              f" {r['torch_fc2_ms']:9.3f} {r['ours_fc2_ms']:7.3f} {r['fc2_speedup']:5.2f}"
              f" {r['fc2_weight_gbps']:5.0f} {r['fc2_mx_speedup']:5.2f}"
              f" {opt(r, 'ours_fc2_dense_ms', '7.3f'):>7s} {opt(r, 'fc2_dense_speedup', '5.2f'):>5s}"
              f" {opt(r, 'ours_fc2_dense_tflops', '4.0f'):>4s} |"
              f" {fwd:>5s} {'-' if extra is None else format(extra, '6.3f'):>6s} | {q if q is None else round(q, 3)!s:>9s}")
    print("speed: torch time / ours. swap: MXFP8 weights dequantized in registers, bf16-dequantized tokens;"
          " mx: the same on MXFP8 tokens; dense: weights as their exact bf16 too (plain bf16 mainloop);"
          f" fwd: what the fused forward runs (dense from {_FusedSm90Ops.DENSE_MIN_TOKENS_PER_EXPERT} tokens per"
          " expert); +wpass: what the dense"
          " path adds to the per-forward weight quantization (bf16 instead of MXFP8 written), FC1 + FC2, ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(TRAIN) + [f"{d}_b{b}" for d in DECODE for b in DECODE_BATCHES])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    src = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_gbps = 2 * src.numel() / bench(lambda: dst.copy_(src)) / 1e6
    src = dst = None
    peer = quack_fc1()
    compile_times = {}
    rows = []
    for name in args.shapes:
        if name in TRAIN:
            e, tpe, k, h = TRAIN[name]
            sizes = split_sizes(name, e, tpe)
        else:
            model, b = name.rsplit("_b", 1)
            e, k, h = DECODE[model]
            sizes = decode_sizes(e, int(b), gen)
        rows.append(run_shape(name, sizes, k, h, compile_times, peer))
        print(rows[-1], flush=True)
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy_gbps:.0f} GB/s"
          f"  quack peer: {'yes' if peer else 'not importable'}")
    print_table(rows)
    from cute_moe.kernels.compile import cache_dir, cache_info

    print("first call (compile or disk-cache load, + run), s:",
          {f"{a}-N{b}-K{c}": round(v, 1) for (a, b, c), v in compile_times.items()},
          f"| kernels {cache_info()} (disk cache {cache_dir()}); bench/bench_compile.py compares cold and warm")
    write_results(args.json, rows, copy_gbps=copy_gbps,
                  first_call_s={f"{a}-N{b}-K{c}": v for (a, b, c), v in compile_times.items()})


if __name__ == "__main__":
    main()
