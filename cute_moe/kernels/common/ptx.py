"""Inline-PTX building blocks shared by the CuTe DSL kernels.

Written as PTX so that the exact instruction is fixed: IEEE (non-ftz) fp32 multiplies, RN
satfinite e4m3 conversion, predicated vector memory ops, zero-filling cp.async, and integer
abs-max on bf16 bit patterns (NaN-propagating, which ``max.f32`` is not).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op

# fp32(1/448): the RCEIL rule multiplies by this rounded reciprocal (REFERENCE §1).
INV_E4M3_MAX_BITS = 0x3B124925
SCALE_PAD_CODE = 127


def _asm(ret, args, text, constraints, *, side_effects=False, loc=None, ip=None):
    return llvm.inline_asm(
        ret,
        [a.ir_value(loc=loc, ip=ip) for a in args],
        text,
        constraints,
        has_side_effects=side_effects,
        is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT,
        loc=loc,
        ip=ip,
    )


def _unpack(res, n, loc=None, ip=None):
    return [Uint32(llvm.extractvalue(T.i32(), res, [i], loc=loc, ip=ip)) for i in range(n)]


@dsl_user_op
def cp_async_16(dst_smem, src: Int64, src_bytes, *, loc=None, ip=None):
    """16-byte global -> shared async copy; ``src_bytes`` < 16 zero-fills the rest (0: all zeros,
    nothing read)."""
    _asm(
        None,
        [Int32(dst_smem), Int64(src), Int32(src_bytes)],
        "cp.async.cg.shared.global [$0], [$1], 16, $2;",
        "r,l,r",
        side_effects=True,
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def ld_shared(addr, n: int, *, loc=None, ip=None):
    """``n`` x 32-bit shared-memory load (n in 1, 2, 4)."""
    outs = ", ".join(f"${i}" for i in range(n))
    res = _asm(
        llvm.StructType.get_literal([T.i32()] * n),
        [Int32(addr)],
        f"ld.shared{'' if n == 1 else f'.v{n}'}.u32 {outs if n == 1 else '{' + outs + '}'}, [${n}];",
        ",".join(["=r"] * n) + ",r",
        side_effects=True,
        loc=loc,
        ip=ip,
    )
    return _unpack(res, n, loc, ip)


@dsl_user_op
def ld_global_s32_pred(addr: Int64, pred, fallback, *, loc=None, ip=None) -> Int32:
    """Load an int32, or ``fallback`` where ``pred`` is false (no memory access then)."""
    return Int32(
        _asm(
            T.i32(),
            [Int64(addr), Int32(pred), Int32(fallback)],
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; mov.b32 $0, $3; @p ld.global.s32 $0, [$1]; }",
            "=r,l,r,r",
            loc=loc,
            ip=ip,
        )
    )


@dsl_user_op
def ld_global_v4_pred(addr: Int64, pred, *, loc=None, ip=None):
    """16-byte load through L2 only (``.cg``: data this CTA just stored), four zero words where
    ``pred`` is false (no memory access then). Ordered like the barriers around it."""
    res = _asm(
        llvm.StructType.get_literal([T.i32()] * 4),
        [Int64(addr), Int32(pred)],
        "{ .reg .pred p; setp.ne.b32 p, $5, 0; mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0;\n"
        "@p ld.global.cg.v4.u32 {$0, $1, $2, $3}, [$4]; }",
        "=&r,=&r,=&r,=&r,l,r",
        side_effects=True,
        loc=loc,
        ip=ip,
    )
    return _unpack(res, 4, loc, ip)


@dsl_user_op
def st_global(addr: Int64, vals, pred, *, loc=None, ip=None):
    """Predicated store of 1, 2 or 4 32-bit words."""
    n = len(vals)
    regs = ", ".join(f"${i + 1}" for i in range(n))
    _asm(
        None,
        [Int64(addr), *(Uint32(v) for v in vals), Int32(pred)],
        f"{{ .reg .pred p; setp.ne.b32 p, ${n + 1}, 0; @p st.global{'' if n == 1 else f'.v{n}'}.u32 [$0], "
        + (regs if n == 1 else "{" + regs + "}")
        + "; }",
        "l," + ",".join(["r"] * (n + 1)),
        side_effects=True,
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def st_global_f32x4(addr: Int64, vals, *, loc=None, ip=None):
    """16-byte store of four fp32 values."""
    _asm(
        None,
        [Int64(addr), *(Float32(v) for v in vals)],
        "st.global.v4.f32 [$0], {$1, $2, $3, $4};",
        "l,f,f,f,f",
        side_effects=True,
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def ld_global_cg_f32x4(addr: Int64, *, loc=None, ip=None):
    """16-byte load of four fp32 values through L2 only (``.cg``: data other CTAs just stored, which
    this SM's L1 may hold stale)."""
    res = _asm(
        llvm.StructType.get_literal([T.f32()] * 4),
        [Int64(addr)],
        "ld.global.cg.v4.f32 {$0, $1, $2, $3}, [$4];",
        "=f,=f,=f,=f,l",
        side_effects=True,
        loc=loc,
        ip=ip,
    )
    return [Float32(llvm.extractvalue(T.f32(), res, [i], loc=loc, ip=ip)) for i in range(4)]


@dsl_user_op
def atomic_add_acq_rel(addr: Int64, val, *, loc=None, ip=None) -> Int32:
    """``atom.acq_rel.gpu`` add on an int32 in global memory; returns the old value. Release: the
    caller's (and, after a CTA barrier, its CTA's) earlier stores are visible to whoever acquires
    the new value; acquire: what the earlier arrivals stored is visible to the caller."""
    return Int32(_asm(T.i32(), [Int64(addr), Int32(val)], "atom.acq_rel.gpu.global.add.u32 $0, [$1], $2;", "=r,l,r",
                      side_effects=True, loc=loc, ip=ip))


@dsl_user_op
def st_global_u8(addr: Int64, val, pred, *, loc=None, ip=None):
    _asm(
        None,
        [Int64(addr), Uint32(val), Int32(pred)],
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p st.global.u8 [$0], $1; }",
        "l,r,r",
        side_effects=True,
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def div_rn_fast(x, d, *, loc=None, ip=None) -> Float32:
    """``x / d`` by the fast path of ``div.rn.f32`` (reciprocal, one Newton step, quotient, one
    correction): correctly rounded, so equal to ``div.rn``, while operands and quotient stay
    well inside the normal range; callers check that (see ``activation.silu_exact``). Unlike
    ``div.rn`` it has no slow-path branch, so a thread's divisions overlap."""
    return Float32(_asm(
        T.f32(), [Float32(x), Float32(d)],
        "{ .reg .f32 r, t, nd, q, e; rcp.approx.ftz.f32 r, $2; neg.f32 nd, $2; fma.rn.f32 t, nd, r, 0f3F800000; "
        "fma.rn.f32 r, r, t, r; mul.rn.f32 q, $1, r; fma.rn.f32 e, nd, q, $1; fma.rn.f32 $0, r, e, q; }",
        "=f,f,f", loc=loc, ip=ip))


@dsl_user_op
def umax(a, b, *, loc=None, ip=None) -> Uint32:
    return Uint32(_asm(T.i32(), [Uint32(a), Uint32(b)], "max.u32 $0, $1, $2;", "=r,r,r", loc=loc, ip=ip))


@dsl_user_op
def absmax_bf16x2(acc, w, *, loc=None, ip=None) -> Uint32:
    """Per-half running max of |bf16| bit patterns: ``max.u16x2(acc, w & 0x7fff7fff)``.

    For non-negative IEEE values integer order is numeric order, and NaN patterns sort above
    inf, so a NaN anywhere makes the max a NaN pattern."""
    return Uint32(
        _asm(
            T.i32(),
            [Uint32(acc), Uint32(w)],
            "{ .reg .b32 t; and.b32 t, $2, 0x7FFF7FFF; max.u16x2 $0, $1, t; }",
            "=r,r,r",
            loc=loc,
            ip=ip,
        )
    )


@dsl_user_op
def halves_max(w, *, loc=None, ip=None) -> Uint32:
    """max of the two 16-bit halves of ``w`` (as unsigned)."""
    return Uint32(
        _asm(
            T.i32(),
            [Uint32(w)],
            "{ .reg .b32 lo, hi; and.b32 lo, $1, 0xFFFF; shr.u32 hi, $1, 16; max.u32 $0, lo, hi; }",
            "=r,r",
            loc=loc,
            ip=ip,
        )
    )


@dsl_user_op
def e8m0_scale(amax_bf16_bits, *, loc=None, ip=None):
    """RCEIL scale for a block amax given as |bf16| bits -> (E8M0 code, fp32 2**(127-E)).

    ``E = exp(v) + (mant(v) != 0)``, ``v = amax * fp32(1/448)`` (IEEE mul, subnormals kept),
    saturating at 254; NaN amax -> 0xFF and a NaN multiplier (so the block's data become NaN).
    E = 254 needs 2**-127, a subnormal, built from its bits."""
    res = _asm(
        llvm.StructType.get_literal([T.i32(), T.i32()]),
        [Uint32(amax_bf16_bits)],
        "{ .reg .b32 a, vb, ex, mt, e, sb; .reg .f32 af, v; .reg .pred pm, pn, p254;\n"
        "shl.b32 a, $2, 16; mov.b32 af, a;\n"
        f"mul.rn.f32 v, af, 0f{INV_E4M3_MAX_BITS:08X}; mov.b32 vb, v;\n"
        "shr.u32 ex, vb, 23; and.b32 ex, ex, 255; and.b32 mt, vb, 0x7FFFFF;\n"
        "setp.ne.u32 pm, mt, 0; selp.u32 e, 1, 0, pm; add.u32 e, e, ex; min.u32 e, e, 254;\n"
        "setp.gt.u32 pn, a, 0x7F800000; selp.u32 e, 255, e, pn;\n"
        "sub.u32 sb, 254, e; shl.b32 sb, sb, 23;\n"
        "setp.eq.u32 p254, e, 254; selp.b32 sb, 0x00400000, sb, p254; selp.b32 sb, 0x7FC00000, sb, pn;\n"
        "mov.b32 $0, e; mov.b32 $1, sb; }",
        "=r,=r,r",
        loc=loc,
        ip=ip,
    )
    code, scale_bits = _unpack(res, 2, loc, ip)
    return code, scale_bits


@dsl_user_op
def bf16_to_e4m3(words, sbits, *, loc=None, ip=None):
    """bf16 pairs (element 2k in the low half of word k) times per-element fp32 scales (given as
    bits) -> e4m3 bytes packed 4 per word, RN satfinite, element order kept. ``len(words)`` is even."""
    n = len(words)
    body = []
    for k in range(n):
        body.append(
            f"shl.b32 lo, ${n // 2 + k}, 16; and.b32 hi, ${n // 2 + k}, 0xFFFF0000;\n"
            f"mov.b32 fl, lo; mov.b32 fh, hi; mov.b32 sl, ${n // 2 + n + 2 * k}; mov.b32 sh, ${n // 2 + n + 2 * k + 1};\n"
            "mul.rn.f32 fl, fl, sl; mul.rn.f32 fh, fh, sh;\n"
            f"cvt.rn.satfinite.e4m3x2.f32 h, fh, fl; cvt.u32.u16 p{k % 2}, h;\n"
        )
        if k % 2:
            body.append(f"shl.b32 p1, p1, 16; or.b32 ${k // 2}, p0, p1;\n")
    res = _asm(
        llvm.StructType.get_literal([T.i32()] * (n // 2)),
        [Uint32(v) for v in (*words, *sbits)],
        "{ .reg .b32 lo, hi, p0, p1; .reg .f32 fl, fh, sl, sh; .reg .b16 h;\n" + "".join(body) + "}",
        ",".join(["=&r"] * (n // 2) + ["r"] * (3 * n)),  # early-clobber: outputs are written mid-asm
        loc=loc,
        ip=ip,
    )
    return _unpack(res, n // 2, loc, ip)


def swizzle_offset(r, c, col_groups):
    """Byte offset of scale (r, c) in the swizzled layout; ``col_groups`` = padded cols / 4."""
    return ((r // 128) * col_groups + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)


@dsl_user_op
def st_shared(addr, vals, *, loc=None, ip=None):
    """Store 1, 2 or 4 32-bit words to shared memory."""
    n = len(vals)
    regs = ", ".join(f"${i + 1}" for i in range(n))
    _asm(
        None,
        [Int32(addr), *(Uint32(v) for v in vals)],
        f"st.shared{'' if n == 1 else f'.v{n}'}.u32 [$0], " + (regs if n == 1 else "{" + regs + "}") + ";",
        "r," + ",".join(["r"] * n),
        side_effects=True,
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def ld_global_u8(addr: Int64, *, loc=None, ip=None) -> Uint32:
    """One byte through the read-only path (scale codes)."""
    return Uint32(_asm(T.i32(), [Int64(addr)], "ld.global.nc.u8 $0, [$1];", "=r,l", loc=loc, ip=ip))


@dsl_user_op
def ld_global_u32(addr: Int64, *, loc=None, ip=None) -> Uint32:
    """One 32-bit word through the read-only path (four scale codes)."""
    return Uint32(_asm(T.i32(), [Int64(addr)], "ld.global.nc.u32 $0, [$1];", "=r,l", loc=loc, ip=ip))


@dsl_user_op
def e4m3_to_bf16_scaled(words, code, *, loc=None, ip=None):
    """MX dequantization of 4*len(words) e4m3 bytes with one E8M0 ``code``: bf16 pairs
    ``bf16(float(q) * 2**(code-127))`` in element order (element 2k in the low half of word k).

    e4m3 -> f16 (hardware, exact) -> f32 -> IEEE multiply by the power of two (exact unless it
    leaves fp32's range; code 0 is the subnormal 2**-127, 0xFF is NaN) -> bf16 RN, exact for every
    result in bf16's normal range, which is what dequantizing to bf16 on the host gives."""
    n = len(words)
    code_reg = f"${3 * n}"  # operands: 2n outputs, then the n words, then the code
    body = [
        f"shl.b32 s, {code_reg}, 23; setp.eq.u32 p, {code_reg}, 0; selp.b32 s, 0x00400000, s, p;\n"
        f"setp.eq.u32 p, {code_reg}, 255; selp.b32 s, 0x7FC00000, s, p; mov.b32 sf, s;\n"
    ]
    for k in range(n):
        for half in range(2):
            body.append(
                f"mov.b32 {{b0, b1}}, ${2 * n + k}; cvt.rn.f16x2.e4m3x2 hh, b{half};\n"
                "mov.b32 {h0, h1}, hh; cvt.f32.f16 f0, h0; cvt.f32.f16 f1, h1;\n"
                "mul.rn.f32 f0, f0, sf; mul.rn.f32 f1, f1, sf;\n"
                f"cvt.rn.bf16x2.f32 ${2 * k + half}, f1, f0;\n"
            )
    res = _asm(
        llvm.StructType.get_literal([T.i32()] * (2 * n)),
        [*(Uint32(w) for w in words), Uint32(code)],
        "{ .reg .b32 s, hh; .reg .b16 b0, b1, h0, h1; .reg .f32 sf, f0, f1; .reg .pred p;\n" + "".join(body) + "}",
        ",".join(["=&r"] * (2 * n) + ["r"] * (n + 1)),
        loc=loc,
        ip=ip,
    )
    return _unpack(res, 2 * n, loc, ip)


@dsl_user_op
def bf16x2_to_f32(w, *, loc=None, ip=None):
    """(low, high) halves of a bf16 pair as fp32 (exact)."""
    res = _asm(
        llvm.StructType.get_literal([T.f32(), T.f32()]),
        [Uint32(w)],
        "{ .reg .b32 t; shl.b32 t, $2, 16; mov.b32 $0, t; and.b32 t, $2, 0xFFFF0000; mov.b32 $1, t; }",
        "=f,=f,r",
        loc=loc,
        ip=ip,
    )
    return [Float32(llvm.extractvalue(T.f32(), res, [i], loc=loc, ip=ip)) for i in range(2)]


@dsl_user_op
def f32_to_bf16x2(lo, hi, *, loc=None, ip=None) -> Uint32:
    """RN bf16 pair (``lo`` in the low half)."""
    return Uint32(_asm(T.i32(), [Float32(lo), Float32(hi)], "cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,f,f", loc=loc, ip=ip))


@cute.jit
def quad_transpose(w: list, q, lane_stride: cutlass.Constexpr = 1) -> list:
    """A 4x4 transpose of words across 4 lanes ``lane_stride`` apart (``q`` = the lane's index
    among them): lane q's word b becomes lane b's word q, so 4 words of one group, scattered over
    the lanes, end up in one lane in lane order (16 contiguous bytes to store). Two butterfly
    rounds (lanes 2 apart, then 1, in units of ``lane_stride``), each swapping the off-diagonal
    half of a 2x2 block of words."""
    for bit in cutlass.range_constexpr(2):
        m = 2 >> bit  # index bit of this round; word j's partner is word j ^ m
        hi = (q & m) != 0
        out = list(w)
        for j in cutlass.range_constexpr(4):
            if cutlass.const_expr(j & m == 0):
                # lanes without bit m send their words j ^ m and take the partner's j into them
                send = Uint32(cutlass.select_(hi, w[j], w[j ^ m]))
                got = Uint32(cute.arch.shuffle_sync_bfly(send, offset=m * lane_stride))
                out[j] = Uint32(cutlass.select_(hi, got, w[j]))
                out[j ^ m] = Uint32(cutlass.select_(hi, w[j ^ m], got))
        w = out
    return w
