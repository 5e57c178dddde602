"""Exact MXFP8 reference (REFERENCE.md §1): E8M0 scale rule, quantize, dequantize.

Plain torch, any device. Every kernel in the package is checked bit-for-bit against these
functions, so they favour obviously-right arithmetic (fp64 where it makes exactness trivial)
over speed.

Conventions chosen here (and tested):
- RCEIL: ``v = fp32(amax * fp32(1/448))``; ``E`` = biased exponent field of ``v`` plus one if
  ``v``'s mantissa is nonzero, saturating at 254. ``amax == 0`` gives ``E = 0`` (what the rule
  yields for ``v = 0``); ``amax = inf`` gives 254; ``amax = NaN`` gives 0xFF.
- A block whose scale is NaN (0xFF) stores every element as the e4m3 NaN byte 0x7F.
- ``q = e4m3_rn_satfinite(x * 2**(127-E))``; ±inf saturates to ±448.
- Dequantization is exact in float64 always and in float32/bfloat16 for every value whose
  magnitude is below 2**128: only blocks that hold values within 0.4% of bf16's largest finite
  number can round up to 2**128, which is inf in those dtypes (tested, not hidden).
"""

from __future__ import annotations

from typing import Optional

import torch

BLOCK = 32
E4M3_MAX = 448.0
E8M0_NAN = 0xFF
E4M3_NAN_BYTE = 0x7F
#: scale code written into layout padding (blocks that hold no data): 127 = 2**0
SCALE_PAD_CODE = 127
_INV_E4M3_MAX_F32 = torch.tensor(1.0 / E4M3_MAX, dtype=torch.float32)


