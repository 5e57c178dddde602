"""Device side of the grouped placement (REFERENCE §2, :mod:`cute_moe.quant.layout`): which expert
owns a placed 128-token tile, shared by every grouped kernel."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64

from .ptx import ld_global_s32_pred

TILE_TOKENS = 128
MAX_EXPERTS = 1024  # two ballot levels of 32


@cute.jit
def find_expert(offsets: cute.Pointer, num_experts: Int32, tile: Int32, lane: Int32,
                tile_tokens: cutlass.Constexpr = TILE_TOKENS):
    """(e, offsets[e], offsets[e+1]) for the largest e with ``offsets[e] // tile_tokens + e <= tile``
    (the placement of ``tile_tokens``-token tiles; 128 unless a kernel walks pairs of them).

    Tile starts strictly increase with e, so a 2-level 32-ary search by warp ballot finds e in two
    dependent load rounds; the last level's lanes also load offsets[e+1], and the token range comes
    back by shuffle. Call with the whole warp; results are warp-uniform."""
    base = offsets.toint()
    e = lane * 32
    ok = e < num_experts
    start = ld_global_s32_pred(base + Int64(e) * 4, ok, 0) // tile_tokens + e
    lo = (Int32(cute.arch.popc(cute.arch.vote_ballot_sync(ok & (start <= tile)))) - 1) * 32
    e = lo + lane
    ok = e < num_experts
    off_e = ld_global_s32_pred(base + Int64(e) * 4, ok, 0)
    off_next = ld_global_s32_pred(base + Int64(e) * 4 + 4, ok, 0)
    src = Int32(cute.arch.popc(cute.arch.vote_ballot_sync(ok & (off_e // tile_tokens + e <= tile)))) - 1
    return lo + src, cute.arch.shuffle_sync(off_e, src), cute.arch.shuffle_sync(off_next, src)


@cute.jit
def placed_tile(offsets: cute.Pointer, num_experts: Int32, tile: Int32, lane: Int32):
    """(expert, first token, valid rows in [0, 128]) of placed tile ``tile``; 0 rows: a gap tile or
    an empty expert. Warp-uniform, like :func:`find_expert`."""
    e, tok0, tok1 = find_expert(offsets, num_experts, tile, lane)
    row0 = tok0 + (tile - (tok0 // TILE_TOKENS + e)) * TILE_TOKENS
    rows = cutlass.max(cutlass.min(tok1 - row0, Int32(TILE_TOKENS)), Int32(0))
    return e, row0, rows


@cute.jit
def placed_unit(offsets: cute.Pointer, num_experts: Int32, unit: Int32, lane: Int32, num_tiles: Int32,
                unit_tiles: cutlass.Constexpr = 2):
    """Unit ``unit`` of the placement of ``unit_tiles`` consecutive placed tiles (expert e's units
    start at ``offsets[e] // (128 unit_tiles) + e``; ``ceil(T / (128 unit_tiles)) + E - 1`` of them;
    one tile: the placed tiles themselves): a unit never straddles two experts, and the units cover
    every placed 128-token tile, gap tiles included, exactly once. Returns (expert, first token,
    the unit's rows in [0, 128 unit_tiles], its first placed tile, how many of its placed tiles
    exist (a unit past its expert's placed tiles has fewer)). Warp-uniform."""
    unit_tokens = unit_tiles * TILE_TOKENS
    e, tok0, tok1 = find_expert(offsets, num_experts, unit, lane, unit_tokens)
    first_local = unit_tiles * (unit - (tok0 // unit_tokens + e))
    tile0 = tok0 // TILE_TOKENS + e + first_local
    row0 = tok0 + TILE_TOKENS * first_local
    rows = cutlass.max(cutlass.min(tok1 - row0, Int32(unit_tokens)), Int32(0))
    tiles = cutlass.min(cutlass.min(tok1 // TILE_TOKENS + e + 1, num_tiles) - tile0, Int32(unit_tiles))
    return e, row0, rows, tile0, tiles
