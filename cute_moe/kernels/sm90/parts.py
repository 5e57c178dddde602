"""Pieces shared by the SM90 grouped GEMMs (bf16 and MXFP8): TMA partitions of a placed tile,
the TMA -> consumer pipeline, WGMMA partitions and the stmatrix staging of the accumulators."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import BFloat16, Float32, Int32

from ..common.placement import placed_tile


@cute.jit
def tma_tile_partitions(tma_a, tma_mA, sA, tma_b, tma_mB, sB, row0, e, n_tile, tile_mnk: cutlass.Constexpr,
                        b_multicast: cutlass.Constexpr = 1, k0=None):
    """TMA views of the tile's k-slices: a from token ``row0`` (any row: TMA boxes start anywhere),
    b[e] from column tile ``n_tile``; with ``k0``, k-slice 0 starts at k ``k0`` (a split of K). With
    ``b_multicast`` > 1 the CTAs of a cluster (token tiles of one expert, same N tile) each load
    1/b_multicast of the b tile for all of them. Returns (tAgA, tAsA, tBgB, tBsB)."""
    tile_m, tile_n, tile_k = tile_mnk
    mB = tma_mB[None, None, e]
    if cutlass.const_expr(k0 is None):
        gA = cute.local_tile(cute.domain_offset((row0, 0), tma_mA), (tile_m, tile_k), (0, None))
    else:
        gA = cute.local_tile(cute.domain_offset((row0, k0), tma_mA), (tile_m, tile_k), (0, None))
        mB = cute.domain_offset((0, k0), mB)
    gB = cute.local_tile(mB, (tile_n, tile_k), (n_tile, None))
    rank = 0
    if cutlass.const_expr(b_multicast > 1):
        rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
    tAsA, tAgA = cute.nvgpu.cpasync.tma_partition(
        tma_a, 0, cute.make_layout(1), cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2))
    tBsB, tBgB = cute.nvgpu.cpasync.tma_partition(
        tma_b, rank, cute.make_layout(b_multicast), cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2))
    return tAgA, tAsA, tBgB, tBsB


def make_ab_pipeline(barriers, stages: int, tx_bytes, consumer_warps: int, cluster: int = 1):
    """Full barriers count the TMA bytes of a stage, empty barriers one arrive per consumer warp of
    every CTA of the (1-D) cluster, whose loads may multicast into each other's stages (a stage is
    refilled once all of them are done with it: the refill writes into each of them)."""
    return pipeline.PipelineTmaAsync.create(
        barrier_storage=barriers,
        num_stages=stages,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, consumer_warps * cluster),
        tx_count=tx_bytes,
        # (V, M, N, K): a 1-D cluster, every consumer warp signals all of its CTAs
        cta_layout_vmnk=cute.make_layout((1, 1, cluster, 1)),
    )


RASTER_BAND = 8  # N tiles per band of the launch order (see banded_coords)


@cute.jit
def banded_coords(linear, n_tiles, tiles, band_width: cutlass.Constexpr = RASTER_BAND):
    """(N tile, placed tile) of launch-order position ``linear`` over (N tiles, placed tiles): bands of
    ``band_width`` N tiles, N tile fastest, sweeping all placed tiles within a band. CTAs in flight
    together then share a few weight tiles and a few token tiles in L2; in plain grid order (N tile
    fastest over all of N) a wave streams an expert's whole weight matrix for one or two token
    tiles, and large experts (mixtral's 28672 x 4096) re-read their weights from HBM for every
    token tile. (The dense kernel walks its units of two token tiles the same way, in bands of
    ``band_width`` N tiles.)"""
    band = linear // (band_width * tiles)
    width = cutlass.min(n_tiles - band * band_width, band_width)
    idx = linear - band * (band_width * tiles)
    return band * band_width + idx % width, idx // width


@cute.jit
def banded_tile():
    """:func:`banded_coords` of this CTA in the launch grid (N tiles, placed tiles)."""
    bx, by, _ = cute.arch.block_idx()
    n_tiles, tiles, _ = cute.arch.grid_dim()
    return banded_coords(by * n_tiles + bx, n_tiles, tiles)


@cute.jit
def banded_head_tail(head_rows, splits, whole):
    """Over a launch grid (N tiles, rows): the tiles of (N tiles, ``head_rows``) in the banded order
    of :func:`banded_tile`, the first ``whole`` of them one CTA each and every later one ``splits``
    CTAs (a split of K, consecutive in launch order), then the tail rows' CTAs, N tile fastest (the
    tail rows start at the first whole grid row after the tiles' CTAs; CTAs between are idle).
    Returns (N tile, row, is_tail, split index, the tile's index among the split ones (negative:
    a whole tile), idle)."""
    bx, by, _ = cute.arch.block_idx()
    n_tiles, _, _ = cute.arch.grid_dim()
    linear = by * n_tiles + bx
    ctas = whole + (n_tiles * head_rows - whole) * splits
    tail = linear - n_tiles * ((ctas + n_tiles - 1) // n_tiles)
    beyond = linear - whole
    split = beyond >= 0
    pos = cutlass.select_(split, whole + beyond // splits, linear)
    n_tile, row = banded_coords(pos, n_tiles, head_rows)
    is_tail = tail >= 0
    return (cutlass.select_(is_tail, tail % n_tiles, n_tile), cutlass.select_(is_tail, tail // n_tiles, row),
            is_tail, cutlass.select_(split, beyond % splits, Int32(0)), pos - whole, (linear >= ctas) & (tail < 0))


@cute.jit
def placed_cta(offsets, num_experts, shared_storage):
    """The CTA's start, common to the grouped GEMMs: thread index, warp, N tile, the placed tile
    (REFERENCE §2) with its expert, first token and valid rows (0: gap tile / empty expert), and
    the shared storage. Returns (tidx, warp, n_tile, tile, e, row0, rows, storage)."""
    tidx, _, _ = cute.arch.thread_idx()
    n_tile, tile = banded_tile()
    warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
    e, row0, rows = placed_tile(offsets, num_experts, tile, tidx % 32)
    storage = cutlass.memory.SmemAllocator().allocate(shared_storage)
    return tidx, warp, n_tile, tile, e, row0, rows, storage


@cute.jit
def load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts, k_tile=None, b_multicast: cutlass.Constexpr = 1):
    """Producer (one warp; the TMA atoms elect one thread): wait for a free stage, arm its full
    barrier with the byte count, issue both TMA loads of k-tile ``k_tile`` (default ``prod.count``:
    one tile per ring; with ``b_multicast``, this CTA's share of b goes to the whole cluster).
    ``parts``: the (tAgA, tAsA, tBgB, tBsB) of :func:`tma_tile_partitions`."""
    tAgA, tAsA, tBgB, tBsB = parts
    kt = prod.count if k_tile is None else k_tile
    ab_pipe.producer_acquire(prod)
    bar = ab_pipe.producer_get_barrier(prod)
    cute.copy(tma_a, tAgA[(None, kt)], tAsA[(None, prod.index)], tma_bar_ptr=bar)
    if cutlass.const_expr(b_multicast > 1):
        cute.copy(tma_b, tBgB[(None, kt)], tBsB[(None, prod.index)], tma_bar_ptr=bar,
                  mcast_mask=cutlass.Int16((1 << b_multicast) - 1))
    else:
        cute.copy(tma_b, tBgB[(None, kt)], tBsB[(None, prod.index)], tma_bar_ptr=bar)
    ab_pipe.producer_commit(prod)


@cute.jit
def start_ab_pipeline(tma_a, tma_mA, sA, tma_b, tma_mB, sB, barriers, stages: cutlass.Constexpr,
                      tx_bytes: cutlass.Constexpr, k_tiles, row0, e, n_tile, tile_mnk: cutlass.Constexpr, warp,
                      consumer_warps: cutlass.Constexpr, k0=None):
    """TMA views of the placed tile, the full/empty-barrier ring of one CTA (every consumer warp
    releases), and warp 0 filling its first stages. ``k_tiles``: a static count, or a runtime one
    from k ``k0`` on (a split of K). Returns (ab_pipe, producer state, TMA partitions)."""
    if warp == 0:
        cute.nvgpu.cpasync.prefetch_descriptor(tma_a)
        cute.nvgpu.cpasync.prefetch_descriptor(tma_b)
    parts = tma_tile_partitions(tma_a, tma_mA, sA, tma_b, tma_mB, sB, row0, e, n_tile, tile_mnk, k0=k0)
    ab_pipe = make_ab_pipeline(barriers, stages, tx_bytes, consumer_warps)
    prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
    if warp == 0:
        first = min(stages, k_tiles) if isinstance(k_tiles, int) else cutlass.min(stages, k_tiles)
        for _ in cutlass.range(first, unroll=1):
            load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts)
            prod.advance()
    return ab_pipe, prod, parts


@cute.jit
def release_and_refill(ab_pipe, release, prod, kt, warp, k_tiles, tma_a, tma_b, parts):
    """After ``wait_group(1)`` in k-tile ``kt``: the WGMMAs of k-tile kt-1 have read their stage,
    which goes back to the producer. Warp 0 refills that same stage only after its own release (it
    waits for every consumer warp's release): acquiring before any release, in k-tile 0, would deadlock
    warp 0 against its own arrive. Returns the advanced (release, prod): pipeline states changed
    inside a helper do not flow back into the caller's loop unless they are returned."""
    if kt > 0:
        ab_pipe.consumer_release(release)
        release.advance()
        if warp == 0 and prod.count < k_tiles:
            load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts)
            prod.advance()
    return release, prod


@cute.jit
def mma_partitions(tiled_mma, sA, sB, tidx, tile_mn: cutlass.Constexpr):
    """Warpgroup g owns rows 64g .. 64g+63 of the tile: its operand fragments over the staged
    buffers, its zeroed-later fp32 accumulators, and the WGMMA k-blocks per k-tile."""
    wg = cute.arch.make_warp_uniform(tidx // 128)
    thr_mma = tiled_mma.get_slice(wg * 128)
    tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))
    tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
    acc = cute.make_rmem_tensor(thr_mma.partition_C(cute.make_identity_tensor(tile_mn)).shape, Float32)
    return wg, tCrA, tCrB, acc, cute.size(tCrA, mode=[2])


