"""Split K of the decode forms' short last round (issue 3): each decode form (256 / 128 features a
CTA), with the launcher's split (``tail_splits``) and without (``_splits=1``), FC1 as the fused
forward runs it and FC2, against torch bf16; medians of interleaved rounds in one process.

    python bench/bench_split.py [--cases pro_b1 flash_b1 pro_b4] [--rounds 7] [--json out.json]

Session 19 (H200) measured pro B=1 FC1 with it: decode form 149.2 us whole, 118.7 split (109 after
the reduction's loads were batched); its narrow-split and FC2 decode-split cells then ran under a
workspace bug and are not valid (bench/RESULTS.md).
"""

import argparse
import statistics

import torch
from triton.testing import do_bench

from bench_fused import decode_sizes, mx_rows, torch_fc1_swiglu  # bench/ is on sys.path as a script
from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90, swapped_geometry
from cute_moe.quant.api import exclusive_offsets
from shapes import DECODE, write_results

FORMS = {1: "decode", 2: "narrow"}


def calls(case):
    """(T, E, K, H, {name: call}): torch FC1 / FC2 and ours per form x split."""
    shape, batch = case.split("_b")
    e, k, h = DECODE[shape]
    sizes = decode_sizes(e, int(batch), torch.Generator().manual_seed(0))
    t = int(sizes.sum())
    off = exclusive_offsets(sizes.to(torch.int32).cuda())
    torch.manual_seed(0)
    x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
    p = torch.rand(t, device="cuda")
    xd = quantize_mxfp8_cuda(x, row_dequant=True)[0]
    w1 = torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    w1q, w1s = mx_rows(w1)
    hb = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
    hd = quantize_mxfp8_cuda(hb, row_dequant=True)[0]
    w2 = torch.randn(e, k, h, device="cuda", dtype=torch.bfloat16) / h**0.5
    w2q, w2s = mx_rows(w2)
    fns = {"torch fc1": lambda: torch_fc1_swiglu(x, w1.transpose(1, 2), off[1:], h),
           "torch fc2": lambda: torch._grouped_mm(hb, w2.transpose(1, 2), offs=off[1:])}
    for d, form in FORMS.items():
        for sp in (None, 1):
            tag = f"{form}{'' if sp is None else ' whole'}"
            fns[f"fc1 {tag}"] = lambda d=d, sp=sp: mx_grouped_gemm_sm90(
                None, None, w1q, w1s, off, swiglu=True, probs=p, h_dequant=True, h_col=True, a_dequant=xd, _decode=d,
                _splits=sp)
            fns[f"fc2 {tag}"] = lambda d=d, sp=sp: mx_grouped_gemm_sm90(None, None, w2q, w2s, off, a_dequant=hd,
                                                                        _decode=d, _splits=sp)
    return t, e, k, h, fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["pro_b1", "flash_b1", "pro_b4"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}; us, medians of {args.rounds}")
    for case in args.cases:
        t, e, k, h, fns = calls(case)
        for f in fns.values():
            f()  # compile outside the timing
        torch.cuda.synchronize()
        times = {n: [] for n in fns}
        for r in range(args.rounds):
            for n in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                times[n].append(1000 * do_bench(fns[n], warmup=10, rep=60))
        med = {n: statistics.median(v) for n, v in times.items()}
        dev = torch.device("cuda")
        picks = (FORMS[swapped_geometry(dev, 2 * h, k, t, e)], FORMS[swapped_geometry(dev, k, h, t, e)])
        print(f"== {case} (T={t}, E={e}; the launcher picks FC1 {picks[0]}, FC2 {picks[1]})")
        for n, v in med.items():
            ref = med["torch fc1" if "fc1" in n else "torch fc2"]
            print(f"  {n:20s} {v:8.1f}  {ref / v:5.2f}x")
        rows.append(dict(case=case, T=t, E=e, K=k, H=h, launcher=picks, us=med))
    write_results(args.json, rows)


if __name__ == "__main__":
    main()
