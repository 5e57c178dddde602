"""First-call cost of the SM90 MXFP8 kernels: compile (empty disk cache) vs load (warm disk cache).

    python bench/bench_compile.py [--json out.json]

Each phase runs in a fresh process with ``CUTE_MOE_CACHE_DIR`` pointing at one new directory:
the first process compiles every FC1/FC2 configuration of the issue shapes (as the fused forward
launches them) and stores them, the second loads them back. No GPU needed (``CUTE_DSL_ARCH``
defaults to sm_90a here); the times exclude importing the DSL, reported separately.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from shapes import DECODE, SHAPES  # noqa: E402
FC1 = (True, True, False, False, True, False, True, True)  # probs, h_col, bf16 tokens, h_dequant
FC2 = (False,) * 6 + (True,)
CHILD = """
import json, sys, time
t = time.perf_counter()
from cute_moe.kernels.sm90.mx_grouped_gemm import compiled_mx_grouped_gemm_kernel
from cute_moe.kernels import compile as c
out = {"import_s": time.perf_counter() - t}
for name, n, k, flags in json.loads(sys.argv[1]):
    t = time.perf_counter()
    compiled_mx_grouped_gemm_kernel(n, k, tuple(flags))
    out[name] = time.perf_counter() - t
out["cache_info"] = c.cache_info()
print(json.dumps(out))
"""


def run_phase(cache_dir, configs):
    env = dict(os.environ, CUTE_MOE_CACHE_DIR=cache_dir,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("CUTE_DSL_ARCH", "sm_90a")
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(configs)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    configs = []
    kh = {name: (k, h) for name, (_, _, k, h) in SHAPES.items() if not name.endswith("zipf")}
    kh.update({name: (k, h) for name, (_, k, h) in DECODE.items()})
    for name, (k, h) in kh.items():  # FC1 = [*, K] x [2H, K], FC2 = [*, H] x [K, H]
        configs.append((f"{name} FC1", 2 * h, k, FC1))
        configs.append((f"{name} FC2", k, h, FC2))
    with tempfile.TemporaryDirectory(prefix="cute_moe_cache_") as d:
        cold = run_phase(d, configs)
        warm = run_phase(d, configs)
    print(f"arch {os.environ.get('CUTE_DSL_ARCH', 'sm_90a')}; DSL import {cold['import_s']:.1f} s (not included)")
    print(f"{'kernel':20s} {'compile s':>9s} {'disk load s':>11s}")
    for name, *_ in configs:
        print(f"{name:20s} {cold[name]:9.2f} {warm[name]:11.3f}")
    print("cache:", "cold", cold["cache_info"], "| warm", warm["cache_info"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cold=cold, warm=warm), f, indent=1)


if __name__ == "__main__":
    main()