@cute.jit
def wgmma_ss_ktile(tiled_mma, acc, tCrA, tCrB, k_blocks: cutlass.Constexpr, ab_pipe, read):
    """One k-tile of a both-operands-from-shared-memory mainloop: wait for stage ``read``, issue its
    WGMMA group, then wait until only this group is in flight (the one before it is done with its
    stage, which the caller releases)."""
    ab_pipe.consumer_wait(read)
    cute.nvgpu.warpgroup.fence()
    for kb in cutlass.range(k_blocks, unroll_full=True):
        coord = (None, None, kb, read.index)
        cute.gemm(tiled_mma, acc, tCrA[coord], tCrB[coord], acc)
    cute.nvgpu.warpgroup.commit_group()
    cute.nvgpu.warpgroup.wait_group(1)


@cute.jit
def wgmma_ss_mainloop(tiled_mma, acc, tCrA, tCrB, k_blocks: cutlass.Constexpr, ab_pipe, prod, stages: cutlass.Constexpr,
                      k_tiles: cutlass.Constexpr, warp, tma_a, tma_b, parts):
    """Both operands from the staged ring (bf16, K-major), one tile per ring: per k-tile one WGMMA
    group, one group kept in flight, the stage of the k-tile before it released (and refilled by
    warp 0). ``acc`` is zeroed here and holds the result when this returns (all WGMMAs retired)."""
    read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
    release = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
    # zeroed accumulators + ACCUMULATE always on: no first-k-block special case in the loop
    acc.fill(0.0)
    tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
    for kt in cutlass.range(k_tiles, unroll=1):
        wgmma_ss_ktile(tiled_mma, acc, tCrA, tCrB, k_blocks, ab_pipe, read)
        release, prod = release_and_refill(ab_pipe, release, prod, kt, warp, k_tiles, tma_a, tma_b, parts)
        read.advance()
    cute.nvgpu.warpgroup.wait_group(0)


