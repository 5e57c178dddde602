"""SwiGLU's activation on the device, bit-identical to the reference's fp32 ``x / (1 + exp(-x))``
(torch's ``silu``: IEEE division, the accurate ``expf``)."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Boolean, Float32, Uint32

from .ptx import bf16x2_to_f32, div_rn_fast, f32_to_bf16x2

# the fast division is exact (and so equal to div.rn) for |x| in [2^-64, 2^65) and d <= 2^64
_EXP_LO, _EXP_SPAN = 127 - 64, 128
_D_MAX = Float32(2.0**64)


@cute.jit
def silu_exact(words: list, deferred: cutlass.Constexpr = False):
    """fp32 ``silu`` of the bf16 pairs ``words`` (low half first): 2 values per word.

    ``div.rn.f32`` compiles to a fast path plus a branch to a slow path for extreme operands; the
    branch makes every division wait for the one before (SwiGLU was latency-bound on it). Here
    all divisions take the fast path, branch-free, and the rare group holding a zero, a huge or
    tiny value, an overflowed ``exp``, an inf or a NaN is recomputed with ``div.rn``.
    ``deferred``: no recomputation here; returns (values, whether any needs it), and the caller
    recomputes with :func:`silu_divrn`, once for all of its groups (one copy of the slow code)."""
    n = 2 * len(words)
    out = cute.make_rmem_tensor(n, Float32)
    xs, ds = [], []
    slow = Boolean(False)
    for i in cutlass.range_constexpr(len(words)):
        halves = bf16x2_to_f32(words[i])
        for k in cutlass.range_constexpr(2):
            x = halves[k]
            d = Float32(1.0) + cute.math.exp(-x, fastmath=False)
            out[2 * i + k] = div_rn_fast(x, d)
            biased_exp = (Uint32(words[i]) >> (7 + 16 * k)) & Uint32(0xFF)
            slow = slow | (Uint32(biased_exp - _EXP_LO) > Uint32(_EXP_SPAN)) | (d > _D_MAX)
            xs.append(x)
            ds.append(d)
    if cutlass.const_expr(deferred):
        return [out[j] for j in range(n)], slow
    if slow:
        for j in cutlass.range_constexpr(n):
            out[j] = xs[j] / ds[j]
    return [out[j] for j in range(n)]


@cute.jit
def silu_divrn(words: list) -> list:
    """:func:`silu_exact`'s values by ``div.rn`` throughout (its fallback; the same results)."""
    out = []
    for i in cutlass.range_constexpr(len(words)):
        halves = bf16x2_to_f32(words[i])
        for k in cutlass.range_constexpr(2):
            out.append(halves[k] / (Float32(1.0) + cute.math.exp(-halves[k], fastmath=False)))
    return out


@cute.jit
def swiglu_bf16x2(g: list, u: list, p, valid, silu_mode: cutlass.Constexpr = "exact"):
    """SwiGLU of 8 gate values ``g`` and their 8 up partners ``u`` (4 bf16-pair words each) ->
    4 bf16-pair words of ``h``, in the reference's order: ``silu(g) * u``, then ``* p`` (fp32;
    ``p`` None: no router weight); zeros where ``valid`` is false. ``silu_mode``: "exact"
    (:func:`silu_exact`), "deferred" (returns (words, whether a :func:`silu_divrn` recomputation
    is due)), "divrn" (:func:`silu_divrn`)."""
    slow = None
    if cutlass.const_expr(silu_mode == "deferred"):
        silu, slow = silu_exact(g, deferred=True)
    elif cutlass.const_expr(silu_mode == "divrn"):
        silu = silu_divrn(g)
    else:
        silu = silu_exact(g)
    out = []
    for j in cutlass.range_constexpr(4):
        uf = bf16x2_to_f32(u[j])
        hv = []
        for q in cutlass.range_constexpr(2):
            v = silu[2 * j + q] * uf[q]
            if cutlass.const_expr(p is not None):
                v = v * p
            hv.append(v)
        out.append(Uint32(cutlass.select_(valid, f32_to_bf16x2(hv[0], hv[1]), Uint32(0))))
    return (out, slow) if silu_mode == "deferred" else out
