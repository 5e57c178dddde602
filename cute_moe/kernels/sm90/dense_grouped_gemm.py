"""The SM90 grouped GEMM's dense form (``b_dequant``, many tokens per expert), FC1 (SwiGLU + MXFP8
out) and FC2 epilogues as in :mod:`.mx_grouped_gemm`, whose kernel class this one extends (same
flags, launcher and staged-h quantize passes).

The weights come as their exact bf16 dequantization (K-permuted like the tokens), and the tile
runs the usual way round: tokens are WGMMA's M (64 per warpgroup), features its N (64x256
WGMMAs), both from a 4-stage TMA ring, no conversion. Twice the weight bytes of the swapped form,
so only where each weight tile serves several token tiles (bench/RESULTS.md, sessions 7 and 9).

- Persistent (one CTA per SM) and warp-specialized: a producer warp keeps the ring full while the
  consumer warpgroups run the epilogue, which works straight from the accumulators.
- 2-CTA clusters take two token tiles of one expert and load their shared weight tile once (TMA
  multicast): the bf16 mainloop is bound by L2 -> SM bytes.
"""

from __future__ import annotations

import functools

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
import torch
from cutlass import BFloat16, Float32, Int32, Uint8

from ..common.activation import swiglu_bf16x2
from ..common.placement import TILE_TOKENS, find_expert
from ..common.ptx import f32_to_bf16x2, st_shared
from ..common.quantize_tile import ROW_BYTES as H_ROW_BYTES
from ..common.quantize_tile import TILE_BYTES as H_TILE_BYTES
from .mx_grouped_gemm import GLU, THREADS, TILE_K, TILE_M, TILE_N, WARPGROUPS, MXGroupedGemmSm90Kernel, store_rows
from .parts import (banded_coords, grouped_tma_atoms, load_ab_stage, make_ab_pipeline, make_tiled_mma_bf16,
                    mma_partitions, null_stage, tma_tile_partitions, weight_tma_atom, wgmma_ss_consume)

DENSE_STAGES = 4  # 4 x 48 KB of bf16 tokens + weights
# clusters of 2 CTAs on two token tiles of one expert (same N tile) load the weight tile once, by
# TMA multicast (32 instead of 48 KB L2 -> SM per k-tile; the bf16 mainloop is bound by it)
DENSE_CLUSTER = 2
DENSE_CONSUMER_REGS = 232  # setmaxnreg: 2 x 128 x 232 + 128 x 40 = 384 x 168, the registers the launch gives
DENSE_PRODUCER_REGS = 40
# the consumers' setmaxnreg.inc waits for registers the producer freed: more than the launch's 168 per
# thread in total and it waits forever
assert WARPGROUPS * 128 * DENSE_CONSUMER_REGS + 128 * DENSE_PRODUCER_REGS <= (THREADS + 128) * 168


