import os, sys, torch
from triton.testing import do_bench
from cute_moe.kernels.sm90._exp_mx import mx_grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets, quantize_mxfp8
e, tpe, k, h = 32, 1024, 7168, 2048
t = e * tpe
x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
w1 = torch.randn(e, 2 * h, k, device="cuda", dtype=torch.bfloat16) / k**0.5
xq = quantize_mxfp8(x)[0]
w = quantize_mxfp8(w1.reshape(-1, k))[0]
wq, ws = w.data.view(e, 2 * h, k), w.scale.view(e, 2 * h, k // 32)
off = exclusive_offsets(torch.full((e,), tpe, dtype=torch.int32, device="cuda"))
for sw in (False, True):
    ms = do_bench(lambda: mx_grouped_gemm_sm90(xq.data, xq.scale, wq, ws, off, swiglu=sw, h_row=sw, h_col=sw), warmup=10, rep=100)
    print(os.environ.get("EXP", "full"), "swiglu" if sw else "plain-out", f"{ms:.3f} ms", f"{2*t*k*2*h/ms/1e9:.0f} TFLOP/s", flush=True)