@cute.jit
def wgmma_ss_consume(tiled_mma, acc, tCrA, tCrB, k_blocks: cutlass.Constexpr, ab_pipe, read,
                     k_tiles: cutlass.Constexpr):
    """Consumer side of a warp-specialized ring (a producer warp fills it, tile after tile): one
    tile's k-tiles from ring state ``read`` into the zeroed ``acc``; every stage it read is
    released, all WGMMAs are retired on return. Returns the advanced ``read``."""
    acc.fill(0.0)
    release = read.clone()
    for kt in cutlass.range(k_tiles, unroll=1):
        wgmma_ss_ktile(tiled_mma, acc, tCrA, tCrB, k_blocks, ab_pipe, read)
        if kt > 0:
            ab_pipe.consumer_release(release)
            release.advance()
        read.advance()
    cute.nvgpu.warpgroup.wait_group(0)
    ab_pipe.consumer_release(release)
    return read


def acc_stmatrix_copy(acc, tiled_mma, tidx, transposed: cutlass.Constexpr = False):
    """The stmatrix (x4) copy of bf16-converted accumulators to shared memory: (tiled copy, this
    thread's slice of it, ``acc`` retiled in the copy's (V, M, N) order); ``transposed``: into an
    M-contiguous tile (stmatrix.trans)."""
    layout = cutlass.tensor_utils.LayoutEnum.COL_MAJOR if transposed else cutlass.tensor_utils.LayoutEnum.ROW_MAJOR
    st_atom = sm90_utils.get_smem_store_op(layout, BFloat16, Float32)
    r2s = cute.make_tiled_copy_S(st_atom, cute.make_tiled_copy_C_atom(st_atom, tiled_mma))
    return r2s, r2s.get_slice(tidx), r2s.retile(acc)


