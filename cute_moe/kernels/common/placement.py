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
                unit_tiles: cutlass.Constexpr = 2, with_gap: cutlass.Constexpr = False):
    """Unit ``unit`` of the placement of ``unit_tiles`` consecutive placed tiles (expert e's units
    start at ``offsets[e] // (128 unit_tiles) + e``; ``ceil(T / (128 unit_tiles)) + E - 1`` of them;
    one tile: the placed tiles themselves): a unit never straddles two experts, and the units cover
    every placed 128-token tile, gap tiles included, exactly once. Returns (expert, first token,
    the unit's rows in [0, 128 unit_tiles], its first placed tile, how many of its placed tiles
    exist (a unit past its expert's placed tiles has fewer)); ``with_gap``: also the expert's gap
    tile (-1: none, see :func:`gap_tile`) and whether the expert is empty. Warp-uniform."""
    unit_tokens = unit_tiles * TILE_TOKENS
    e, tok0, tok1 = find_expert(offsets, num_experts, unit, lane, unit_tokens)
    first_local = unit_tiles * (unit - (tok0 // unit_tokens + e))
    tile0 = tok0 // TILE_TOKENS + e + first_local
    row0 = tok0 + TILE_TOKENS * first_local
    rows = cutlass.max(cutlass.min(tok1 - row0, Int32(unit_tokens)), Int32(0))
    end = _tiles_end(e, tok1, num_tiles)
    tiles = cutlass.min(end - tile0, Int32(unit_tiles))
    if cutlass.const_expr(with_gap):
        gap = _tile_after_tokens(e, tok0, tok1)
        return e, row0, rows, tile0, tiles, cutlass.select_(gap < end, gap, Int32(-1)), tok1 == tok0
    return e, row0, rows, tile0, tiles


@cute.jit
def _lane_unit_counts(offsets: cute.Pointer, num_experts: Int32, lane: Int32, units: Int32,
                      unit_tokens: cutlass.Constexpr, key: Int32):
    """Over lane ``lane``'s experts [l q, (l+1) q), q = ceil(E / 32), of the placement of
    ``unit_tokens``-token units (``units`` of them): how many units hold tokens, how many do not
    (gap units, an empty expert's unit), and the placed unit that is the ``key``-th of the lane's
    units holding tokens, and of its others (0 when the lane has fewer). One runtime loop of two
    loads per expert: compact code, q is 1 for up to 32 experts."""
    base = offsets.toint()
    per = (num_experts + 31) // 32
    n_real = Int32(0)
    n_other = Int32(0)
    found_real = Int32(0)
    found_other = Int32(0)
    for i in cutlass.range(per, unroll=1):
        e = lane * per + i
        ok = e < num_experts
        tok0 = ld_global_s32_pred(base + Int64(e) * 4, ok, 0)
        tok1 = ld_global_s32_pred(base + Int64(e) * 4 + 4, ok, 0)
        first = tok0 // unit_tokens + e
        holding = cutlass.select_(ok, (tok1 - tok0 + unit_tokens - 1) // unit_tokens, Int32(0))
        rest = cutlass.select_(ok, cutlass.min(tok1 // unit_tokens + e + 1, units) - first - holding, Int32(0))
        found_real = cutlass.select_((n_real <= key) & (key < n_real + holding), first + key - n_real, found_real)
        found_other = cutlass.select_((n_other <= key) & (key < n_other + rest), first + holding + key - n_other,
                                      found_other)
        n_real = n_real + holding
        n_other = n_other + rest
    return n_real, n_other, found_real, found_other


@cute.jit
def units_holding_tokens(offsets: cute.Pointer, num_experts: Int32, lane: Int32, units: Int32,
                         unit_tokens: cutlass.Constexpr) -> Int32:
    """How many of the placement's ``units`` units of ``unit_tokens`` tokens hold tokens (warp sum;
    call with the whole warp)."""
    n_real, _, _, _ = _lane_unit_counts(offsets, num_experts, lane, units, unit_tokens, Int32(0))
    for d in cutlass.range_constexpr(5):
        n_real = n_real + cute.arch.shuffle_sync_bfly(n_real, 1 << d)
    return n_real


@cute.jit
def unit_in_token_order(offsets: cute.Pointer, num_experts: Int32, slot: Int32, lane: Int32, units: Int32,
                        holding: Int32, unit_tokens: cutlass.Constexpr) -> Int32:
    """The placed unit at position ``slot`` of the order "every unit holding tokens first, in
    placement order, then the others" (``holding``: :func:`units_holding_tokens`). A persistent grid
    striding over placement order meets the gap units unevenly, so its CTAs drift apart by whole
    units and stop sharing operands in L2; in this order every CTA gets the same number of units
    with tokens. A warp scan over the lanes' counts, like :func:`filled_tile`. Warp-uniform."""
    real = slot < holding
    key = cutlass.select_(real, slot, slot - holding)
    n_real, n_other, _, _ = _lane_unit_counts(offsets, num_experts, lane, units, unit_tokens, Int32(0))
    count = cutlass.select_(real, n_real, n_other)
    incl = _warp_inclusive_sum(count, lane)
    owner = Int32(cute.arch.popc(cute.arch.vote_ballot_sync(incl - count <= key))) - 1
    _, _, found_real, found_other = _lane_unit_counts(offsets, num_experts, lane, units, unit_tokens,
                                                      key - (incl - count))
    return cute.arch.shuffle_sync(cutlass.select_(real, found_real, found_other), owner)


@cute.jit
def _tiles_end(e, tok1, num_tiles):
    """One past expert ``e``'s last placed tile (its tokens end at ``tok1``), clipped to ``num_tiles``."""
    return cutlass.min(tok1 // TILE_TOKENS + e + 1, num_tiles)


@cute.jit
def _tile_after_tokens(e, tok0, tok1):
    """The placed tile after expert ``e``'s token tiles (tokens [tok0, tok1)): its gap tile when
    below :func:`_tiles_end`."""
    return tok0 // TILE_TOKENS + e + (tok1 - tok0 + TILE_TOKENS - 1) // TILE_TOKENS


@cute.jit
def _warp_inclusive_sum(v: Int32, lane: Int32) -> Int32:
    """Lane l's sum of ``v`` over lanes 0..l (Hillis-Steele, five shuffles)."""
    for d in cutlass.range_constexpr(5):
        up = cute.arch.shuffle_sync_up(v, 1 << d)
        v = v + cutlass.select_(lane >= (1 << d), up, Int32(0))
    return v


@cute.jit
def filled_tile(offsets: cute.Pointer, num_experts: Int32, slot: Int32, lane: Int32):
    """The ``slot``-th placed tile that holds tokens, in placement order: (expert, first token, rows
    in [0, 128], its placed tile index); rows 0 when fewer tiles hold tokens. Expert e holds
    ceil(size_e / 128) of them, so ``ceil(T / 128) + min(E, T) - 1`` slots cover every such tile
    without enumerating the gap tiles and empty experts (a decode grid: six touched experts of 384).

    One pass over ``offsets``: lane l owns experts [l q, (l+1) q), q = ceil(E / 32); its q+1
    offsets load at once (independent loads: one latency), a warp scan of its filled-tile counts
    finds the lane whose experts hold ``slot``, which then walks them in registers. Call with the
    whole warp; results are warp-uniform."""
    base = offsets.toint()
    per = (num_experts + 31) // 32
    e0 = lane * per
    offs = []
    for i in cutlass.range_constexpr(MAX_EXPERTS // 32 + 1):
        offs.append(ld_global_s32_pred(base + Int64(e0 + i) * 4, (i <= per) & (e0 + i <= num_experts), 0))
    counts = []
    count = Int32(0)
    for i in cutlass.range_constexpr(MAX_EXPERTS // 32):
        n = cutlass.select_((i < per) & (e0 + i < num_experts),
                            (offs[i + 1] - offs[i] + TILE_TOKENS - 1) // TILE_TOKENS, Int32(0))
        counts.append(n)
        count = count + n
    incl = _warp_inclusive_sum(count, lane)
    total = cute.arch.shuffle_sync(incl, 31)
    local = slot - (incl - count)
    owner = Int32(cute.arch.popc(cute.arch.vote_ballot_sync(incl - count <= slot))) - 1
    # every lane walks its own experts for its own ``local``; the owner's answer is the one kept
    e = Int32(0)
    tok0 = Int32(0)
    tok1 = Int32(0)
    j = Int32(0)
    run = Int32(0)
    for i in cutlass.range_constexpr(MAX_EXPERTS // 32):
        hit = (run <= local) & (local < run + counts[i])
        e = cutlass.select_(hit, e0 + i, e)
        tok0 = cutlass.select_(hit, offs[i], tok0)
        tok1 = cutlass.select_(hit, offs[i + 1], tok1)
        j = cutlass.select_(hit, local - run, j)
        run = run + counts[i]
    e = cute.arch.shuffle_sync(e, owner)
    tok0 = cute.arch.shuffle_sync(tok0, owner)
    tok1 = cute.arch.shuffle_sync(tok1, owner)
    j = cute.arch.shuffle_sync(j, owner)
    row0 = tok0 + j * TILE_TOKENS
    rows = cutlass.select_(slot < total, cutlass.min(tok1 - row0, Int32(TILE_TOKENS)), Int32(0))
    return e, row0, rows, tok0 // TILE_TOKENS + e + j


@cute.jit
def gap_tile(offsets: cute.Pointer, num_experts: Int32, e: Int32, num_tiles: Int32) -> Int32:
    """Expert ``e``'s gap tile: the placed tile after its tokens' tiles, before the next expert's
    (an empty expert's only tile), or -1 where there is none (or ``e`` >= E). Per thread."""
    ok = e < num_experts
    tok0 = ld_global_s32_pred(offsets.toint() + Int64(e) * 4, ok, 0)
    tok1 = ld_global_s32_pred(offsets.toint() + Int64(e) * 4 + 4, ok, 0)
    gap = _tile_after_tokens(e, tok0, tok1)
    end = _tiles_end(e, tok1, num_tiles)
    return cutlass.select_(ok & (gap < end), gap, Int32(-1))
