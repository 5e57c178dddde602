"""CuTe DSL MXFP8 quantization: bf16 ``[T, C]`` -> e4m3 rowwise and/or columnwise + E8M0 scales.

One kernel class, specialised at compile time by (C, rowwise, colwise, grouped, swizzled); T,
the split sizes and the expert count are runtime values, so routing changes never recompile.

How the work is laid out, and why:
- A work item is one *placed* 128-token tile (REFERENCE §2 grouped placement: expert e's tiles
  start at ``offset[e] // 128 + e``) by 128 columns. Iterating over placed tiles rather than tokens
  means every scale byte of a grouped or swizzled buffer, padding included, has exactly one writer,
  and no 32-row block ever crosses an expert boundary.
- Persistent CTAs (3 per SM) walk the items; each item is staged in shared memory by ``cp.async``
  (rows past the expert's end are zero-filled), double-buffered so the next item's loads fly while
  this one converts. Register-resident designs (the strip kept in registers, no shared memory)
  measured 0.52-0.78 of copy bandwidth for row+col because a CTA's conversion could not overlap its
  own loads; this one measures 0.80-0.87 (bench/RESULTS.md).
- Rowwise pass: a thread converts 8 columns of a row (4 lanes = one 32-block, two xor-shuffles for
  the amax). Columnwise pass: warp w owns rows 32w..32w+31 (one block), a lane 4 columns; rows are
  padded by 16 bytes in shared memory so these column reads are bank-conflict free.
- The tile -> expert lookup is a 2-level 32-ary search by ballot over ``offsets`` (E <= 1024) that
  also returns the expert's token range by shuffle: two dependent load rounds.
"""

from __future__ import annotations

import cutlass
import cuda.bindings.driver as cuda
import cutlass.cute as cute
import torch
from cutlass import Int32, Int64

from ..quant.layout import grouped_tiles
from .common.ptx import cp_async_16
from .common.quantize_tile import ROW_BYTES, TILE_BYTES, TILE_COLS, quantize_tile_colwise, quantize_tile_rowwise
from .common.placement import TILE_TOKENS, placed_tile
from .._cuda import sm_count, stream_handle
from .compile import addr, check_aligned, compile_kernel, front_door_kernel, gmem_ptr, launch, stream_arg, target_arch

STAGE_BYTES = TILE_BYTES
STAGES = 2
CTAS_PER_SM = 3  # 2 stages x 34 KB of shared memory each