class DenseGroupedGemmSm90Kernel(MXGroupedGemmSm90Kernel):
    """``weights_bf16``: see the module docstring; constructor flags as the base class's."""

    @cute.jit
    def __call__(self, a: cute.Pointer, a_scale: cute.Pointer, b: cute.Pointer, b_scale: cute.Pointer,
                 offsets: cute.Pointer, out: cute.Pointer, probs: cute.Pointer, h: cute.Pointer,
                 hq_row: cute.Pointer, hs_row: cute.Pointer, hq_col: cute.Pointer, hs_col: cute.Pointer,
                 tokens: Int32, num_experts: Int32, num_tiles: Int32, ctas: Int32, stream: cuda.CUstream):
        """Both operands bf16 (``a_scale`` / ``b_scale`` unused), 128-byte-swizzled K-major stages
        (tokens = A, weights = B); a persistent grid of ``ctas`` CTAs in clusters of two."""
        row_major = cutlass.tensor_utils.LayoutEnum.ROW_MAJOR
        a_smem = sm90_utils.make_smem_layout_a(row_major, self.tile_mnk, BFloat16, DENSE_STAGES)
        b_smem = sm90_utils.make_smem_layout_b(row_major, self.tile_mnk, BFloat16, DENSE_STAGES)
        mma = make_tiled_mma_bf16(WARPGROUPS, TILE_N)
        b_stage = cute.slice_(b_smem, (None, None, 0))
        tma_a, tma_mA, tma_b, tma_mB = grouped_tma_atoms(
            a, b, tokens, num_experts, self.n, self.k, cute.slice_(a_smem, (None, None, 0)), b_stage, self.tile_mnk)
        tma_b_mc, tma_mB_mc = weight_tma_atom(b, self.n, self.k, num_experts, b_stage, TILE_N, TILE_K, DENSE_CLUSTER)

        @cute.struct
        class SharedStorage:
            sA: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(a_smem)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(b_smem)], 1024]
            # the epilogue's staging, apart from the ring (the producer refills it meanwhile): z / y
            # in two 128-column halves, then the 128x128 h tile
            sEpi: cute.struct.Align[cute.struct.MemRange[Uint8, H_TILE_BYTES], 128]
            bars: cute.struct.MemRange[cutlass.Int64, DENSE_STAGES * 2]

        self.shared_storage = SharedStorage
        self.kernel_dense(tma_a, tma_mA, tma_b, tma_mB, tma_b_mc, tma_mB_mc, offsets, out, probs, h, hq_row, hs_row,
                          hq_col, hs_col, tokens, num_experts, num_tiles, mma, a_smem, b_smem).launch(
            grid=[ctas, 1, 1], block=[THREADS + 128, 1, 1], cluster=[DENSE_CLUSTER, 1, 1], stream=stream,
            min_blocks_per_mp=1)

    @cute.kernel
    def kernel_dense(self, tma_a: cute.CopyAtom, tma_mA: cute.Tensor, tma_b: cute.CopyAtom, tma_mB: cute.Tensor,
                     tma_b_mc: cute.CopyAtom, tma_mB_mc: cute.Tensor, offsets: cute.Pointer, out: cute.Pointer,
                     probs: cute.Pointer, h: cute.Pointer, hq_row: cute.Pointer, hs_row: cute.Pointer,
                     hq_col: cute.Pointer, hs_col: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32,
                     tiled_mma: cute.TiledMma, a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout):
        """Persistent and warp-specialized: warpgroups 0-1 multiply and run the epilogue, warp 8
        (warpgroup 2) only issues TMA loads, so the ring refills for the next tile while the
        consumers store this one.

        The two CTAs of a cluster take two consecutive 128-token tiles of one expert with the same N
        tile, a *unit*, and share its weight tile: each loads half and multicasts it (the mainloop is
        bound by L2 -> SM bytes: 32 KB per k-tile per CTA instead of 48). Units follow the grouped
        placement of 256-token pairs (expert e's start at ``offsets[e] // 256 + e``), so a pair never
        straddles two experts and covers every placed 128-token tile, gap tiles included, exactly
        once; clusters walk them in launch order (``banded_coords``) with a stride of the cluster
        count. When only the first tile of a unit holds tokens, it loads the whole weight tile alone
        and the peer completes empty stages (``null_stage``): both rings stay in step, since every
        consumer warp releases each stage in both CTAs."""
        tidx, _, _ = cute.arch.thread_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        lane = tidx % 32
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
        sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)
        # all 384 threads: barrier init (cluster-wide)
        ab_pipe = make_ab_pipeline(storage.bars.data_ptr(), DENSE_STAGES, (TILE_M + TILE_N) * TILE_K * 2,
                                   THREADS // 32, DENSE_CLUSTER)
        n_tiles = self.n // TILE_N
        pair = 2 * TILE_TOKENS
        units = (tokens + pair - 1) // pair + num_experts - 1
        bx, _, _ = cute.arch.block_idx()
        grid, _, _ = cute.arch.grid_dim()
        rank = bx % DENSE_CLUSTER
        if warp >= THREADS // 32:
            cute.arch.setmaxregister_decrease(DENSE_PRODUCER_REGS)
            if warp == THREADS // 32:
                cute.nvgpu.cpasync.prefetch_descriptor(tma_a)
                cute.nvgpu.cpasync.prefetch_descriptor(tma_b)
                cute.nvgpu.cpasync.prefetch_descriptor(tma_b_mc)
                prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, DENSE_STAGES)
                u = bx // DENSE_CLUSTER
                while u < units * n_tiles:
                    n_tile, e, row0, rows, first_rows, shared_b, tile, has_tile = self.dense_unit(
                        offsets, num_experts, num_tiles, u, n_tiles, units, rank, lane)
                    if shared_b:
                        parts = tma_tile_partitions(tma_a, tma_mA, sA, tma_b_mc, tma_mB_mc, sB, row0, e, n_tile,
                                                    self.tile_mnk, DENSE_CLUSTER)
                        for kt in cutlass.range(self.k_tiles, unroll=1):
                            load_ab_stage(ab_pipe, prod, tma_a, tma_b_mc, parts, kt, DENSE_CLUSTER)
                            prod.advance()
                    elif rows > 0:
                        parts = tma_tile_partitions(tma_a, tma_mA, sA, tma_b, tma_mB, sB, row0, e, n_tile,
                                                    self.tile_mnk)
                        for kt in cutlass.range(self.k_tiles, unroll=1):
                            load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts, kt)
                            prod.advance()
                    elif first_rows > 0:
                        for kt in cutlass.range(self.k_tiles, unroll=1):
                            null_stage(ab_pipe, prod)
                            prod.advance()
                    u += grid // DENSE_CLUSTER
                # the consumers' last releases (the peer CTA's too) have landed before this CTA exits
                ab_pipe.producer_tail(prod)
        else:
            cute.arch.setmaxregister_increase(DENSE_CONSUMER_REGS)
            _, tCrA, tCrB, acc, k_blocks = mma_partitions(tiled_mma, sA, sB, tidx, (TILE_M, TILE_N))
            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
            read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, DENSE_STAGES)
            u = bx // DENSE_CLUSTER
            while u < units * n_tiles:
                n_tile, e, row0, rows, first_rows, shared_b, tile, has_tile = self.dense_unit(
                    offsets, num_experts, num_tiles, u, n_tiles, units, rank, lane)
                if rows > 0:
                    read = wgmma_ss_consume(tiled_mma, acc, tCrA, tCrB, k_blocks, ab_pipe, read, self.k_tiles)
                elif first_rows > 0:
                    # the peer's tile: pass its stages through (released in both CTAs), no math
                    for kt in cutlass.range(self.k_tiles, unroll=1):
                        ab_pipe.consumer_wait(read)
                        ab_pipe.consumer_release(read)
                        read.advance()
                if has_tile:
                    self.epilogue_dense(acc, storage.sEpi.data_ptr().toint(), out, probs, h, hq_row, hs_row, hq_col,
                                        hs_col, tile, n_tile, row0, rows, num_tiles, tidx)
                u += grid // DENSE_CLUSTER
        # the peer CTA's consumers arrive on this CTA's empty barriers until they are done
        cute.arch.cluster_arrive()
        cute.arch.cluster_wait()

    @cute.jit
    def dense_unit(self, offsets, num_experts, num_tiles, u, n_tiles, units, rank, lane):
        """Unit ``u`` in launch order -> this CTA's share: (N tile, expert, first token, rows, the
        unit's first tile's rows, whether the weight tile is shared (both tiles hold tokens), the
        placed 128-token tile, whether that tile exists (gap tiles do; a pair's second slot past
        the expert's placed tiles does not)). Warp-uniform."""
        n_tile, pair_idx = banded_coords(u, n_tiles, units)
        e, tok0, tok1 = find_expert(offsets, num_experts, pair_idx, lane, 2 * TILE_TOKENS)
        local = 2 * (pair_idx - (tok0 // (2 * TILE_TOKENS) + e)) + rank
        first = tok0 // TILE_TOKENS + e
        tile = first + local
        has_tile = (tile < tok1 // TILE_TOKENS + e + 1) & (tile < num_tiles)
        first_rows = cutlass.max(cutlass.min(tok1 - tok0 - TILE_TOKENS * (local - rank), Int32(TILE_TOKENS)), Int32(0))
        second_rows = cutlass.max(cutlass.min(tok1 - tok0 - TILE_TOKENS * (local - rank + 1), Int32(TILE_TOKENS)),
                                  Int32(0))
        rows = cutlass.select_(rank == 0, first_rows, second_rows)
        return n_tile, e, tok0 + TILE_TOKENS * local, rows, first_rows, second_rows > 0, tile, has_tile

    @cute.jit
    def epilogue_dense(self, acc, epi: Int32, out, probs, h, hq_row, hs_row, hq_col, hs_col, tile, n_tile, row0, rows,
                       num_tiles, tidx):
        """The dense tile's epilogue, straight from the accumulators: thread (warpgroup g, warp w,
        lane l) holds rows 64g + 16w + l/4 (+8) at columns 8j + 2(l%4) (+1), j < 32 (accumulator
        index 4j + 2i + c), so a gate column and its up partner 32 later are in the same thread.
        z / y: bf16 words -> the staging buffer, one 128-column half at a time -> 16-byte stores of
        the expert's rows. FC1: h = p * silu(g) * u from the same bf16 words (the reference's
        order, as in :meth:`swiglu_epilogue`), staged as the quantize kernel's 128x128 tile, then the
        shared tile passes (warpgroup 0 rowwise, warpgroup 1 columnwise). Only the consumer
        warpgroups take part: their own named barrier, never ``sync_threads``."""
        bar = pipeline.NamedBarrier(barrier_id=1, num_threads=THREADS)
        lane = tidx % 32
        r_top = 64 * (tidx // 128) + 16 * ((tidx // 32) % 4) + lane // 4
        cw = 2 * (lane % 4)
        # the previous tile's readers of the staging buffer are done
        bar.arrive_and_wait()
        if rows > 0:
            # (plain names: a value assigned under a runtime branch must be a variable, not a list item)
            p0 = Float32(1.0)
            p1 = Float32(1.0)
            if cutlass.const_expr(self.with_probs):
                if r_top < rows:
                    p0 = cute.make_tensor(probs + (row0 + r_top), cute.make_layout(1))[0]
                if r_top + 8 < rows:
                    p1 = cute.make_tensor(probs + (row0 + r_top + 8), cute.make_layout(1))[0]
            p = [p0, p1] if self.with_probs else [None, None]
            hw = [[None] * (TILE_N // 16) for _ in range(2)]
            # a half at a time (bf16 words of 16 column groups per row): fewer live registers next
            # to the accumulators; its two gate/up pairs give h words kept until the z halves are out
            for half in cutlass.range_constexpr(2):
                zw = [[f32_to_bf16x2(acc[4 * j + 2 * i], acc[4 * j + 2 * i + 1])
                       for j in range(16 * half, 16 * half + 16)] for i in range(2)]
                for i in cutlass.range_constexpr(2):
                    for j in cutlass.range_constexpr(16):
                        st_shared(epi + (r_top + 8 * i) * H_ROW_BYTES + (8 * j + cw) * 2, [zw[i][j]])
                if cutlass.const_expr(self.swiglu):
                    for i in cutlass.range_constexpr(2):
                        for pp in cutlass.range_constexpr(2):
                            hw[i][8 * half + 4 * pp: 8 * half + 4 * pp + 4] = swiglu_bf16x2(
                                zw[i][8 * pp: 8 * pp + 4], zw[i][8 * pp + 4: 8 * pp + 8], p[i], r_top + 8 * i < rows)
                bar.arrive_and_wait()
                store_rows(out, self.n, n_tile * TILE_N + 128 * half, 128, epi, H_ROW_BYTES, row0, rows, tidx)
                bar.arrive_and_wait()
            if cutlass.const_expr(self.swiglu):
                # h word (pair, j) holds h columns GLU * pair + 8 j + cw (+1)
                for i in cutlass.range_constexpr(2):
                    for w in cutlass.range_constexpr(TILE_N // 16):
                        st_shared(epi + (r_top + 8 * i) * H_ROW_BYTES + (GLU * (w // 4) + 8 * (w % 4) + cw) * 2,
                                  [hw[i][w]])
        if cutlass.const_expr(self.swiglu):
            bar.arrive_and_wait()
            if cutlass.const_expr(self.h_bf16):
                if rows > 0:
                    self.store_h_bf16(h, epi, row0, rows, n_tile, tidx)
            self.quantize_h(epi, hq_row, hs_row, hq_col, hs_col, tile, n_tile, row0, rows, num_tiles, tidx)


@functools.lru_cache(maxsize=None)
def _resident_clusters(device_index: int, cluster: int) -> int:
    with torch.cuda.device(device_index):
        return cutlass.utils.HardwareInfo(device_index).get_max_active_clusters(cluster)


def resident_clusters(dev, cluster: int) -> int:
    """How many clusters of ``cluster`` CTAs (one per SM: the persistent kernel's shared memory) are
    resident at once on ``dev``: the persistent grid. GPCs whose SM count is not a multiple of the
    cluster leave SMs out, so this is asked of the driver, not derived from the SM count."""
    return _resident_clusters(torch.device(dev).index if torch.device(dev).index is not None
                              else torch.cuda.current_device(), cluster)


def dense_grid(dev, n: int, tokens: int, num_experts: int, clusters=None) -> int:
    """The dense kernel's grid (CTAs): every resident cluster (or ``clusters``, tests), at most one
    per unit (pair of placed 128-token tiles x N tile)."""
    units = (n // TILE_N) * (-(-tokens // (2 * TILE_TOKENS)) + num_experts - 1)
    clusters = resident_clusters(dev, DENSE_CLUSTER) if clusters is None else clusters
    return min(clusters, units) * DENSE_CLUSTER
