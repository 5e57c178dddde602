"""CuTe DSL grouped GEMM for Hopper: ``y[t] = a[t] @ b[e(t)].T`` for tokens sorted by expert.

bf16 x bf16 -> bf16 with fp32 accumulation; a: [T, K], b: [E, N, K], y: [T, N], all K / N
contiguous. One kernel per (N, K); T, E and the split sizes (``offsets``, E+1 int32 on the device)
are runtime values, so routing changes never recompile.

How the work is laid out, and why:
- A CTA owns one *placed* 128-row M tile (REFERENCE §2 grouped placement: expert e's tiles start
  at ``offsets[e] // 128 + e``) by 128 columns of N. Placed tiles of different experts never
  overlap, so the grid (N / 128, ceil(T/128) + E - 1) is known on the host without reading
  ``offsets``. Gap tiles and empty experts exit before touching ``b`` or issuing any MMA.
- The tile -> expert lookup is the quantize kernel's 2-level 32-ary ballot search (E <= 1024);
  every warp runs it itself, which costs two dependent load rounds and no shared memory.
- Mainloop: TMA loads 128x64 tiles of a (rows from ``offsets[e] + 128 * local``, not tile
  aligned: the TMA box starts at any row) and of b[e] into a ``PipelineTmaAsync`` ring; two
  warpgroups each run 64x128x16 WGMMAs over 64 rows of the tile, keeping one k-tile in flight.
  Rows of a past the expert's end are loaded (the next expert's tokens, or zeros past T from
  TMA's out-of-bounds fill) and multiplied, but never stored.
- Epilogue: accumulators -> bf16 -> shared memory (stmatrix, reusing the A ring), then 16-byte
  stores of whole row segments, predicated on the row being one of this expert's. A TMA store
  could not be used as is: it would overwrite the next expert's rows.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils
import torch
from cutlass import BFloat16, Int32, Int64

from ...quant.layout import grouped_tiles
from ..common.placement import MAX_EXPERTS, TILE_TOKENS
from ..._cuda import stream_handle
from ..compile import addr, check_aligned, compile_kernel, gmem_ptr, launch, stream_arg, target_arch
from .parts import (grouped_tma_atoms, make_tiled_mma_bf16, mma_partitions, placed_cta, stage_acc_bf16,
                    start_ab_pipeline, wgmma_ss_mainloop)

TILE_M = TILE_TOKENS  # the grouped placement's tile: one CTA, two warpgroups of 64 rows
TILE_N = 128
TILE_K = 64  # one 128-byte swizzle atom of bf16 along K
WARPGROUPS = 2
THREADS = 128 * WARPGROUPS
# 3 stages x 32 KB keeps two CTAs per SM, so one CTA's epilogue overlaps another's mainloop
STAGES = 3


class GroupedGemmSm90Kernel:
    """y[t, :] = a[t, :] @ b[e(t)].T (see module docstring); compiled per (N, K, stages)."""

    threads = THREADS

    def __init__(self, n: int, k: int, stages: int = STAGES):
        if k <= 0 or k % TILE_K:
            raise ValueError(f"K must be a positive multiple of {TILE_K}, got {k}")
        if n <= 0 or n % TILE_N:
            raise ValueError(f"N must be a positive multiple of {TILE_N}, got {n}")
        if stages < 2:
            raise ValueError(f"stages must be >= 2 (the epilogue reuses the A ring), got {stages}")
        self.n, self.k, self.stages = n, k, stages
        self.k_tiles = k // TILE_K
        self.tile_mnk = (TILE_M, TILE_N, TILE_K)

    @cute.jit
    def __call__(self, a: cute.Pointer, b: cute.Pointer, y: cute.Pointer, offsets: cute.Pointer,
                 tokens: Int32, num_experts: Int32, num_tiles: Int32, stream: cuda.CUstream):
        N, K = self.n, self.k
        # 128-byte-swizzled K-major stages for a and b (b as [N, K]); y staged row-major
        row = cutlass.tensor_utils.LayoutEnum.ROW_MAJOR
        self.a_smem = sm90_utils.make_smem_layout_a(row, self.tile_mnk, BFloat16, self.stages)
        self.b_smem = sm90_utils.make_smem_layout_b(row, self.tile_mnk, BFloat16, self.stages)
        self.y_smem = sm90_utils.make_smem_layout_epi(BFloat16, row, (TILE_M, TILE_N), 1)
        self.tiled_mma = make_tiled_mma_bf16(WARPGROUPS, TILE_N)
        tma_a, tma_mA, tma_b, tma_mB = grouped_tma_atoms(
            a, b, tokens, num_experts, N, K, cute.slice_(self.a_smem, (None, None, 0)),
            cute.slice_(self.b_smem, (None, None, 0)), self.tile_mnk)

        @cute.struct
        class SharedStorage:
            bars: cute.struct.MemRange[cutlass.Int64, self.stages * 2]  # full + empty mbarriers
            sA: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(self.a_smem)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(self.b_smem)], 1024]

        self.shared_storage = SharedStorage
        # layouts travel as kernel arguments (host-side IR values cannot be captured by the kernel)
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, y, offsets, num_experts, self.tiled_mma, self.a_smem, self.b_smem,
                    self.y_smem).launch(
            grid=[N // TILE_N, num_tiles, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, tma_mA: cute.Tensor, tma_b: cute.CopyAtom, tma_mB: cute.Tensor,
               y: cute.Pointer, offsets: cute.Pointer, num_experts: Int32, tiled_mma: cute.TiledMma,
               a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout, y_smem: cute.ComposedLayout):
        # ---- which expert and rows this placed tile holds (rows 0: gap tile / empty expert)
        tidx, warp, n_tile, tile, e, row0, rows, storage = placed_cta(offsets, num_experts, self.shared_storage)
        if rows > 0:
            sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
            sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)

            # ---- TMA views, pipeline (its first stages in flight) and WGMMA partitions (parts.py)
            tx_bytes = cute.size_in_bytes(BFloat16, cute.slice_(a_smem, (None, None, 0))) + cute.size_in_bytes(
                BFloat16, cute.slice_(b_smem, (None, None, 0)))
            k_tiles = self.k_tiles
            ab_pipe, prod, parts = start_ab_pipeline(tma_a, tma_mA, sA, tma_b, tma_mB, sB, storage.bars.data_ptr(),
                                                     self.stages, tx_bytes, k_tiles, row0, e, n_tile, self.tile_mnk,
                                                     warp, THREADS // 32)
            wg, tCrA, tCrB, acc, k_blocks = mma_partitions(tiled_mma, sA, sB, tidx, (TILE_M, TILE_N))

            wgmma_ss_mainloop(tiled_mma, acc, tCrA, tCrB, k_blocks, ab_pipe, prod, self.stages, k_tiles, warp, tma_a,
                              tma_b, parts)

            # ---- epilogue: every warpgroup is past its last WGMMA and every TMA write has
            # landed (all were waited on), so the A ring can hold the bf16 tile
            cute.arch.sync_threads()
            sY_layout = cute.slice_(y_smem, (None, None, 0))
            sY = cute.make_tensor(cute.recast_ptr(sA.iterator, sY_layout.inner, dtype=BFloat16), sY_layout.outer)
            stage_acc_bf16(acc, tiled_mma, sY, tidx)
            cute.arch.sync_threads()

            # 16 threads x 8 bf16 cover a 128-column row segment; 16 rows per pass
            s2g_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), BFloat16, num_bits_per_copy=128)
            s2g = cute.make_tiled_copy_tv(s2g_atom, cute.make_layout((THREADS // 16, 16), stride=(16, 1)),
                                          cute.make_layout((1, 8)))
            thr_s2g = s2g.get_slice(tidx)
            # 64-bit base of this tile (T * N can exceed 2^31); offsets inside it fit in 32 bits
            y_tile = cute.make_ptr(BFloat16, y.toint() + (Int64(row0) * self.n + n_tile * TILE_N) * 2,
                                   cute.AddressSpace.gmem, assumed_align=16)
            gY = cute.make_tensor(y_tile, cute.make_layout((TILE_M, TILE_N), stride=(self.n, 1)))
            tSsY = thr_s2g.partition_S(sY)
            tSgY = thr_s2g.partition_D(gY)
            tScY = thr_s2g.partition_D(cute.make_identity_tensor((TILE_M, TILE_N)))
            for i in cutlass.range_constexpr(cute.size(tSgY, mode=[1])):
                if tScY[(0, i, 0)][0] < rows:
                    cute.copy(s2g_atom, tSsY[(None, i, None)], tSgY[(None, i, None)])


# --- host side --------------------------------------------------------------------------------

def _placeholder_args():
    # a, b, y, offsets, tokens, experts, tiles, stream
    return (gmem_ptr(BFloat16), gmem_ptr(BFloat16), gmem_ptr(BFloat16), gmem_ptr(Int32),
            Int32(1), Int32(1), Int32(1), stream_arg())


def compiled_grouped_gemm_kernel(n, k, arch, keep_ptx=False):
    return compile_kernel(("grouped_gemm_sm90", n, k, STAGES), lambda: GroupedGemmSm90Kernel(n, k), _placeholder_args,
                          arch, keep_ptx)


def grouped_gemm_sm90(a, b, offsets, _poison=None):
    """``y[t] = a[t] @ b[e].T`` for ``offsets[e] <= t < offsets[e+1]``; returns a new bf16 [T, N].

    a: bf16 [T, K] contiguous; b: bf16 [E, N, K] contiguous; offsets: int32 [E+1] on the same
    device (exclusive cumsum of split sizes, ``offsets[E] == T``; not read on the host).
    ``_poison``: tests fill y with it first, so that a row the kernel does not write shows up.
    """
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:
        raise TypeError(f"a and b must be bf16, got {a.dtype} and {b.dtype}")
    if offsets.dtype != torch.int32:
        raise TypeError(f"offsets must be int32, got {offsets.dtype}")
    if a.dim() != 2 or b.dim() != 3 or b.shape[2] != a.shape[1] or offsets.shape != (b.shape[0] + 1,):
        raise ValueError(f"shapes a {tuple(a.shape)}, b {tuple(b.shape)}, offsets {tuple(offsets.shape)} do not match")
    if not (a.is_contiguous() and b.is_contiguous() and offsets.is_contiguous()):
        raise ValueError("a, b and offsets must be contiguous")
    check_aligned(a=a, b=b, offsets=offsets)
    tokens, k = a.shape
    num_experts, n, _ = b.shape
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"at most {MAX_EXPERTS} experts, got {num_experts}")
    y = torch.empty(tokens, n, dtype=torch.bfloat16, device=a.device)
    if _poison is not None:
        y.fill_(_poison)
    tiles = grouped_tiles(tokens, num_experts)
    # T == 0: nothing to compute (and a TMA descriptor cannot describe an empty tensor)
    if tokens == 0 or tiles <= 0:
        return y
    if tiles > 65535:  # placed tiles run along grid y
        raise ValueError(f"{tokens} tokens over {num_experts} experts need {tiles} M tiles, more than 65535")
    kern = compiled_grouped_gemm_kernel(n, k, target_arch(a.device))
    launch(kern, "pppp" + "iii" + "s", addr(a), addr(b), addr(y), addr(offsets), tokens, num_experts, tiles,
           stream_handle(a.device))
    return y