class MXFP8QuantizeKernel:
    """bf16 [T, C] row-major -> MXFP8 (see module docstring).

    Outputs (all uint8 / e4m3 bytes, written completely by the kernel):
    - ``q_row`` [T, C], ``s_row`` plain [T, C/32] or swizzled (placed rows when grouped);
    - ``q_col`` [T, C], ``s_col`` plain [4 * tiles, C] (grouped) / [ceil(T/32), C] (dense) or
      swizzled as the transposed operand ([C, 4 * tiles] before swizzling).
    """

    threads = 128

    def __init__(self, cols: int, rowwise: bool, colwise: bool, grouped: bool, swizzled: bool,
                 row_dequant: bool = False):
        if cols % 32:
            raise ValueError(f"cols must be a multiple of 32, got {cols}")
        if swizzled and cols % 128:
            raise ValueError(f"swizzled scales need cols % 128 == 0, got {cols}")
        if not (rowwise or colwise):
            raise ValueError("at least one of rowwise / colwise")
        if row_dequant and (not rowwise or cols % 64):
            raise ValueError(f"row_dequant replaces the rowwise output and needs cols % 64 == 0, got {cols}")
        self.cols, self.rowwise, self.colwise, self.grouped, self.swizzled = cols, rowwise, colwise, grouped, swizzled
        self.row_dequant = row_dequant
        self.n_cblk = (cols + TILE_COLS - 1) // TILE_COLS

    @cute.jit
    def __call__(self, x: cute.Pointer, q_row: cute.Pointer, s_row: cute.Pointer, q_col: cute.Pointer, s_col: cute.Pointer,
                 offsets: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32, num_ctas: Int32, stream: cuda.CUstream):
        self.kernel(x, q_row, s_row, q_col, s_col, offsets, tokens, num_experts, num_tiles).launch(
            grid=[num_ctas, 1, 1], block=[self.threads, 1, 1], stream=stream)

    @cute.jit
    def item_rows(self, offsets, tokens, num_experts, tile, lane):
        """(first token, valid rows) of placed tile ``tile`` (dense: tile ``tile`` of [T, C])."""
        row0 = tile * TILE_TOKENS
        rows = cutlass.min(cutlass.max(tokens - row0, Int32(0)), Int32(TILE_TOKENS))
        if cutlass.const_expr(self.grouped):
            _, row0, rows = placed_tile(offsets, num_experts, tile, lane)
        return row0, rows

    @cute.jit
    def issue(self, x: cute.Pointer, stage: Int32, row0: Int32, rows: Int32, cblk: Int32, tidx: Int32):
        C = self.cols
        ch = tidx % 16
        col = cblk * TILE_COLS + ch * 8
        for j in cutlass.range_constexpr(TILE_TOKENS // 8):
            r = tidx // 16 + 8 * j
            ok = (r < rows) & (col < C)
            src = x.toint() + Int64(cutlass.select_(ok, (Int64(row0 + r) * C + Int64(col)) * 2, Int64(0)))
            cp_async_16(stage + r * ROW_BYTES + ch * 16, Int64(src), Int32(cutlass.select_(ok, Int32(16), Int32(0))))

    @cute.jit
    def prefetch(self, x, offsets, tokens, num_experts, item, n_items, stage, lane, tidx):
        """Look up work item ``item`` and start its loads into ``stage``. Commits one cp.async group
        per call, empty past the last item, so ``wait_group(1)`` always means "the older one"."""
        tile = item // self.n_cblk
        cblk = item % self.n_cblk
        row0 = Int32(0)
        rows = Int32(0)
        if item < n_items:
            row0, rows = self.item_rows(offsets, tokens, num_experts, tile, lane)
            self.issue(x, stage, row0, rows, cblk, tidx)
        cute.arch.cp_async_commit_group()
        return tile, cblk, row0, rows

    @cute.jit
    def process(self, q_row, s_row, q_col, s_col, stage, tile, cblk, row0, rows, num_tiles, tidx):
        if cutlass.const_expr(self.rowwise):
            quantize_tile_rowwise(stage, q_row, s_row, tile, cblk, row0, rows, tidx, self.cols, self.swizzled,
                                  self.row_dequant)
        if cutlass.const_expr(self.colwise):
            quantize_tile_colwise(stage, q_col, s_col, tile, cblk, row0, rows, num_tiles, tidx, self.cols,
                                  self.grouped, self.swizzled)

    @cute.kernel
    def kernel(self, x: cute.Pointer, q_row: cute.Pointer, s_row: cute.Pointer, q_col: cute.Pointer, s_col: cute.Pointer,
               offsets: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        bid, _, _ = cute.arch.block_idx()
        nctas, _, _ = cute.arch.grid_dim()
        lane = tidx % 32
        smem = cutlass.memory.SmemAllocator()
        buf = smem.allocate(STAGES * STAGE_BYTES, byte_alignment=128).toint()
        n_items = num_tiles * self.n_cblk

        # double buffer: item n+1's loads are in flight while item n converts
        item = bid
        tile, cblk, row0, rows = self.prefetch(x, offsets, tokens, num_experts, item, n_items, buf, lane, tidx)
        s = Int32(0)
        while item < n_items:
            nxt = item + nctas
            n_tile, n_cblk, n_row0, n_rows = self.prefetch(
                x, offsets, tokens, num_experts, nxt, n_items, buf + (1 - s) * STAGE_BYTES, lane, tidx
            )
            cute.arch.cp_async_wait_group(1)
            cute.arch.sync_threads()
            self.process(q_row, s_row, q_col, s_col, buf + s * STAGE_BYTES, tile, cblk, row0, rows, num_tiles, tidx)
            cute.arch.sync_threads()
            item = nxt
            tile = n_tile
            cblk = n_cblk
            row0 = n_row0
            rows = n_rows
            s = 1 - s


# --- host side --------------------------------------------------------------------------------

def _placeholder_args(row_dequant=False):
    # x, q_row (bf16 with row_dequant), s_row, q_col, s_col, offsets, tokens, experts, tiles, ctas, stream
    return (
        gmem_ptr(cutlass.BFloat16),
        gmem_ptr(cutlass.BFloat16 if row_dequant else cutlass.Uint8),
        *(gmem_ptr(cutlass.Uint8) for _ in range(3)),
        gmem_ptr(cutlass.Int32),
        Int32(1),
        Int32(1),
        Int32(1),
        Int32(1),
        stream_arg(),
    )


def compiled_quantize_kernel(cols, rowwise, colwise, grouped, swizzled, arch, keep_ptx=False, row_dequant=False):
    cfg = (cols, rowwise, colwise, grouped, swizzled, row_dequant)
    return compile_kernel(("mxfp8_quantize",) + cfg, lambda: MXFP8QuantizeKernel(*cfg),
                          lambda: _placeholder_args(row_dequant), arch, keep_ptx)


def _launcher(cols, rowwise, colwise, grouped, swizzled, dev, row_dequant=False):
    """(compiled kernel, resident CTA limit) per config and device: the per-call host path is one
    dict lookup (:func:`front_door_kernel`), not an arch query."""
    return front_door_kernel(
        ("quantize", cols, rowwise, colwise, grouped, swizzled, dev, row_dequant),
        lambda: (compiled_quantize_kernel(cols, rowwise, colwise, grouped, swizzled, target_arch(dev),
                                          row_dequant=row_dequant), CTAS_PER_SM * sm_count(dev)))


def quantize_mxfp8_cuda(x, rowwise=True, colwise=False, offsets=None, swizzled=False, row_dequant=False,
                        _poison=None):
    """Launch the quantize kernel on a CUDA bf16 ``[T, C]`` tensor (checked by the caller).

    ``offsets``: int32 CUDA tensor [E+1] (exclusive cumsum of split sizes) or None (dense).
    Returns (q_row, s_row, q_col, s_col) with unused outputs None; scales are plain or swizzled.
    ``row_dequant``: ``q_row`` is instead the exact bf16 dequantization of the rowwise MXFP8 values,
    K-permuted for the SM90 GEMM's ``a_dequant`` (cols % 64 == 0), and ``s_row`` is None.
    """
    tokens, cols = x.shape
    check_aligned(x=x, offsets=offsets)
    num_experts = 1 if offsets is None else offsets.numel() - 1
    tiles = grouped_tiles(tokens, num_experts) if offsets is not None else -(-tokens // TILE_TOKENS)
    dev = x.device

    def alloc(shape):
        out = torch.empty(shape, dtype=torch.uint8, device=dev)
        # tests poison the outputs so that a byte the kernel does not write shows up
        return out if _poison is None else out.fill_(_poison)

    q_row = s_row = q_col = s_col = None
    if row_dequant:
        if not rowwise or cols % 64:
            raise ValueError(f"row_dequant needs rowwise=True and cols % 64 == 0, got cols={cols}")
        q_row = torch.empty((tokens, cols), dtype=torch.bfloat16, device=dev)
        if _poison is not None:
            q_row.fill_(float("nan"))
    elif rowwise:
        q_row = alloc((tokens, cols))
        s_row = alloc((tiles * TILE_TOKENS, cols // 32) if swizzled else (tokens, cols // 32))
    if colwise:
        q_col = alloc((tokens, cols))
        nblk = 4 * tiles if offsets is not None else -(-tokens // 32)
        s_col = alloc((cols, 4 * tiles) if swizzled else (nblk, cols))
    if tiles > 0 and cols > 0:
        kern, max_ctas = _launcher(cols, rowwise, colwise, offsets is not None, swizzled, dev, row_dequant)
        # x, q_row, s_row, q_col, s_col, offsets, tokens, experts, tiles, ctas, stream
        launch(kern, "pppppp" + "iiii" + "s", addr(x), addr(q_row), addr(s_row), addr(q_col), addr(s_col),
               addr(offsets), tokens, num_experts, tiles, min(tiles * -(-cols // TILE_COLS), max_ctas),
               stream_handle(dev))
    f8 = lambda t: None if t is None else t.view(torch.float8_e4m3fn)  # noqa: E731
    return (q_row if row_dequant else f8(q_row)), s_row, f8(q_col), s_col
