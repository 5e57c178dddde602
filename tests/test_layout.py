"""Swizzled scale layout, grouped placement and the gate/up interleave."""

import pytest
import torch

from cute_moe import deinterleave_gate_up, interleave_gate_up
from cute_moe.quant import (
    grouped_block_start,
    grouped_col_blocks,
    grouped_tile_start,
    grouped_tiles,
    quantize,
    swizzle_offset,
    swizzle_scales,
    swizzled_scales_of,
    unswizzle_scales,
)


@pytest.mark.parametrize("rows,cols", [(1, 1), (128, 4), (129, 5), (300, 56), (33, 3)])
def test_swizzle_matches_byte_formula(rows, cols):
    s = torch.randint(0, 255, (rows, cols), dtype=torch.uint8)
    sw = swizzle_scales(s).reshape(-1)
    cp = -(-cols // 4) * 4
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    assert torch.equal(sw[swizzle_offset(r, c, cp)], s)
    # every padding byte holds the pad code
    mask = torch.ones_like(sw, dtype=torch.bool)
    mask[swizzle_offset(r, c, cp).reshape(-1)] = False
    assert bool((sw[mask] == 127).all())
    assert torch.equal(unswizzle_scales(swizzle_scales(s), rows, cols), s)


@pytest.mark.parametrize("sizes", [[0, 1, 31, 33, 0, 129, 2], [128, 128], [0], [5, 0, 0, 300]])
def test_grouped_placement(sizes):
    total, e = sum(sizes), len(sizes)
    # expert tiles are disjoint and inside the buffer
    taken = set()
    off = 0
    for i, n in enumerate(sizes):
        t0 = grouped_tile_start(off, i)
        tiles = set(range(t0, t0 + -(-n // 128)))
        assert not (tiles & taken) and all(t < grouped_tiles(total, e) for t in tiles)
        taken |= tiles
        assert grouped_block_start(off, i) == 4 * t0
        off += n
    s = torch.randint(0, 255, (total, 8), dtype=torch.uint8)
    sw = swizzle_scales(s, torch.tensor(sizes))
    assert sw.shape == (128 * grouped_tiles(total, e), 8)
    assert torch.equal(unswizzle_scales(sw, total, 8, torch.tensor(sizes)), s)


def _filled_tile_model(offs, num_experts, slot):
    """The SM90 decode grid's ``placement.filled_tile``, step by step on the host (32 lanes, each
    owning ceil(E/32) experts): (expert, first token, rows, placed tile)."""
    per = -(-num_experts // 32)
    counts = [[-(-(offs[e + 1] - offs[e]) // 128) if e < num_experts else 0 for e in range(l * per, l * per + per)]
              for l in range(32)]
    lane_count = [sum(c) for c in counts]
    excl = [sum(lane_count[:l]) for l in range(32)]
    total = sum(lane_count)
    owner = sum(x <= slot for x in excl) - 1
    local, run = slot - excl[owner], 0
    e = tok0 = tok1 = j = 0
    for i, n in enumerate(counts[owner]):
        if run <= local < run + n:
            e, j = owner * per + i, local - run
            tok0, tok1 = offs[e], offs[e + 1]
        run += n
    row0 = tok0 + 128 * j
    rows = min(tok1 - row0, 128) if slot < total else 0
    return e, row0, rows, tok0 // 128 + e + j


def _gap_tile_model(offs, num_experts, e, num_tiles):
    """``placement.gap_tile`` on the host."""
    if e >= num_experts:
        return -1
    gap = offs[e] // 128 + e + -(-(offs[e + 1] - offs[e]) // 128)
    return gap if gap < min(offs[e + 1] // 128 + e + 1, num_tiles) else -1


@pytest.mark.parametrize("num_experts", [1, 6, 31, 32, 33, 100, 384, 1000, 1024])
def test_decode_grid_covers_each_placed_tile_once(num_experts):
    """The decode grid (SM90 swapped kernels): slots [0, ceil(T/128) + min(E, T) - 1) map to every
    placed tile that holds tokens exactly once, with its expert, rows and first token; the gap-code
    items name every other placed tile exactly once. Random splits with many empty experts, ones,
    exact multiples of 128 (a gap tile after them) and T a multiple of 128 (no trailing gap)."""
    from cute_moe.kernels.sm90.mx_grouped_gemm import GAP_GROUP, filled_slots, gap_groups

    gen = torch.Generator().manual_seed(num_experts)
    for trial in range(6):
        sizes = torch.randint(0, 300, (num_experts,), generator=gen)
        sizes[torch.rand(num_experts, generator=gen) < 0.7] = 0
        if num_experts > 3:
            sizes[:3] = torch.tensor([1, 128, 256])
        if trial == 1:
            sizes[-1] += (-int(sizes.sum())) % 128 or 128
        if int(sizes.sum()) == 0:
            sizes[0] = 1
        offs = [0] + torch.cumsum(sizes, 0).tolist()
        total, num_tiles = offs[-1], grouped_tiles(offs[-1], num_experts)
        want = {}
        for e, n in enumerate(sizes.tolist()):
            for j in range(-(-n // 128)):
                want[grouped_tile_start(offs[e], e) + j] = (e, offs[e] + 128 * j, min(n - 128 * j, 128))
        got = {}
        for slot in range(filled_slots(total, num_experts)):
            e, row0, rows, tile = _filled_tile_model(offs, num_experts, slot)
            if rows > 0:
                assert tile not in got
                got[tile] = (e, row0, rows)
        assert got == want
        gaps = [_gap_tile_model(offs, num_experts, g * GAP_GROUP + lane, num_tiles)
                for g in range(gap_groups(num_experts)) for lane in range(GAP_GROUP)]
        gaps = [t for t in gaps if t >= 0]
        assert len(gaps) == len(set(gaps)) and not set(gaps) & set(got)
        assert set(gaps) | set(got) == set(range(num_tiles))


def test_swapped_geometry_picks_the_measured_faster_form():
    """The launcher's geometry on an H200's 132 SMs for the decode rows sessions 15 and 19
    measured (top-6): without split K (MXFP8 tokens) narrow only where it was faster or level (pro
    T=6: 144 full-size CTAs, two rounds; flash T=12: level), decode elsewhere; with split K (bf16
    tokens, the fused forward) pro T=6 takes the decode form with its last round split (FC1 109 us
    against the narrow form's 136 unsplit); training from 160 tokens per expert (the session-13
    crossover)."""
    from cute_moe.kernels.sm90.mx_grouped_gemm import pick_geometry

    pro, flash = (384, 7168, 3072), (256, 4096, 2048)
    want = {(pro, 6): 2, (pro, 12): 1, (pro, 24): 1, (pro, 96): 1, (flash, 6): 1, (flash, 12): 2, (flash, 96): 1}
    for ((e, k, h), t), geometry in want.items():
        assert pick_geometry(132, 2 * h, k, t, e, split=False) == geometry, (e, t, "FC1")
        assert pick_geometry(132, k, h, t, e, split=False) == geometry, (e, t, "FC2")
    for (e, k, h), t, fc1, fc2 in [(pro, 6, 1, 1), (flash, 6, 1, 1)]:
        assert (pick_geometry(132, 2 * h, k, t, e), pick_geometry(132, k, h, t, e)) == (fc1, fc2), (e, t)
    assert pick_geometry(132, 1536, 2048, 128 * 160, 128) == 0 and pick_geometry(132, 1536, 2048, 128 * 159, 128) == 1


def test_tail_splits():
    """Only a short last round is split (at most half the SMs), into at most MAX_SPLITS parts of at
    least MIN_PAIRS_PER_SPLIT k-tile pairs, filling the SMs: pro B=1's FC1 (144 decode tiles: 132
    whole, 12 x 8), its narrow form (288: 264 whole, 24 x 5), FC2 (168: 36 x 3); a full last round
    (336 narrow FC2 tiles: 72 left) or one round of work (flash B=1, 96) runs whole; short K
    splits less or not at all."""
    from cute_moe.kernels.sm90.mx_grouped_gemm import tail_splits

    assert tail_splits(132, 144, 112) == (8, 132)
    assert tail_splits(132, 288, 112) == (5, 264)
    assert tail_splits(132, 168, 48) == (3, 132)
    assert tail_splits(132, 336, 48) == (1, 336)
    assert tail_splits(132, 96, 64) == (1, 96) and tail_splits(132, 264, 64) == (1, 264)
    assert tail_splits(132, 134, 16) == (2, 132) and tail_splits(132, 134, 15) == (1, 134)
    assert tail_splits(132, 60, 112) == (2, 0)


def test_grouped_columnwise_swizzle_is_dense_swizzle_of_transpose():
    x = torch.randn(200, 128).bfloat16()
    sizes = torch.tensor([70, 0, 130])
    q = quantize(x, 0, sizes)
    assert q.scale.shape == (grouped_col_blocks(200, 3), 128)
    sw = swizzled_scales_of(q)
    assert torch.equal(sw, swizzle_scales(q.scale.t().contiguous()))
    assert torch.equal(q.scale_swizzled, sw)


def test_mxfp8tensor_scale_views_round_trip():
    x = torch.randn(77, 256).bfloat16()
    sizes = torch.tensor([10, 0, 67])
    for t in (quantize(x, -1), quantize(x, -1, sizes), quantize(x, 0), quantize(x, 0, sizes)):
        from cute_moe.quant import MXFP8Tensor

        only_swizzled = MXFP8Tensor(t.data, t.axis, scale_swizzled=t.scale_swizzled, split_sizes=t.split_sizes)
        assert torch.equal(only_swizzled.scale, t.scale)


def test_interleave_round_trip_and_layout():
    g = torch.randn(2, 64, 8)
    u = torch.randn(2, 64, 8)
    w = interleave_gate_up(g, u)
    assert torch.equal(w[:, 0:32], g[:, 0:32]) and torch.equal(w[:, 32:64], u[:, 0:32])
    assert torch.equal(w[:, 64:96], g[:, 32:64]) and torch.equal(w[:, 96:128], u[:, 32:64])
    g2, u2 = deinterleave_gate_up(w)
    assert torch.equal(g2, g) and torch.equal(u2, u)
    with pytest.raises(ValueError, match="H divisible"):
        interleave_gate_up(torch.zeros(40, 8), torch.zeros(40, 8))


def _placed_unit_model(offs, num_experts, unit, num_tiles, unit_tiles):
    """``placement.placed_unit(..., unit_tiles, with_gap=True)`` on the host: (expert, first token,
    rows, first placed tile, its placed tiles, the expert's gap tile or -1, empty)."""
    unit_tokens = 128 * unit_tiles
    e = max(i for i in range(num_experts) if offs[i] // unit_tokens + i <= unit)
    tok0, tok1 = offs[e], offs[e + 1]
    first_local = unit_tiles * (unit - (tok0 // unit_tokens + e))
    tile0 = tok0 // 128 + e + first_local
    row0 = tok0 + 128 * first_local
    rows = max(min(tok1 - row0, unit_tokens), 0)
    end = min(tok1 // 128 + e + 1, num_tiles)
    return (e, row0, rows, tile0, min(end - tile0, unit_tiles), _gap_tile_model(offs, num_experts, e, num_tiles),
            tok1 == tok0)


@pytest.mark.parametrize("num_experts", [1, 5, 32, 128, 300])
def test_training_grid_writes_each_placed_tile_once(num_experts):
    """The swapped kernels' training grid (``grid_rows``, units of TRAIN_GEOMETRY's placed tiles):
    each placed tile's h scale codes are written by exactly one unit, the rule of the FC1 epilogue
    (session 17). A unit with tokens writes its placed tiles, and its expert's gap tile when that
    opens the next unit. A unit without tokens writes only if its expert is empty. A tile with
    tokens is written by the unit that holds them, at its place in the grouped layout."""
    from cute_moe.kernels.sm90.mx_grouped_gemm import TRAIN_GEOMETRY, grid_rows

    unit_tiles = TRAIN_GEOMETRY[0]
    gen = torch.Generator().manual_seed(num_experts)
    for trial in range(8):
        sizes = torch.randint(0, 600, (num_experts,), generator=gen)
        sizes[torch.rand(num_experts, generator=gen) < 0.3] = 0
        if num_experts >= 5:
            sizes[:5] = torch.tensor([1, 128, 256, 129, 384])  # gap tile in the last unit / opening a unit
        if trial == 1:
            sizes[:] = 256  # uniform: every expert's gap tile opens a unit of its own
        if int(sizes.sum()) == 0:
            sizes[0] = 1
        offs = [0] + torch.cumsum(sizes, 0).tolist()
        total, num_tiles = offs[-1], grouped_tiles(offs[-1], num_experts)
        # where the grouped layout puts each expert's token tiles
        token_tiles = {grouped_tile_start(offs[e], e) + j: (e, offs[e] + 128 * j)
                       for e in range(num_experts) for j in range(-(-int(sizes[e]) // 128))}
        written = []
        for unit in range(grid_rows(total, num_experts, 0)):
            e, row0, rows, tile0, tiles, gap, empty = _placed_unit_model(offs, num_experts, unit, num_tiles,
                                                                         unit_tiles)
            if rows > 0 or empty:
                for t in range(max(tiles, 0)):
                    written.append(tile0 + t)
                    if rows - 128 * t > 0:  # a tile holding this unit's tokens
                        assert token_tiles[tile0 + t] == (e, row0 + 128 * t)
            if rows > 0 and gap == tile0 + unit_tiles:
                written.append(gap)
        assert sorted(written) == list(range(num_tiles))
        assert set(token_tiles) <= set(written)


def test_split_workspace_keeps_counters_off_the_partials():
    """Launches with different numbers of split tiles share one workspace in stream order: each
    launch's counters end where the partials begin (``counter_cap``), so no launch's counters ever
    sit on an earlier launch's partials (pro B=1's FC1 has 12 split tiles, its FC2 36). Modelled on
    the host: counters must read zero at each launch's start; partials are garbage afterwards; the
    last split of each tile puts its counter back to zero."""
    from cute_moe.kernels.sm90.mx_grouped_gemm import SplitWorkspace, split_counter_bytes

    ws = SplitWorkspace(4096, 1 << 16, lambda n: torch.zeros(n, dtype=torch.uint8))
    base, mem = ws.buffer.data_ptr(), ws.buffer
    for split_tiles, partial_bytes in [(12, 20000), (36, 60000), (12, 20000), (36, 60000), (1, 16), (1024, 100)]:
        cb = split_counter_bytes(split_tiles)
        assert ws.fits(cb, partial_bytes)
        at = ws.address(cb) - base
        assert at % 16 == 0 and at >= 0 and at + cb == ws.counter_cap
        counters = mem[at : at + 4 * split_tiles]
        assert int(counters.count_nonzero()) == 0, "a launch found non-zero counters"
        mem[ws.counter_cap : ws.counter_cap + partial_bytes] = 0xAB  # the partials
        counters.fill_(7)  # arrivals ...
        counters.zero_()  # ... and the last split's reset
    assert not ws.fits(split_counter_bytes(1025), 16) and not ws.fits(16, (1 << 16) + 1)


def test_split_workspace_growth_and_streams(monkeypatch):
    """One workspace per stream, reused while a launch fits; a launch with more counters or more
    partials gets a zeroed larger one keeping the other dimension; at most 8 streams are kept.
    (Host side only: CPU tensors stand in for the device buffers.)"""
    import contextlib

    from cute_moe.kernels.sm90 import mx_grouped_gemm as mx

    stream = [1]
    monkeypatch.setattr(mx, "stream_handle", lambda dev: stream[0])
    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(mx, "_SPLIT_WORKSPACES", {})
    dev = torch.device("cpu")
    a = mx.split_workspace(dev, 48, 1000)
    assert mx.split_workspace(dev, 144, 1 << 20) is a  # fits: the same buffer
    b = mx.split_workspace(dev, 8192, 16)  # more counters: cap grows, partial room kept
    assert b is not a and b.counter_cap == 8192 and b.buffer.numel() - b.counter_cap == 1 << 20
    c = mx.split_workspace(dev, 16, (1 << 20) + 1)  # more partials: cap kept
    assert c.counter_cap == 8192 and int(c.buffer.count_nonzero()) == 0
    for s in range(2, 11):  # nine more streams: the oldest ones are dropped
        stream[0] = s
        assert mx.split_workspace(dev, 16, 16) is not c
    assert len(mx._SPLIT_WORKSPACES) == 8 and (dev, 1) not in mx._SPLIT_WORKSPACES
