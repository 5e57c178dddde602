"""The SM90 grouped GEMM's dense form (``b_dequant``, many tokens per expert), FC1 (SwiGLU + MXFP8
out) and FC2 epilogues as in :mod:`.mx_grouped_gemm`, whose kernel class this one extends (same
flags, launcher and staged-h quantize passes).

The weights come as their exact bf16 dequantization (K-permuted like the tokens), and the tile
runs the usual way round: tokens are WGMMA's M (64 per warpgroup), features its N (64x256
WGMMAs), both from a 4-stage TMA ring, no conversion. Twice the weight bytes of the swapped form,
so only where each weight tile serves several token tiles (bench/RESULTS.md, sessions 7 and 9).

- Persistent (one CTA per SM) and warp-specialized: a producer warp keeps the ring full while the
  consumer warpgroups store the tile: FC2 stages it in 128 x 32 sub-tiles for TMA stores
  (``store_acc_tma``; a tile partly past its expert's tokens, straight from the accumulators), FC1
  stores z straight from the accumulators and hands the SwiGLU and the MXFP8 passes to the
  producer's three idle warps, so that the tensor cores wait only for the z stores.
- 2-CTA clusters take two token tiles of one expert and load their shared weight tile once (TMA
  multicast): the bf16 mainloop waits on its operands from L2 (ncu, session 10: L2 at 85% of its
  throughput, 46% hits).
"""

from __future__ import annotations

import functools

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
import torch
from cutlass import BFloat16, Float32, Int32, Int64, Uint8

from ..common.activation import swiglu_bf16x2
from ..common.placement import TILE_TOKENS, placed_unit, unit_in_token_order, units_holding_tokens
from ..common.ptx import f32_to_bf16x2, ld_global_v4_pred, quad_transpose, st_global, st_shared
from ..common.quantize_tile import ROW_BYTES as H_ROW_BYTES
from ..common.quantize_tile import TILE_BYTES as H_TILE_BYTES
from ..._cuda import device_index
from .mx_grouped_gemm import GLU, THREADS, TILE_K, WARPGROUPS, MXGroupedGemmSm90Kernel
from .parts import (acc_stmatrix_copy, banded_coords, load_ab_stage, make_ab_pipeline, make_tiled_mma_bf16,
                    mma_partitions, tma_tile_partitions, token_tma_atom, weight_tma_atom, wgmma_ss_consume)

