"""CuTe DSL MXFP8 quantization: bf16 ``[T, C]`` -> e4m3 rowwise and/or columnwise + E8M0 scales.

One kernel class, specialised at compile time by (C, rowwise, colwise, grouped, swizzled); T,
the split sizes and the expert count are runtime values, so routing changes never recompile.

Work decomposition (why it looks like this):
- A CTA owns one *placed* 128-token tile (REFERENCE §2 grouped placement: expert e's tiles start at
  ``offset[e] // 128 + e``) and 256 columns. Iterating over placed tiles rather than tokens means
  every scale byte of a grouped or swizzled buffer, padding included, has exactly one writer, and
  no 32-row block ever crosses an expert boundary.
- Warp w owns the 32-token strip w of the tile = one columnwise block; lane l owns 8 columns
  (16-byte loads; a warp reads 512 contiguous bytes per row). A thread keeps its 32x8 bf16 strip
  in registers: column amaxes need no communication, a rowwise block (32 columns) is 4 lanes
  (two xor-shuffles).
- The tile -> expert lookup is a 2-level 32-ary search by ballot over ``offsets`` (E <= 1024):
  two dependent loads instead of log2(E).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64, Uint32

from .common.ptx import (
    SCALE_PAD_CODE,
    absmax_bf16x2,
    bf16_to_e4m3,
    e8m0_scale,
    halves_max,
    ld_global_nc,
    ld_global_s32_pred,
    st_global,
    st_global_u8,
    swizzle_offset,
    umax,
)

TILE_TOKENS = 128
STRIP = 32  # tokens per warp = one columnwise block
MAX_EXPERTS = 1024  # two ballot levels of 32


class MXFP8QuantizeKernel:
    """bf16 [T, C] row-major -> MXFP8 (see module docstring).

    Outputs (all uint8 / e4m3 bytes, written completely by the kernel):
    - ``q_row`` [T, C], ``s_row`` plain [T, C/32] or swizzled (placed rows when grouped);
    - ``q_col`` [T, C], ``s_col`` plain [4 * tiles, C] (grouped) / [ceil(T/32), C] (dense) or
      swizzled as the transposed operand ([C, 4 * tiles] before swizzling).

    ``cols_per_lane``: 8 (16-byte loads, 128 data registers a thread) or 4 (8-byte loads, 64
    registers: more CTAs per SM to overlap one CTA's loads with another's conversion).
    """

    threads = 4 * 32

    def __init__(self, cols: int, rowwise: bool, colwise: bool, grouped: bool, swizzled: bool, cols_per_lane: int = 8, reload: bool = False):
        if cols % 32:
            raise ValueError(f"cols must be a multiple of 32, got {cols}")
        if swizzled and cols % 128:
            raise ValueError(f"swizzled scales need cols % 128 == 0, got {cols}")
        if not (rowwise or colwise):
            raise ValueError("at least one of rowwise / colwise")
        if cols_per_lane not in (4, 8):
            raise ValueError(f"cols_per_lane must be 4 or 8, got {cols_per_lane}")
        self.cols = cols
        self.rowwise = rowwise
        self.colwise = colwise
        self.grouped = grouped
        self.swizzled = swizzled
        self.cols_per_lane = cols_per_lane
        # row+col: convert the columnwise pass from a second (L1/L2-hit) load of the strip rather
        # than keeping it in registers through the rowwise pass
        self.reload = reload and rowwise and colwise
        self.cols_per_cta = 32 * cols_per_lane
        self.words = cols_per_lane // 2  # bf16 pairs a lane loads per row
        self.lanes_per_block = 32 // cols_per_lane  # lanes sharing one rowwise 32-block

    @cute.jit
    def __call__(
        self,
        x: cute.Pointer,
        q_row: cute.Pointer,
        s_row: cute.Pointer,
        q_col: cute.Pointer,
        s_col: cute.Pointer,
        offsets: cute.Pointer,
        tokens: Int32,
        num_experts: Int32,
        num_tiles: Int32,
        stream,
    ):
        self.kernel(x, q_row, s_row, q_col, s_col, offsets, tokens, num_experts, num_tiles).launch(
            # column chunks fastest: CTAs launched together cover the same rows, so partial-sector
            # scale writes of one row complete in L2 before eviction
            grid=[(self.cols + self.cols_per_cta - 1) // self.cols_per_cta, num_tiles, 1],
            block=[self.threads, 1, 1],
            stream=stream,
        )

    @cute.jit
    def find_expert(self, offsets: cute.Pointer, num_experts: Int32, tile: Int32, lane: Int32):
        """(e, offsets[e], offsets[e+1]) for the largest e with ``offsets[e] // 128 + e <= tile``
        (tile starts strictly increase with e). The last level's lanes also fetch offsets[e+1], so
        the token range comes back by shuffle: two dependent load rounds in all."""
        base = offsets.toint()
        lo = Int32(0)
        e = lane * 32
        ok = e < num_experts
        start = ld_global_s32_pred(base + Int64(e) * 4, ok, 0) // TILE_TOKENS + e
        lo = (Int32(cute.arch.popc(cute.arch.vote_ballot_sync(ok & (start <= tile)))) - 1) * 32
        e = lo + lane
        ok = e < num_experts
        off_e = ld_global_s32_pred(base + Int64(e) * 4, ok, 0)
        off_next = ld_global_s32_pred(base + Int64(e) * 4 + 4, ok, 0)
        hits = Int32(cute.arch.popc(cute.arch.vote_ballot_sync(ok & (off_e // TILE_TOKENS + e <= tile))))
        src = hits - 1
        tok0 = cute.arch.shuffle_sync(off_e, src)
        tok1 = cute.arch.shuffle_sync(off_next, src)
        return lo + src, tok0, tok1

    @cute.kernel
    def kernel(
        self,
        x: cute.Pointer,
        q_row: cute.Pointer,
        s_row: cute.Pointer,
        q_col: cute.Pointer,
        s_col: cute.Pointer,
        offsets: cute.Pointer,
        tokens: Int32,
        num_experts: Int32,
        num_tiles: Int32,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        cblk, tile, _ = cute.arch.block_idx()
        warp = tidx // 32
        lane = tidx % 32
        C = self.cols
        nw = self.words
        col = cblk * self.cols_per_cta + lane * self.cols_per_lane
        col_ok = col < C

        tok0 = Int32(0)
        tok1 = tokens
        tile0 = Int32(0)
        if cutlass.const_expr(self.grouped):
            e, tok0, tok1 = self.find_expert(offsets, num_experts, tile, lane)
            tile0 = tok0 // TILE_TOKENS + e
        local = (tile - tile0) * TILE_TOKENS + warp * STRIP  # strip start within the expert
        valid = cutlass.min(cutlass.max(tok1 - tok0 - local, Int32(0)), Int32(STRIP))
        row0 = tok0 + local  # token index of the strip's first row
        placed_row0 = tile * TILE_TOKENS + warp * STRIP

        # element (row0 + i, col) sits at byte (elem0 + i * C) * width: one 64-bit base per strip
        elem0 = Int64(row0) * C + Int64(col)
        x_strip = x.toint() + elem0 * 2
        first_cache = ".L1::evict_last" if cutlass.const_expr(self.reload) else ".L1::no_allocate"
        words = []
        for i in cutlass.range_constexpr(STRIP):
            words.append(ld_global_nc(x_strip + i * C * 2, (i < valid) & col_ok, nw, first_cache))

        if cutlass.const_expr(self.rowwise):
            q_strip = q_row.toint() + elem0
            blk = col // 32
            if cutlass.const_expr(self.swizzled):
                # placed rows tile*128 + warp*32 + i: only the (r % 32) term moves with i
                s_strip = s_row.toint() + Int64(swizzle_offset(placed_row0, blk, C // 128))
            else:
                s_strip = s_row.toint() + Int64(row0) * (C // 32) + Int64(blk)
            writer = (lane % self.lanes_per_block == 0) & col_ok
            for i in cutlass.range_constexpr(STRIP):
                acc = Uint32(0)
                for k in cutlass.range_constexpr(nw):
                    acc = absmax_bf16x2(acc, words[i][k])
                m = halves_max(acc)
                step = 1
                while step < self.lanes_per_block:  # trace-time loop: log2(lanes) xor-shuffles
                    m = umax(m, cute.arch.shuffle_sync_bfly(m, offset=step))
                    step *= 2
                code, sbits = e8m0_scale(m)
                q = bf16_to_e4m3(words[i], [sbits] * (2 * nw))
                row_ok = i < valid
                st_global(q_strip + i * C, q, row_ok & col_ok)
                if cutlass.const_expr(self.swizzled):
                    st_global_u8(s_strip + i * 16, Uint32(cutlass.select_(row_ok, code, Uint32(SCALE_PAD_CODE))), writer)
                else:
                    st_global_u8(s_strip + i * (C // 32), code, writer & row_ok)

        if cutlass.const_expr(self.colwise):
            acc = [Uint32(0)] * nw
            for i in cutlass.range_constexpr(STRIP):
                for k in cutlass.range_constexpr(nw):
                    acc[k] = absmax_bf16x2(acc[k], words[i][k])
            has_data = valid > 0
            codes = []
            sbits = []
            for j in cutlass.range_constexpr(2 * nw):
                m = (acc[j // 2] >> 16) if j % 2 else (acc[j // 2] & Uint32(0xFFFF))
                code, sb = e8m0_scale(m)
                codes.append(Uint32(cutlass.select_(has_data, code, Uint32(SCALE_PAD_CODE))))
                sbits.append(sb)
            q_strip = q_col.toint() + elem0
            if cutlass.const_expr(self.reload):
                for i in cutlass.range_constexpr(STRIP):
                    words[i] = ld_global_nc(x_strip + i * C * 2, (i < valid) & col_ok, nw, ".L1::evict_first")
            for i in cutlass.range_constexpr(STRIP):
                q = bf16_to_e4m3(words[i], sbits)
                st_global(q_strip + i * C, q, (i < valid) & col_ok)
            block = tile * 4 + warp  # placed 32-token block
            s_base = s_col.toint()
            if cutlass.const_expr(self.swizzled):
                # the lane's columns share col // 128 and (col % 128) // 32: only (r % 32) moves
                s_lane = s_base + Int64(swizzle_offset(col, block, num_tiles))
                for j in cutlass.range_constexpr(2 * nw):
                    st_global_u8(s_lane + j * 16, codes[j], col_ok)
            else:
                packed = []
                for w in cutlass.range_constexpr(nw // 2):
                    c4 = codes[4 * w : 4 * w + 4]
                    packed.append(c4[0] | (c4[1] << 8) | (c4[2] << 16) | (c4[3] << 24))
                # dense plain scales have exactly ceil(T/32) block rows: skip empty strips
                pred = col_ok if cutlass.const_expr(self.grouped) else (col_ok & has_data)
                st_global(s_base + Int64(block) * C + Int64(col), packed, pred)


# --- host side --------------------------------------------------------------------------------

def _placeholder_args(kernel_cfg=None):
    import cutlass

    from .compile import gmem_ptr, stream_arg

    return (
        gmem_ptr(cutlass.BFloat16),
        *(gmem_ptr(cutlass.Uint8) for _ in range(4)),
        gmem_ptr(cutlass.Int32),
        Int32(1),
        Int32(1),
        Int32(1),
        stream_arg(),
    )


def compiled_quantize_kernel(cols, rowwise, colwise, grouped, swizzled, arch, keep_ptx=False, cols_per_lane=8, reload=False):
    from .compile import compile_kernel

    cfg = (cols, rowwise, colwise, grouped, swizzled, cols_per_lane, reload)
    return compile_kernel(("mxfp8_quantize",) + cfg, lambda: MXFP8QuantizeKernel(*cfg), _placeholder_args(), arch, keep_ptx)


def quantize_mxfp8_cuda(x, rowwise=True, colwise=False, offsets=None, swizzled=False, _poison=None, cols_per_lane=8, reload=False):
    """Launch the quantize kernel on a CUDA bf16 ``[T, C]`` tensor (checked by the caller).

    ``offsets``: int32 CUDA tensor [E+1] (exclusive cumsum of split sizes) or None (dense).
    Returns (q_row, s_row, q_col, s_col) with unused outputs None; scales are plain or swizzled.
    """
    import torch
    import cutlass

    from ..quant.layout import grouped_tiles
    from .compile import gmem_ptr, stream_arg, target_arch

    tokens, cols = x.shape
    num_experts = 1 if offsets is None else offsets.numel() - 1
    tiles = grouped_tiles(tokens, num_experts) if offsets is not None else -(-tokens // TILE_TOKENS)
    dev = x.device

    def alloc(shape):
        out = torch.empty(shape, dtype=torch.uint8, device=dev)
        # tests poison the outputs so that a byte the kernel does not write shows up
        return out if _poison is None else out.fill_(_poison)
    q_row = s_row = q_col = s_col = None
    if rowwise:
        q_row = alloc((tokens, cols))
        s_row = alloc((tiles * TILE_TOKENS * cols // 32,) if swizzled else (tokens, cols // 32))
    if colwise:
        q_col = alloc((tokens, cols))
        nblk = 4 * tiles if offsets is not None else -(-tokens // STRIP)
        s_col = alloc((cols * 4 * tiles,) if swizzled else (nblk, cols))
    if tiles > 0 and cols > 0:
        kern = compiled_quantize_kernel(cols, rowwise, colwise, offsets is not None, swizzled, target_arch(dev), cols_per_lane=cols_per_lane, reload=reload)
        u8p = lambda t: gmem_ptr(cutlass.Uint8, t)  # noqa: E731
        kern(
            gmem_ptr(cutlass.BFloat16, x),
            u8p(q_row),
            u8p(s_row),
            u8p(q_col),
            u8p(s_col),
            gmem_ptr(cutlass.Int32, offsets),
            Int32(tokens),
            Int32(num_experts),
            Int32(tiles),
            stream_arg(torch.cuda.current_stream(dev)),
        )
    if swizzled:
        if s_row is not None:
            s_row = s_row.view(tiles * TILE_TOKENS, cols // 32)
        if s_col is not None:
            s_col = s_col.view(cols, 4 * tiles)
    f8 = lambda t: None if t is None else t.view(torch.float8_e4m3fn)  # noqa: E731
    return f8(q_row), s_row, f8(q_col), s_col
