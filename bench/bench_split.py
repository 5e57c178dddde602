"""Split K of the decode forms' short last round (issue 3): each decode form (256 / 128 features a
CTA), with the launcher's split (``tail_splits``) and without (``_splits=1``), FC1 as the fused
forward runs it and FC2, against torch bf16; medians of interleaved rounds in one process (the
calls and operands are :mod:`bench_ab`'s).

    python bench/bench_split.py [--cases pro_b1 flash_b1 pro_b4] [--rounds 7] [--json out.json]

Session 19 (H200) measured pro B=1 FC1 with it: decode form 149.2 us whole, 118.7 split (109 after
the reduction's loads were batched); its narrow-split and FC2 decode-split cells then ran under a
workspace bug and are not valid (bench/RESULTS.md).
"""

import argparse
import functools
import statistics

import torch
from triton.testing import do_bench

from bench_ab import calls, problem  # bench/ is on sys.path as a script
from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90, swapped_geometry
from shapes import write_results

FORMS = {1: "decode", 2: "narrow"}
VARIANTS = [(d, sp) for d in FORMS for sp in (None, 1)]  # (form, _splits): the launcher's split, none


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["pro_b1", "flash_b1", "pro_b4"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    kernels = [functools.partial(mx_grouped_gemm_sm90, _decode=d, _splits=sp) for d, sp in VARIANTS]
    names = [f"{FORMS[d]}{'' if sp is None else ' whole'}" for d, sp in VARIANTS]
    rows = []
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}; us, medians of {args.rounds}")
    for case in args.cases:
        sizes, k, h, _, _ = problem(case)
        t, e = int(sizes.sum()), sizes.numel()
        fns = {}
        for fc, suffix in (("fc1", ""), ("fc2", "_fc2")):
            anchor, ours = calls(case + suffix, kernels)
            fns[f"torch {fc}"] = anchor
            fns.update({f"{fc} {n}": f for n, f in zip(names, ours)})
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