TILE_M = TILE_TOKENS  # tokens (WGMMA's M: 64 per warpgroup)
TILE_N = 256  # features (WGMMA's N); FC1: 4 gate/up pairs -> 128 columns of h
DENSE_STAGES = 4  # 4 x 48 KB of bf16 tokens + weights
# clusters of 2 CTAs on two token tiles of one expert (same N tile) load the weight tile once, by
# TMA multicast (32 instead of 48 KB read from L2 per k-tile; the bf16 mainloop waits on L2)
DENSE_CLUSTER = 2
# units in launch order sweep bands of 16 N tiles (parts.banded_coords; the swapped kernel's 8): on
# the H200, 16 beat 2 / 4 / 8 / 24 / 32 for FC1 and FC2 of dsv3 and mixtral (bench/RESULTS.md,
# session 10: an L2 hit rate of 46% at 8 made the mainloop wait for its stages)
DENSE_RASTER_BAND = 16
# setmaxnreg: (consumer warpgroups, warpgroup 2) for FC2 / FC1. Warpgroup 2 is the producer warp,
# plus FC1's SwiGLU epilogue on its other three warps (EPI_THREADS), which needs more registers.
# ptxas allocates every path within the launch's 168 per thread (a fourth warpgroup, 128 per thread,
# leaves too few for the 64x256 WGMMA), and the consumers' setmaxnreg.inc waits for registers
# warpgroup 2 freed: asking for more than 384 x 168 in total waits forever.
DENSE_REGS = {False: (232, 40), True: (200, 104)}
EPI_THREADS = 96
# FC2's full tiles leave by TMA stores of 128 x 32 sub-tiles from a ring of EPI_STAGES in shared
# memory (32 KB where FC1 stages its 34 KB h tile): the consumers only convert and stage each
# sub-tile (stmatrix) and go on, where their own 16-byte stores of 8 rows per warp kept the tensor
# cores waiting (bench_ab, session 20, H200: qwen3-size FC2 212 -> 199 us; dsv3's and mixtral's
# unchanged). FC1 keeps those stores: its epilogue warps read z back from global memory right after.
EPI_SUBTILE = (TILE_M, 32)
EPI_STAGES = 4
# a tile's sub-tiles fill the ring a whole number of times: sub-tile i always takes stage i % 4
assert (TILE_N // EPI_SUBTILE[1]) % EPI_STAGES == 0
for _c, _p in DENSE_REGS.values():
    assert WARPGROUPS * 128 * _c + 128 * _p <= (THREADS + 128) * 168


class DenseGroupedGemmSm90Kernel(MXGroupedGemmSm90Kernel):
    """``weights_bf16``: see the module docstring; constructor flags as the base class's."""

    def set_geometry(self, decode: bool):
        """One tile for all token counts: 128 tokens x 256 features (``decode`` is the swapped forms')."""
        self.tile_m, self.tile_n = TILE_M, TILE_N
        self.h_rows, self.h_cols = TILE_M, TILE_N // 2

    @cute.jit
    def __call__(self, a: cute.Pointer, a_scale: cute.Pointer, b: cute.Pointer, b_scale: cute.Pointer,
                 offsets: cute.Pointer, out: cute.Pointer, probs: cute.Pointer, h: cute.Pointer,
                 hq_row: cute.Pointer, hs_row: cute.Pointer, hq_col: cute.Pointer, hs_col: cute.Pointer,
                 partials: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32, ctas: Int32,
                 splits: Int32, whole: Int32, stream: cuda.CUstream):
        """Both operands bf16 (``a_scale`` / ``b_scale`` unused), 128-byte-swizzled K-major stages
        (tokens = A, weights = B); a persistent grid of ``ctas`` CTAs in clusters of two (the split-K
        arguments are the swapped decode forms', unused here)."""
        row_major = cutlass.tensor_utils.LayoutEnum.ROW_MAJOR
        a_smem = sm90_utils.make_smem_layout_a(row_major, self.tile_mnk, BFloat16, DENSE_STAGES)
        b_smem = sm90_utils.make_smem_layout_b(row_major, self.tile_mnk, BFloat16, DENSE_STAGES)
        mma = make_tiled_mma_bf16(WARPGROUPS, TILE_N)
        tma_a, tma_mA = token_tma_atom(a, tokens, self.k, cute.slice_(a_smem, (None, None, 0)), TILE_M, TILE_K)
        tma_b, tma_mB = weight_tma_atom(b, self.n, self.k, num_experts, cute.slice_(b_smem, (None, None, 0)),
                                        TILE_N, TILE_K, DENSE_CLUSTER)
        epi_smem = sm90_utils.make_smem_layout_epi(BFloat16, row_major, EPI_SUBTILE, EPI_STAGES)
        tma_out, tma_mOut = token_tma_atom(out, tokens, self.n, cute.slice_(epi_smem, (None, None, 0)), *EPI_SUBTILE,
                                           store=True)
        epi_bytes = H_TILE_BYTES if self.swiglu else cute.cosize(epi_smem) * 2  # FC1: h tile; FC2: the ring

        @cute.struct
        class SharedStorage:
            sA: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(a_smem)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(b_smem)], 1024]
            # FC1's epilogue warps stage the 128x128 h tile here for the MXFP8 passes; FC2's
            # consumers, the ring of output sub-tiles
            sEpi: cute.struct.Align[cute.struct.MemRange[Uint8, epi_bytes], 1024]
            bars: cute.struct.MemRange[cutlass.Int64, DENSE_STAGES * 2]

        self.shared_storage = SharedStorage
        self.kernel_dense(tma_a, tma_mA, tma_b, tma_mB, tma_out, tma_mOut, offsets, out, probs, h, hq_row,
                          hs_row, hq_col, hs_col, tokens, num_experts, num_tiles, mma, a_smem, b_smem,
                          epi_smem).launch(
            grid=[ctas, 1, 1], block=[THREADS + 128, 1, 1], cluster=[DENSE_CLUSTER, 1, 1], stream=stream,
            min_blocks_per_mp=1)

    @cute.kernel
    def kernel_dense(self, tma_a: cute.CopyAtom, tma_mA: cute.Tensor, tma_b: cute.CopyAtom, tma_mB: cute.Tensor,
                     tma_out: cute.CopyAtom, tma_mOut: cute.Tensor, offsets: cute.Pointer, out: cute.Pointer,
                     probs: cute.Pointer, h: cute.Pointer, hq_row: cute.Pointer, hs_row: cute.Pointer,
                     hq_col: cute.Pointer, hs_col: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32,
                     tiled_mma: cute.TiledMma, a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout,
                     epi_smem: cute.ComposedLayout):
        """Persistent and warp-specialized: warpgroups 0-1 multiply and store the tile (FC2: by TMA
        from a ring of staged sub-tiles where the tile is full), warp 8 (warpgroup 2) only issues TMA
        loads, so the ring refills for the next tile meanwhile. FC1: warps 9-11 compute h from the
        stored bf16 z and run the MXFP8 passes while the consumers go on to the next tile
        (``epilogue_swiglu``).

        The two CTAs of a cluster take two consecutive 128-token tiles of one expert with the same N
        tile, a *unit*, and share its weight tile: each loads half and multicasts it (the mainloop
        waits on L2: 32 KB read per k-tile per CTA instead of 48). Units follow the grouped
        placement of 256-token pairs (expert e's start at ``offsets[e] // 256 + e``), so a pair never
        straddles two experts and covers every placed 128-token tile, gap tiles included, exactly
        once; clusters walk them in launch order with a stride of the cluster count: first the units
        that hold tokens (``unit_in_token_order``), banded (``banded_coords``), then the others
        (gap units, empty experts), so that every cluster gets the same number of units with tokens.
        (In placement order the gap units fell unevenly on the clusters: per-unit timestamps,
        bench/RESULTS.md session 19, showed dsv3's clusters drifting up to three units apart, which
        spreads the units in flight over more operand tiles than L2 holds.) When only the first tile
        of a unit holds tokens, the peer still loads its half of the weight tile (and a token tile it
        does not use) and its consumers release the stages unread: every CTA's ring sees the same
        stages, and every consumer warp releases each of them in both CTAs. (Clusters of 4, session
        11, read 24 KB per k-tile, but only 30 fit on the H200's 132 SMs: 5% slower.)"""
        tidx, _, _ = cute.arch.thread_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        lane = tidx % 32
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
        sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)
        # all threads: barrier init (cluster-wide)
        ab_pipe = make_ab_pipeline(storage.bars.data_ptr(), DENSE_STAGES, (TILE_M + TILE_N) * TILE_K * 2,
                                   THREADS // 32, DENSE_CLUSTER)
        consumer_regs, producer_regs = DENSE_REGS[self.swiglu]
        # FC1's hand-off of a stored z tile to the epilogue warps (named barriers, consumers + epilogue
        # warps): "full" once the consumers stored it, "taken" once the epilogue warps started on the
        # one before (z is in global memory: no buffer to wait for)
        z_full = pipeline.NamedBarrier(barrier_id=2, num_threads=THREADS + EPI_THREADS)
        z_taken = pipeline.NamedBarrier(barrier_id=3, num_threads=THREADS + EPI_THREADS)
        n_tiles = self.n // TILE_N
        group = DENSE_CLUSTER * TILE_TOKENS
        units = (tokens + group - 1) // group + num_experts - 1
        bx, _, _ = cute.arch.block_idx()
        grid, _, _ = cute.arch.grid_dim()
        rank = bx % DENSE_CLUSTER
        # every role walks the same units: this cluster's first, the stride, the end; what dense_unit
        # needs besides the unit
        u_first, u_step, u_end = bx // DENSE_CLUSTER, grid // DENSE_CLUSTER, units * n_tiles
        holding = units_holding_tokens(offsets, num_experts, lane, units, group)
        where = (offsets, num_experts, num_tiles, n_tiles, units, holding, rank, lane)
        if warp >= THREADS // 32:
            cute.arch.setmaxregister_decrease(producer_regs)
            if warp == THREADS // 32:
                cute.nvgpu.cpasync.prefetch_descriptor(tma_a)
                cute.nvgpu.cpasync.prefetch_descriptor(tma_b)
                if cutlass.const_expr(not self.swiglu):
                    cute.nvgpu.cpasync.prefetch_descriptor(tma_out)
                prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, DENSE_STAGES)
                u = u_first
                while u < u_end:
                    n_tile, e, row0, rows, first_rows, tile, has_tile = self.dense_unit(u, where)
                    if first_rows > 0:
                        # every CTA of the unit loads its share of the weight tile for all of them,
                        # and its token tile (an empty one past the expert's tokens: read, unused)
                        parts = tma_tile_partitions(tma_a, tma_mA, sA, tma_b, tma_mB, sB, row0, e, n_tile,
                                                    self.tile_mnk, DENSE_CLUSTER)
                        for kt in cutlass.range(self.k_tiles, unroll=1):
                            load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts, kt, DENSE_CLUSTER)
                            prod.advance()
                    u += u_step
                # the consumers' last releases (the peer CTA's too) have landed before this CTA exits
                ab_pipe.producer_tail(prod)
            elif cutlass.const_expr(self.swiglu):
                z_taken.arrive()  # nothing taken yet: the consumers' first hand-off goes through
                u = u_first
                while u < u_end:
                    n_tile, e, row0, rows, first_rows, tile, has_tile = self.dense_unit(u, where)
                    if has_tile:
                        z_full.arrive_and_wait()
                        z_taken.arrive()
                        self.epilogue_swiglu(storage.sEpi.data_ptr().toint(), out, probs, h, hq_row, hs_row, hq_col,
                                             hs_col, tile, n_tile, row0, rows, num_tiles, tidx - THREADS - 32)
                    u += u_step
        else:
            cute.arch.setmaxregister_increase(consumer_regs)
            _, tCrA, tCrB, acc, k_blocks = mma_partitions(tiled_mma, sA, sB, tidx, (TILE_M, TILE_N))
            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
            read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, DENSE_STAGES)
            sOut = storage.sEpi.get_tensor(epi_smem.outer, swizzle=epi_smem.inner, dtype=BFloat16)
            u = u_first
            while u < u_end:
                n_tile, e, row0, rows, first_rows, tile, has_tile = self.dense_unit(u, where)
                if rows > 0:
                    read = wgmma_ss_consume(tiled_mma, acc, tCrA, tCrB, k_blocks, ab_pipe, read, self.k_tiles)
                    if cutlass.const_expr(self.swiglu):
                        store_acc_rows(acc, out, self.n, n_tile, row0, rows, tidx)
                    else:
                        # a TMA store writes whole boxes: only a tile whose rows all belong to the
                        # expert (at most one per expert is partial)
                        if rows == TILE_M:
                            store_acc_tma(acc, tiled_mma, sOut, tma_out, tma_mOut, n_tile, row0, tidx)
                        else:
                            store_acc_rows(acc, out, self.n, n_tile, row0, rows, tidx)
                elif first_rows > 0:
                    # the peer's tile: pass its stages through (released in both CTAs), no math
                    for kt in cutlass.range(self.k_tiles, unroll=1):
                        ab_pipe.consumer_wait(read)
                        ab_pipe.consumer_release(read)
                        read.advance()
                if cutlass.const_expr(self.swiglu):
                    if has_tile:  # (gap tiles too: they write h's padding scale codes)
                        cute.arch.fence_acq_rel_cta()  # the z stores, before the epilogue warps' loads
                        z_taken.arrive_and_wait()
                        z_full.arrive()
                u += u_step
            if cutlass.const_expr(self.swiglu):
                z_taken.arrive_and_wait()  # the epilogue warps' last "taken"
            elif tidx == 0:
                cute.arch.cp_async_bulk_wait_group(0, read=False)  # the ring is read before the CTA exits
        # the peer CTA's consumers arrive on this CTA's empty barriers until they are done
        cute.arch.cluster_arrive()
        cute.arch.cluster_wait()

    @cute.jit
    def dense_unit(self, u, where):
        """Unit ``u`` in launch order (``where``: offsets, E, placed tiles, N tiles, units per N
        tile, rank in the cluster, lane) -> this CTA's share: (N tile, expert, first token, rows, the
        unit's first tile's rows (0: nothing to compute, no CTA of the cluster loads), the placed
        128-token tile, whether that tile exists (gap tiles do; a slot past the expert's placed
        tiles does not)). Warp-uniform."""
        offsets, num_experts, num_tiles, n_tiles, units, holding, rank, lane = where
        # the units holding tokens first (banded), then the rest, N tile fastest
        with_tokens = holding * n_tiles
        n_tile, slot = banded_coords(u, n_tiles, cutlass.max(holding, 1), DENSE_RASTER_BAND)
        n_tile = cutlass.select_(u < with_tokens, n_tile, (u - with_tokens) % n_tiles)
        slot = cutlass.select_(u < with_tokens, slot, holding + (u - with_tokens) // n_tiles)
        unit_idx = unit_in_token_order(offsets, num_experts, slot, lane, units, holding, TILE_TOKENS * DENSE_CLUSTER)
        e, row0, unit_rows, tile0, unit_tiles = placed_unit(offsets, num_experts, unit_idx, lane, num_tiles,
                                                            DENSE_CLUSTER)
        first_rows = cutlass.min(unit_rows, Int32(TILE_TOKENS))
        rows = cutlass.max(cutlass.min(unit_rows - TILE_TOKENS * rank, Int32(TILE_TOKENS)), Int32(0))
        return n_tile, e, row0 + TILE_TOKENS * rank, rows, first_rows, tile0 + rank, rank < unit_tiles

    @cute.jit
    def epilogue_swiglu(self, h_stage: Int32, z, probs, h, hq_row, hs_row, hq_col, hs_col, tile, n_tile, row0, rows,
                        num_tiles, tid):
        """FC1's epilogue warps (``tid`` < EPI_THREADS) on a stored z tile: h = p * silu(g) * u from
        z's bf16 values (the reference's order, :func:`swiglu_bf16x2`), staged as the quantize
        kernel's 128x128 tile (zeros past ``rows``), then bf16 h and the shared 128-thread tile
        passes, each thread standing in for threads ``tid``, ``tid + EPI_THREADS``.. of them. A warp
        takes 8-row groups, a lane 8 columns of each gate/up block (a quad loads 64 contiguous
        bytes of a row); their own named barrier."""
        bar = pipeline.NamedBarrier(barrier_id=1, num_threads=EPI_THREADS)
        q = tid % 4
        bar.arrive_and_wait()  # the previous tile's passes are done reading the staged h
        if rows > 0:
            for g in cutlass.range(tid // 32, TILE_M // 8, EPI_THREADS // 32, unroll=1):
                r = 8 * g + (tid % 32) // 4
                ok = r < rows
                p = None
                if cutlass.const_expr(self.with_probs):
                    p = Float32(0.0)
                    if ok:
                        p = cute.make_tensor(probs + (row0 + r), cute.make_layout(1))[0]
                src = z.toint() + (Int64(row0 + r) * self.n + n_tile * TILE_N + 8 * q) * 2
                words = [ld_global_v4_pred(src + 4 * GLU * c + 2 * GLU * up, ok) for c in range(4) for up in range(2)]
                for c in cutlass.range_constexpr(4):
                    st_shared(h_stage + r * H_ROW_BYTES + (GLU * c + 8 * q) * 2,
                              swiglu_bf16x2(words[2 * c], words[2 * c + 1], p, ok))
        bar.arrive_and_wait()
        for v in cutlass.range(tid, 128, EPI_THREADS, unroll=1):
            if cutlass.const_expr(self.h_bf16):
                if rows > 0:
                    self.store_h_bf16(h, h_stage, row0, rows, n_tile, v, 128)
            self.quantize_h(h_stage, hq_row, hs_row, hq_col, hs_col, tile, n_tile, row0, rows, num_tiles, v, True)


@cute.jit
def store_acc_rows(acc, dst: cute.Pointer, dst_cols: cutlass.Constexpr, n_tile, row0, rows, tidx):
    """The 128x256 fp32 tile in WGMMA's accumulator layout -> bf16 rows ``row0 .. row0+rows-1`` of
    ``dst`` [T, dst_cols], columns of N tile ``n_tile``, straight from registers. Thread (warpgroup g,
    warp w, lane l) holds rows 64g + 16w + l/4 (+8) at columns 8j + 2(l%4) (+1), j < 32 (accumulator
    index 4j + 2i + c); a quad transpose gives each lane 8 contiguous columns, so a warp's store
    covers 64 contiguous bytes of 8 rows. Rows past ``rows`` belong to the next expert: not written."""
    lane = tidx % 32
    q = lane % 4
    r_top = 64 * (tidx // 128) + 16 * ((tidx // 32) % 4) + lane // 4
    for i in cutlass.range_constexpr(2):
        r = r_top + 8 * i
        base = dst.toint() + (Int64(row0 + r) * dst_cols + n_tile * TILE_N + 8 * q) * 2
        for jb in cutlass.range_constexpr(TILE_N // 32):
            words = [f32_to_bf16x2(acc[4 * j + 2 * i], acc[4 * j + 2 * i + 1]) for j in range(4 * jb, 4 * jb + 4)]
            st_global(base + 64 * jb, quad_transpose(words, q), r < rows)


@cute.jit
def store_acc_tma(acc, tiled_mma, s_out, tma_out, tma_mOut, n_tile, row0, tidx):
    """The 128x256 fp32 tile (all of its rows the expert's) -> bf16 rows ``row0 ..`` of the output, N
    tile ``n_tile``, as 8 sub-tiles of 128 x 32: each converted and staged by stmatrix into stage
    i % EPI_STAGES of the ring ``s_out``, then stored by one TMA from thread 0, which before that
    waits until the stage the next sub-tile takes has been read by its last store (all consumers
    pass a named barrier between; the wait spans tiles: bulk groups are per thread)."""
    r2s, thr_r2s, tRS_acc = acc_stmatrix_copy(acc, tiled_mma, tidx)
    tRS_s = thr_r2s.partition_D(s_out)  # (R2S, R2S_M, R2S_N, stage)
    sub_shape = cute.shape(thr_r2s.partition_S(s_out))[:3]
    sub_f32 = cute.make_rmem_tensor(sub_shape, Float32)
    sub_bf16 = cute.make_rmem_tensor(sub_shape, BFloat16)
    per_sub = cute.size(sub_f32)
    g_out = cute.local_tile(cute.domain_offset((row0, n_tile * TILE_N), tma_mOut), EPI_SUBTILE, (0, None))
    bSG_s, bSG_g = cute.nvgpu.cpasync.tma_partition(tma_out, 0, cute.make_layout(1), cute.group_modes(s_out, 0, 2),
                                                    cute.group_modes(g_out, 0, 2))
    bar = pipeline.NamedBarrier(barrier_id=4, num_threads=THREADS)
    for i in cutlass.range_constexpr(TILE_N // EPI_SUBTILE[1]):
        stage = i % EPI_STAGES
        # the accumulators of sub-tile i are the i-th run of per_sub in the copy's order
        for v in cutlass.range_constexpr(per_sub):
            sub_f32[v] = tRS_acc[i * per_sub + v]
        sub_bf16.store(sub_f32.load().to(BFloat16))
        cute.copy(r2s, sub_bf16, tRS_s[(None, None, None, stage)])
        cute.arch.fence_proxy("async.shared", space="cta")  # stmatrix writes -> visible to the TMA
        if tidx == 0:
            # at most EPI_STAGES - 2 stores in flight: the stage of sub-tile i + 1 is free
            cute.arch.cp_async_bulk_wait_group(EPI_STAGES - 2, read=True)
        bar.arrive_and_wait()
        if tidx == 0:  # one thread (bulk groups are per thread; a warp would store the box 32 times)
            cute.copy(tma_out, bSG_s[(None, stage)], bSG_g[(None, i)])
            cute.arch.cp_async_bulk_commit_group()


@functools.lru_cache(maxsize=None)
def _resident_clusters(device_index: int, cluster: int) -> int:
    with torch.cuda.device(device_index):
        return cutlass.utils.HardwareInfo(device_index).get_max_active_clusters(cluster)


def resident_clusters(dev, cluster: int) -> int:
    """How many clusters of ``cluster`` CTAs (one per SM: the persistent kernel's shared memory) are
    resident at once on ``dev``: the persistent grid. GPCs whose SM count is not a multiple of the
    cluster leave SMs out, so this is asked of the driver, not derived from the SM count."""
    return _resident_clusters(device_index(dev), cluster)


def dense_grid(dev, n: int, tokens: int, num_experts: int, clusters=None) -> int:
    """The dense kernel's grid (CTAs): every resident cluster (or ``clusters``, tests), at most one
    per unit (pair of placed 128-token tiles x N tile)."""
    units = (n // TILE_N) * (-(-tokens // (DENSE_CLUSTER * TILE_TOKENS)) + num_experts - 1)
    clusters = resident_clusters(dev, DENSE_CLUSTER) if clusters is None else clusters
    return min(clusters, units) * DENSE_CLUSTER
