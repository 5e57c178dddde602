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