@cute.jit
def stage_acc_bf16(acc, tiled_mma, s_out, tidx, transposed: cutlass.Constexpr = False):
    """fp32 accumulators -> bf16 -> the shared-memory tile ``s_out`` by stmatrix (x4); ``transposed``:
    ``s_out`` is M-contiguous (stmatrix.trans)."""
    r2s, thr_r2s, tRS_acc = acc_stmatrix_copy(acc, tiled_mma, tidx, transposed)
    # converted in the accumulator's order, then viewed in the copy's (V, M, N) shape: both are
    # compact and stmatrix takes the next 8 accumulators per thread (2 columns x 2 rows x 2
    # n-blocks), so linear order carries over
    regs = cute.make_rmem_tensor_like(tRS_acc, BFloat16)
    regs.store(tRS_acc.load().to(BFloat16))
    tRS = cute.make_tensor(regs.iterator, cute.make_layout(thr_r2s.partition_S(s_out).shape))
    cute.copy(r2s, tRS, thr_r2s.partition_D(s_out))


def bf16_view(mem, layout):
    """A shared-memory buffer (any element type) as the bf16 tensor of a swizzled ``layout``."""
    return cute.make_tensor(cute.recast_ptr(mem.data_ptr(), layout.inner, dtype=BFloat16), layout.outer)


def make_tiled_mma_bf16(warpgroups: int, tile_n: int, a_in_registers: bool = False):
    """BF16 WGMMA, fp32 accumulate: ``warpgroups`` along M, each 64 x ``tile_n``, operands K-major
    from shared memory (A from registers when ``a_in_registers``)."""
    src = cute.nvgpu.warpgroup.OperandSource.RMEM if a_in_registers else cute.nvgpu.warpgroup.OperandSource.SMEM
    return sm90_utils.make_trivial_tiled_mma(
        BFloat16, BFloat16, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
        Float32, (warpgroups, 1, 1), tiler_mn=(64, tile_n), a_source=src)


def token_tma_atom(a, tokens, k: int, a_stage, box_rows: int, box_k: int, store: bool = False):
    """TMA descriptor for the token operand a over [T, K] (T dynamic; rows >= T read as zeros) in
    ``box_rows`` x ``box_k`` boxes into the stage layout ``a_stage``; with ``store``, for stores of
    such boxes from it into a token-major output [T, K] instead. Returns (tma_a, tma_mA)."""
    mA = cute.make_tensor(a, cute.make_layout((tokens, k), stride=(k, 1)))
    op = cute.nvgpu.cpasync.CopyBulkTensorTileS2GOp() if store else cute.nvgpu.cpasync.CopyBulkTensorTileG2SOp()
    return cute.nvgpu.cpasync.make_tiled_tma_atom(op, mA, a_stage, (box_rows, box_k))


def weight_tma_atom(b, n: int, k: int, num_experts, b_stage, box_n: int, box_k: int, multicast: int = 1):
    """TMA descriptor for the weights b over (N, K, E) in ``box_n`` x ``box_k`` boxes into the stage
    layout ``b_stage``, multicast to ``multicast`` CTAs (each then loads 1/multicast of the stage).
    Returns (tma_b, tma_mB)."""
    mB = cute.make_tensor(b, cute.make_layout((n, k, num_experts), stride=(k, 1, n * k)))
    if multicast > 1:
        return cute.nvgpu.cpasync.make_tiled_tma_atom(cute.nvgpu.cpasync.CopyBulkTensorTileG2SMulticastOp(), mB,
                                                      b_stage, (box_n, box_k), num_multicast=multicast)
    return cute.nvgpu.cpasync.make_tiled_tma_atom(cute.nvgpu.cpasync.CopyBulkTensorTileG2SOp(), mB, b_stage,
                                                  (box_n, box_k))


def grouped_tma_atoms(a, b, tokens, num_experts, n: int, k: int, a_stage, b_stage, tile_mnk):
    """TMA descriptors for the grouped operands: a over [T, K] (T dynamic; rows >= T read as zeros),
    b over (N, K, E); ``a_stage`` / ``b_stage`` are one stage's shared-memory layouts.
    Returns (tma_a, tma_mA, tma_b, tma_mB)."""
    tile_m, tile_n, tile_k = tile_mnk
    tma_a, tma_mA = token_tma_atom(a, tokens, k, a_stage, tile_m, tile_k)
    tma_b, tma_mB = weight_tma_atom(b, n, k, num_experts, b_stage, tile_n, tile_k)
    return tma_a, tma_mA, tma_b, tma_mB
