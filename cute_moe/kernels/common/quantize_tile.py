"""MXFP8 quantization of one staged 128-row bf16 tile in shared memory -> global memory.

Shared by the quantize kernel (tiles staged by ``cp.async``) and the SM90 FC1 epilogue (the
SwiGLU output ``h`` staged from the accumulators), so both write bit-identical bytes and the same
scale layouts. The tile is row-major; rows at or past ``rows`` must hold zeros (they are padding of
the tile's last 32-row block and must not raise its amax).

Each pass uses 128 threads (``tid`` in [0, 128)): callers with more threads run the two passes on
different warpgroups at once. Tiles are ``tile_cols`` = 128 columns wide (the quantize kernel, the
dense FC1) or 64 (the swapped FC1's 128 features: 2 gate/up pairs), rows ``row_bytes(tile_cols)``
apart.
- Rowwise: a thread converts 8 columns of a row (4 lanes = one 32-block, two xor-shuffles for
  the amax).
- Columnwise: warp w owns rows 32w..32w+31 (one block), a lane 4 columns (64-column tiles: two
  lanes per column, 16 rows each, their amax joined by a shuffle); the +16-byte row padding puts
  these column reads on distinct banks.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64, Uint32

from .placement import TILE_TOKENS
from .ptx import (
    SCALE_PAD_CODE,
    absmax_bf16x2,
    bf16_to_e4m3,
    e4m3_to_bf16_scaled,
    e8m0_scale,
    halves_max,
    ld_shared,
    quad_transpose,
    st_global,
    st_global_u8,
    swizzle_offset,
    umax,
)

TILE_COLS = 128
PASS_THREADS = 128


def row_bytes(tile_cols: int) -> int:
    """Staged bf16 row pitch of a ``tile_cols``-wide tile (+16 bytes: no bank conflicts)."""
    return tile_cols * 2 + 16


ROW_BYTES = row_bytes(TILE_COLS)
TILE_BYTES = TILE_TOKENS * ROW_BYTES


@cute.jit
def quantize_tile_rowwise(stage: Int32, q_row: cute.Pointer, s_row: cute.Pointer, tile: Int32, cblk: Int32,
                          row0: Int32, rows: Int32, tid: Int32, cols: cutlass.Constexpr, swizzled: cutlass.Constexpr,
                          dequant: cutlass.Constexpr = False, tile_cols: cutlass.Constexpr = TILE_COLS):
    """Rows ``row0 .. row0+rows-1`` of columns ``tile_cols*cblk ..`` -> ``q_row`` [T, cols] and ``s_row``
    (plain [T, cols/32], or swizzled with placed tile ``tile``'s padding rows written as 127).

    ``dequant``: instead, ``q_row`` is bf16 [T, cols] and receives the exact dequantization of the
    MXFP8 values, K-permuted inside each 64-column tile (``kperm_rowwise``: column 16c + 4s + 2h + e
    at 16s + 8h + 2c + e), the SM90 GEMM's bf16 token operand; ``s_row`` is not written."""
    per_row = tile_cols // 8  # threads per row
    step = PASS_THREADS // per_row  # rows per step of the pass
    if rows >= TILE_TOKENS:  # full tile: straight-line code the compiler can batch
        for p in cutlass.range_constexpr(TILE_TOKENS // step):
            _rowwise_row(stage, q_row, s_row, tile, cblk, row0, rows, tid, p, cols, swizzled, dequant, tile_cols)
    else:
        for p in cutlass.range_constexpr(TILE_TOKENS // step):
            # rows are a prefix of the tile: a warp whose first row is past it has nothing to convert
            if (tid // 32) * (32 // per_row) + step * p < rows:
                _rowwise_row(stage, q_row, s_row, tile, cblk, row0, rows, tid, p, cols, swizzled, dequant, tile_cols)
            else:
                if cutlass.const_expr(swizzled and not dequant):
                    ch = tid % per_row
                    col = cblk * tile_cols + ch * 8
                    off = swizzle_offset(tile * TILE_TOKENS + tid // per_row + step * p, col // 32, cols // 128)
                    st_global_u8(s_row.toint() + Int64(off), Uint32(SCALE_PAD_CODE), (ch % 4 == 0) & (col < cols))


@cute.jit
def _rowwise_row(stage, q_row, s_row, tile, cblk, row0, rows, tid, p: cutlass.Constexpr, cols: cutlass.Constexpr,
                 swizzled: cutlass.Constexpr, dequant: cutlass.Constexpr, tile_cols: cutlass.Constexpr):
    """Row ``tid // per_row + step p`` of :func:`quantize_tile_rowwise`: ``per_row`` threads, 8
    columns each."""
    per_row = tile_cols // 8
    ch = tid % per_row
    col = cblk * tile_cols + ch * 8
    col_ok = col < cols
    blk = col // 32
    writer = (ch % 4 == 0) & col_ok
    r = tid // per_row + (PASS_THREADS // per_row) * p
    w = ld_shared(stage + r * row_bytes(tile_cols) + ch * 16, 4)
    m = halves_max(absmax_bf16x2(absmax_bf16x2(absmax_bf16x2(absmax_bf16x2(Uint32(0), w[0]), w[1]), w[2]), w[3]))
    m = umax(m, cute.arch.shuffle_sync_bfly(m, offset=1))
    m = umax(m, cute.arch.shuffle_sync_bfly(m, offset=2))
    code, sbits = e8m0_scale(m)
    q = bf16_to_e4m3(w, [sbits] * 8)
    row_ok = r < rows
    if cutlass.const_expr(dequant):
        # thread j = ch % 8 of a 64-column tile holds columns 8j.., i.e. (c, s, h) = (j // 2,
        # 2 (j % 2) + i // 2, i % 2) for its pairs i < 4, bound for bytes 64 (j % 2) + 16 i + 4 c.
        # Transposing the pairs of the 4 threads of one parity gives each thread 16 contiguous
        # bytes: one full-sector store instead of four 4-byte ones.
        j = ch % 8
        v = quad_transpose(e4m3_to_bf16_scaled(q, code), j // 2, 2)
        dst = q_row.toint() + (Int64(row0 + r) * cols + Int64(col - 8 * j)) * 2 + 64 * (j % 2) + 16 * (j // 2)
        st_global(dst, v, row_ok & col_ok)
    else:
        st_global(q_row.toint() + Int64(row0 + r) * cols + Int64(col), q, row_ok & col_ok)
        if cutlass.const_expr(swizzled):
            off = swizzle_offset(tile * TILE_TOKENS + r, blk, cols // 128)
            code_or_pad = Uint32(cutlass.select_(row_ok, code, Uint32(SCALE_PAD_CODE)))
            st_global_u8(s_row.toint() + Int64(off), code_or_pad, writer)
        else:
            st_global_u8(s_row.toint() + Int64(row0 + r) * (cols // 32) + Int64(blk), code, writer & row_ok)


@cute.jit
def quantize_tile_colwise(stage: Int32, q_col: cute.Pointer, s_col: cute.Pointer, tile: Int32, cblk: Int32,
                          row0: Int32, rows: Int32, num_tiles: Int32, tid: Int32, cols: cutlass.Constexpr,
                          grouped: cutlass.Constexpr, swizzled: cutlass.Constexpr,
                          tile_cols: cutlass.Constexpr = TILE_COLS):
    """Columnwise blocks of 32 rows (block ``4*tile + w``; grouped: per-expert blocks, padding
    blocks written as 127) -> ``q_col`` [T, cols] and ``s_col`` (plain or swizzled)."""
    pitch = row_bytes(tile_cols)
    lanes = tile_cols // 4  # lanes per row; 64 columns: two lanes per column, 16 rows each
    split = 32 // lanes
    part_rows = 32 // split
    warp = tid // 32
    lane = tid % 32
    part = lane // lanes
    col = cblk * tile_cols + (lane % lanes) * 4
    col_ok = col < cols
    first = part * part_rows  # this lane's first row in the block
    base = stage + (warp * 32 + first) * pitch + (lane % lanes) * 8
    blk_rows = cutlass.min(cutlass.max(rows - warp * 32, Int32(0)), Int32(32))
    has_data = blk_rows > 0  # warp-uniform; padding blocks (gap tiles, decode) only write scale codes
    acc0 = Uint32(0)
    acc1 = Uint32(0)
    if has_data:
        for i in cutlass.range_constexpr(part_rows):
            w = ld_shared(base + i * pitch, 2)
            acc0 = absmax_bf16x2(acc0, w[0])
            acc1 = absmax_bf16x2(acc1, w[1])
        if cutlass.const_expr(split == 2):
            acc0 = absmax_bf16x2(acc0, cute.arch.shuffle_sync_bfly(acc0, offset=lanes))
            acc1 = absmax_bf16x2(acc1, cute.arch.shuffle_sync_bfly(acc1, offset=lanes))
    acc = [acc0, acc1]
    codes = []
    sbits = []
    for j in cutlass.range_constexpr(4):
        m = (acc[j // 2] >> 16) if j % 2 else (acc[j // 2] & Uint32(0xFFFF))
        code, sb = e8m0_scale(m)
        codes.append(Uint32(cutlass.select_(has_data, code, Uint32(SCALE_PAD_CODE))))
        sbits.append(sb)
    q_base = q_col.toint() + Int64(row0 + warp * 32 + first) * cols + Int64(col)
    if has_data:
        for i in cutlass.range_constexpr(part_rows):
            w = ld_shared(base + i * pitch, 2)
            st_global(q_base + i * cols, bf16_to_e4m3(w, sbits), (first + i < blk_rows) & col_ok)
    block = tile * 4 + warp
    s_ok = col_ok & (part == 0)  # one lane per column writes its scale codes
    if cutlass.const_expr(swizzled):
        s_lane = s_col.toint() + Int64(swizzle_offset(col, block, num_tiles))
        for j in cutlass.range_constexpr(4):
            st_global_u8(s_lane + j * 16, codes[j], s_ok)
    else:
        packed = codes[0] | (codes[1] << 8) | (codes[2] << 16) | (codes[3] << 24)
        pred = s_ok if cutlass.const_expr(grouped) else (s_ok & has_data)
        st_global(s_col.toint() + Int64(block) * cols + Int64(col), [packed], pred)