def e8m0_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """RCEIL scale code (uint8) for block amax values (any float dtype, non-negative or NaN)."""
    v = amax.to(torch.float32) * _INV_E4M3_MAX_F32.to(amax.device)
    bits = v.view(torch.int32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    e = exp + (mant != 0).to(torch.int32)
    e = torch.clamp(e, max=254)
    e = torch.where(torch.isnan(v), torch.full_like(e, E8M0_NAN), e)
    return e.to(torch.uint8)


def e8m0_to_float(code: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """2**(code-127) as ``dtype`` (NaN for 0xFF). float64 holds every code exactly."""
    c = code.to(torch.int32)
    val = torch.pow(torch.tensor(2.0, dtype=torch.float64, device=code.device), (c - 127).to(torch.float64))
    val = torch.where(c == E8M0_NAN, torch.full_like(val, float("nan")), val)
    return val.to(dtype)


def _blocks_last(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [..., ceil(C/32), 32], zero padded (padding never raises an amax)."""
    c = x.shape[-1]
    pad = (-c) % BLOCK
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)


def _quantize_blocks(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xb [..., 32] (float) -> (e4m3 [..., 32], E8M0 codes [...])."""
    x64 = xb.to(torch.float64)
    amax = x64.abs().amax(dim=-1)  # NaN propagates through amax
    code = e8m0_from_amax(amax.to(torch.float32))  # amax of bf16/fp32 values is exact in fp32
    scale = e8m0_to_float(code, torch.float64)
    inv = torch.where(torch.isnan(scale), scale, 1.0 / scale)  # exact: powers of two in fp64
    y = torch.clamp(x64 * inv.unsqueeze(-1), -E4M3_MAX, E4M3_MAX)  # satfinite; NaN stays NaN
    # y has <= 8 significant bits and |y| <= 448, so fp32 holds it exactly: one RN step to e4m3.
    q = y.to(torch.float32).to(torch.float8_e4m3fn)
    qb = q.view(torch.uint8)
    nan_block = (code == E8M0_NAN).unsqueeze(-1)
    qb = torch.where(nan_block, torch.full_like(qb, E4M3_NAN_BYTE), qb)
    return qb.view(torch.float8_e4m3fn), code


class MXFP8Tensor:
    """MXFP8 data with E8M0 scales, in the plain layout and (on demand) the swizzled one.

    ``data``: float8_e4m3fn, the shape of the source. ``scale``: uint8 E8M0 codes in the plain
    layout, one per block: rowwise (``axis=-1``) ``[..., R, ceil(C/32)]``; columnwise (``axis=0``)
    ``[ceil(R/32), C]``; grouped columnwise (``split_sizes`` given) ``[grouped_col_blocks(R, E), C]``
    with expert e's blocks placed as :func:`cute_moe.quant.layout.grouped_block_start` says (gaps
    hold ``SCALE_PAD_CODE``). ``scale_swizzled``: the GEMM-operand layout of REFERENCE §2 (for a
    columnwise tensor the operand is its transpose; for rowwise with ``split_sizes`` the rows are
    placed per expert). Kernels may produce either; the other is derived when first asked for.
    """

    def __init__(self, data, axis, scale=None, scale_swizzled=None, split_sizes=None):
        if scale is None and scale_swizzled is None:
            raise ValueError("MXFP8Tensor needs scale or scale_swizzled")
        self.data = data
        self.axis = axis
        self.split_sizes = split_sizes
        self._scale = scale
        self._scale_swizzled = scale_swizzled

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def _scale_dims(self) -> tuple[int, int]:
        """(rows, cols) of the scale matrix in GEMM-operand orientation."""
        from .layout import grouped_col_blocks

        if self.axis == 0:
            r = self.data.shape[0]
            nblk = -(-r // BLOCK) if self.split_sizes is None else grouped_col_blocks(r, len(self.split_sizes))
            return self.data.shape[1], nblk
        return self.data.numel() // max(self.data.shape[-1], 1), -(-self.data.shape[-1] // BLOCK)

    @property
    def scale(self) -> torch.Tensor:
        if self._scale is None:
            from .layout import unswizzle_scales

            rows, cols = self._scale_dims()
            if self.axis == 0:
                self._scale = unswizzle_scales(self._scale_swizzled, rows, cols).t().contiguous()
            else:
                plain = unswizzle_scales(self._scale_swizzled, rows, cols, self.split_sizes)
                self._scale = plain.reshape(*self.data.shape[:-1], cols)
        return self._scale

    @property
    def scale_swizzled(self) -> torch.Tensor:
        if self._scale_swizzled is None:
            from .layout import swizzle_scales

            if self.axis == 0:
                self._scale_swizzled = swizzle_scales(self._scale.t().contiguous())
            else:
                self._scale_swizzled = swizzle_scales(self._scale.reshape(-1, self._scale.shape[-1]), self.split_sizes)
        return self._scale_swizzled

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.data, self.scale, self.axis, split_sizes=self.split_sizes, dtype=dtype)

    def __repr__(self) -> str:
        kind = "rowwise" if self.axis == -1 else "columnwise"
        grouped = f", {len(self.split_sizes)} experts" if self.split_sizes is not None else ""
        return f"MXFP8Tensor({kind}{grouped}, shape={tuple(self.data.shape)}, device={self.data.device})"


def _check_input(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be a floating tensor (bf16, fp16, fp32, fp64), got {x.dtype}")


def _is_rowwise(axis: int, ndim: int) -> bool:
    if axis == 0 and ndim == 2:
        return False
    if axis in (-1, ndim - 1) and ndim >= 1:
        return True
    raise ValueError(f"axis must be -1 (rowwise) or 0 (columnwise on a 2-D tensor), got axis={axis} for a {ndim}-D tensor")


def quantize(x: torch.Tensor, axis: int = -1, split_sizes: Optional[torch.Tensor] = None) -> MXFP8Tensor:
    """Reference MXFP8 quantization.

    axis=-1: rowwise, blocks of 32 along the last dim (any rank >= 1).
    axis=0: columnwise on a 2-D ``[R, C]`` tensor, blocks of 32 rows, data not transposed; with
    ``split_sizes`` (one count per expert, summing to R) no block crosses an expert boundary.
    """
    _check_input(x)
    if _is_rowwise(axis, x.dim()):
        if split_sizes is not None:
            # rowwise data and plain scales do not depend on the grouping; it only places the
            # rows of the swizzled scales per expert
            from .layout import check_split_sizes

            if x.dim() != 2:
                raise ValueError(f"split_sizes needs a 2-D x, got {x.dim()}-D")
            split_sizes = check_split_sizes(split_sizes, x.shape[0]).to(torch.int32)
        qb, code = _quantize_blocks(_blocks_last(x))
        q = qb.reshape(*x.shape[:-1], qb.shape[-2] * BLOCK)[..., : x.shape[-1]]
        return MXFP8Tensor(q.contiguous(), -1, scale=code.contiguous(), split_sizes=split_sizes)
    if split_sizes is None:
        qt = quantize(x.t(), axis=-1)
        return MXFP8Tensor(qt.data.t().contiguous(), 0, scale=qt.scale.t().contiguous())
    from .layout import grouped_block_start, grouped_col_blocks, check_split_sizes

    sizes = check_split_sizes(split_sizes, x.shape[0]).tolist()
    r, c = x.shape
    data = torch.empty_like(x, dtype=torch.float8_e4m3fn)
    scale = torch.full((grouped_col_blocks(r, len(sizes)), c), SCALE_PAD_CODE, dtype=torch.uint8, device=x.device)
    off = 0
    for e, n in enumerate(sizes):
        if n:
            qe = quantize(x[off : off + n], axis=0)
            data[off : off + n] = qe.data
            start = grouped_block_start(off, e)
            scale[start : start + qe.scale.shape[0]] = qe.scale
        off += n
    return MXFP8Tensor(data, 0, scale=scale, split_sizes=torch.as_tensor(sizes, dtype=torch.int32))


def dequantize(
    data: torch.Tensor,
    scale: torch.Tensor,
    axis: int = -1,
    split_sizes: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize` on plain-layout scales: ``float(q) * 2**(E-127)``."""
    q = data.to(torch.float64)
    if _is_rowwise(axis, data.dim()):
        s = e8m0_to_float(scale, torch.float64).repeat_interleave(BLOCK, dim=-1)[..., : data.shape[-1]]
        return (q * s).to(dtype)
    if split_sizes is None:
        s = e8m0_to_float(scale, torch.float64).repeat_interleave(BLOCK, dim=0)[: data.shape[0]]
        return (q * s).to(dtype)
    from .layout import grouped_block_start

    out = torch.empty(data.shape, dtype=torch.float64, device=data.device)
    off = 0
    for e, n in enumerate(torch.as_tensor(split_sizes).tolist()):
        if n:
            start = grouped_block_start(off, e)
            nb = -(-n // BLOCK)
            s = e8m0_to_float(scale[start : start + nb], torch.float64).repeat_interleave(BLOCK, dim=0)[:n]
            out[off : off + n] = q[off : off + n] * s
        off += n
    return out.to(dtype)


def e8m0_to_f32(code: torch.Tensor) -> torch.Tensor:
    """2**(code-127) in fp32 built from bits (code 0 -> the subnormal 2**-127, 0xFF -> NaN)."""
    c = code.to(torch.int32)
    val = (c << 23).view(torch.float32)
    val = torch.where(c == 0, torch.full_like(val, 2.0**-127), val)
    return torch.where(c == E8M0_NAN, torch.full_like(val, float("nan")), val)


def dequantize_device(t: MXFP8Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Dequantize on the tensor's device without host syncs (the grouped columnwise placement is
    resolved with device-side index math). Exact in fp32; in bf16 exact except where the value
    falls outside bf16's range (|x| >= 2**128 -> inf, |x| < 2**-133 rounds).

    Computes in ``dtype`` directly: e4m3 and 2**(E-127) are exact in bf16 and fp32, and a product
    of two bf16 operands is evaluated exactly then rounded once, which is what the fp32 route
    followed by a cast would give; only with a third of the memory traffic."""
    q = t.data.to(dtype)
    s = e8m0_to_f32(t.scale).to(dtype)
    if t.axis != 0:
        c = q.shape[-1]
        nb = s.shape[-1]
        pad = nb * BLOCK - c
        qb = torch.nn.functional.pad(q, (0, pad)) if pad else q
        out = (qb.reshape(*q.shape[:-1], nb, BLOCK) * s.unsqueeze(-1)).reshape(*q.shape[:-1], nb * BLOCK)
        return out[..., :c] if pad else out
    rows = q.shape[0]
    if t.split_sizes is None:
        block = torch.arange(rows, device=q.device) // BLOCK
    else:
        sizes = t.split_sizes.to(q.device, torch.int64)
        e = torch.repeat_interleave(torch.arange(sizes.numel(), device=q.device), sizes, output_size=rows)
        start = torch.cumsum(sizes, 0) - sizes
        block = 4 * (start[e] // 128 + e) + (torch.arange(rows, device=q.device) - start[e]) // BLOCK
    return q * s[block]
