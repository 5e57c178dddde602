"""CuTe DSL kernels and the registry of representative configurations.

Every kernel the package launches is listed in :data:`REGISTRY` with the configurations it is
compiled for and the PTX it must contain; ``tests/test_compile.py`` (marker ``compile``) compiles
each entry for each of its architectures on a CPU-only machine and checks the PTX, so a kernel that
does not compile, or lost its intended instructions, cannot land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class KernelConfig:
    name: str
    compile: Callable[[str], object]  # arch -> compiled kernel (with PTX kept)
    archs: tuple = ("sm_90a", "sm_100a")
    ptx_must_contain: tuple = ()
    ptx_must_not_contain: tuple = field(default=(".ftz",))


def _quantize_configs():
    from .quantize import compiled_quantize_kernel

    must = ("cp.async.cg.shared.global", "cvt.rn.satfinite.e4m3x2.f32", "max.u16x2", "mul.rn.f32", "bar.sync")
    cfgs = [
        # (cols, rowwise, colwise, grouped, swizzled[, row_dequant])
        (7168, True, False, False, False),
        (7168, False, True, False, False),
        (7168, True, True, False, True),
        (2048, True, True, True, True),
        (4096, True, True, True, False),
        (96, True, True, False, False),
        (7168, True, True, True, False, True),
    ]
    out = []
    for c in cfgs:
        extra = ("vote.sync.ballot",) if c[3] else ()
        extra += ("cvt.rn.f16x2.e4m3x2",) if len(c) > 5 else ()
        out.append(
            KernelConfig(
                name="mxfp8_quantize" + "".join(f"-{v}" for v in c),
                compile=lambda arch, c=c: compiled_quantize_kernel(*c[:5], arch, keep_ptx=True,
                                                                   row_dequant=len(c) > 5 and c[5]),
                ptx_must_contain=must + extra,
            )
        )
    return out


def _sm90_grouped_gemm_configs():
    from .sm90.grouped_gemm import compiled_grouped_gemm_kernel

    return [
        KernelConfig(
            name=f"grouped_gemm_sm90-{n}-{k}",
            compile=lambda arch, n=n, k=k: compiled_grouped_gemm_kernel(n, k, arch, keep_ptx=True),
            archs=("sm_90a",),  # WGMMA is Hopper-only
            ptx_must_contain=("wgmma.mma_async.sync.aligned", ".f32.bf16.bf16", "cp.async.bulk.tensor", "mbarrier"),
        )
        for n, k in [(256, 512), (7168, 2048), (2048, 768)]
    ]


def _sm90_mx_grouped_gemm_configs():
    from .sm90.mx_grouped_gemm import compiled_mx_grouped_gemm_kernel

    must = ("wgmma.mma_async.sync.aligned", ".f32.bf16.bf16", "cp.async.bulk.tensor", "cvt.rn.f16x2.e4m3x2",
            "ld.global.nc.u8", "fence.proxy.async", "stmatrix")
    # FC1: the SiLU's branch-free division (activation.silu_exact) and its div.rn fallback
    fc1 = ("cvt.rn.satfinite.e4m3x2.f32", "rcp.approx.ftz.f32", "div.rn.f32")
    # (N, K, (swiglu, with_probs, h_bf16, h_row, h_col, swizzled[, tokens_bf16, h_dequant, weights_bf16,
    # decode])): FC2 and
    # FC1 of the shapes, tokens as MXFP8 and as dequantized bf16 (the fused forward's configs)
    cfgs = [
        (7168, 2048, (False,) * 6),
        (2048, 768, (False,) * 6),
        (4096, 7168, (True, True, False, True, True, False)),
        (1536, 2048, (True, False, True, True, True, True)),
        (7168, 2048, (False,) * 6 + (True,)),
        (4096, 7168, (True, True, False, False, True, False, True, True)),
        # dense: weights as bf16 too (many tokens per expert), FC2 and FC1 as the fused forward runs them
        (7168, 2048, (False,) * 6 + (True, False, True)),
        (4096, 7168, (True, True, False, False, True, False, True, True, True)),
        # the swapped forms' decode geometry (few tokens per expert): FC1 and FC2 of the flash decode shape
        (4096, 4096, (True, True, False, False, True, False, True, True, False, True)),
        (4096, 2048, (False,) * 6 + (True, False, False, True)),
        # its narrow form (128 features a CTA: a decode step whose 256-feature CTAs leave a short last
        # wave): FC1 and FC2 of the pro decode shape
        (6144, 7168, (True, True, False, False, True, False, True, True, False, 2)),
        (7168, 3072, (False,) * 6 + (True, False, False, 2)),
    ]

    def must_for(flags):
        if len(flags) > 8 and flags[8]:  # dense: no operand conversion, one 64x256 WGMMA shape, warp-specialized
            # (persistent: the producer warp's registers go to the consumers; the weight tile multicast;
            # the tile stored from registers, 16 bytes a lane after a quad transpose; FC1: z handed
            # to the epilogue warps by named barriers, read back through L2)
            dense = ("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", "cp.async.bulk.tensor",
                     "setmaxnreg.inc.sync.aligned.u32", "setmaxnreg.dec.sync.aligned.u32", "multicast::cluster",
                     "shfl.sync.bfly", "st.global.v4.u32")
            return dense + (("bar.sync", "bar.arrive", "ld.global.cg.v4.u32") if flags[0] else ())
        if len(flags) == 6:
            return must
        # bf16 tokens come by TMA alone: no generic-proxy smem writes to fence in the mainloop; the
        # weights' scale codes come four to a word, two k-tile pairs ahead
        return tuple({"ld.global.nc.u8": "ld.global.nc.u32"}.get(m, m) for m in must if m != "fence.proxy.async")

    return [
        KernelConfig(
            name=f"mx_grouped_gemm_sm90-{n}-{k}" + "".join(f"-{int(f)}" for f in flags),
            compile=lambda arch, n=n, k=k, flags=flags: compiled_mx_grouped_gemm_kernel(n, k, flags, arch, keep_ptx=True),
            archs=("sm_90a",),
            ptx_must_contain=must_for(flags) + (fc1 if flags[0] else ()),
            # IEEE arithmetic everywhere; the .ftz are libdevice's expf (ex2.approx.ftz after its
            # range reduction, the same expf torch's silu runs) and the reciprocal seed of the
            # SiLU's division (normal operands only; refined and corrected to div.rn's result)
            ptx_must_not_contain=("mul.rn.ftz", "fma.rn.ftz", "add.rn.ftz", "div.approx", "div.full", "cvt.rn.ftz"),
        )
        for n, k, flags in cfgs
    ]


def registry() -> list:
    """All kernel configurations CI compiles (built lazily: importing the DSL is slow)."""
    return _quantize_configs() + _sm90_grouped_gemm_configs() + _sm90_mx_grouped_gemm_configs()
