"""CuTe DSL quantize kernel vs the reference, bit for bit (needs a GPU)."""

import pytest
import torch

from cute_moe.kernels.quantize import quantize_mxfp8_cuda
from cute_moe.kernels.sm90.mx_grouped_gemm import dequantize_rowwise_kperm
from cute_moe.quant import quantize, swizzle_scales
from cute_moe.quant.api import exclusive_offsets, quantize_mxfp8
from cute_moe.quant.layout import grouped_tiles

pytestmark = pytest.mark.gpu
POISON = 0xA5

EDGE = [0.0, -0.0, 1e-40, 2.0**-130, 2.0**-120, 1.0, -1.0, 448.0, 448.0 * 2**10, -448.0 * 2**-20, 3.3895e38, -3.3895e38,
        65504.0, 1.5, 0.1, float("inf"), float("-inf"), float("nan")]


def _random(rows, cols, dev="cuda"):
    x = torch.randn(rows, cols, device=dev) * torch.exp2(torch.randint(-20, 20, (rows, 1), device=dev).float())
    return x.to(torch.bfloat16)


def _with_edges(x):
    """Plant edge values in some 32-blocks (whole blocks of one value and single outliers)."""
    x = x.clone()
    flat = x.view(-1)
    vals = torch.tensor(EDGE, dtype=torch.bfloat16, device=x.device)
    for i, v in enumerate(vals):
        pos = (i * 997) % max(flat.numel() - 32, 1)
        if i % 2:
            flat[pos : pos + 32] = v
        else:
            flat[pos] = v
    return x


def _bytes(t):
    return t.contiguous().view(torch.uint8)


def _check(x, sizes, rowwise, colwise, swizzled):
    offsets = None if sizes is None else exclusive_offsets(torch.tensor(sizes, dtype=torch.int32, device="cuda"))
    q_row, s_row, q_col, s_col = quantize_mxfp8_cuda(x, rowwise, colwise, offsets, swizzled, _poison=POISON)
    torch.cuda.synchronize()
    xc = x.cpu()
    sz = None if sizes is None else torch.tensor(sizes)
    if rowwise:
        ref = quantize(xc, -1)
        assert torch.equal(_bytes(q_row).cpu(), _bytes(ref.data)), "rowwise data"
        want = swizzle_scales(ref.scale, sz) if swizzled else ref.scale
        assert torch.equal(s_row.cpu(), want), "rowwise scales"
    if colwise:
        ref = quantize(xc, 0, sz)
        assert torch.equal(_bytes(q_col).cpu(), _bytes(ref.data)), "columnwise data"
        want = swizzle_scales(ref.scale.t().contiguous()) if swizzled else ref.scale
        assert torch.equal(s_col.cpu(), want), "columnwise scales"


@pytest.mark.parametrize("rows", [1, 31, 33, 129, 300])
@pytest.mark.parametrize("cols", [32, 96, 384])
@pytest.mark.parametrize("mode", ["row", "col", "both"])
def test_dense_bit_exact(rows, cols, mode):
    x = _with_edges(_random(rows, cols))
    _check(x, None, mode in ("row", "both"), mode in ("col", "both"), False)


@pytest.mark.parametrize("sizes", [[0, 1, 31, 33, 0, 129, 2], [5], [0, 0, 7], [128, 0, 128, 1], [40] * 20 + [0] * 5])
@pytest.mark.parametrize("swizzled", [False, True])
def test_grouped_bit_exact(sizes, swizzled):
    x = _with_edges(_random(sum(sizes), 256))
    _check(x, sizes, True, True, swizzled)


def _same_bf16(a, b):
    """Bitwise equal bf16 tensors, NaN payloads aside."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(_bytes(a.masked_fill(nan, 0)), _bytes(b.masked_fill(nan, 0)))


@pytest.mark.parametrize("sizes", [None, [0, 1, 31, 33, 0, 129, 2]])
def test_row_dequant_kperm(sizes):
    """row_dequant: the rowwise MXFP8 values, dequantized exactly and K-permuted (the SM90 GEMM's
    a_dequant), edge values included; the columnwise outputs of the same pass unchanged."""
    x = _with_edges(_random(sum(sizes) if sizes else 300, 384))
    offsets = None if sizes is None else exclusive_offsets(torch.tensor(sizes, dtype=torch.int32, device="cuda"))
    x_deq, s_none, q_col, s_col = quantize_mxfp8_cuda(x, True, True, offsets, row_dequant=True, _poison=POISON)
    q_row, s_row, q_col2, s_col2 = quantize_mxfp8_cuda(x, True, True, offsets)
    assert s_none is None and x_deq.dtype == torch.bfloat16
    assert _same_bf16(x_deq, dequantize_rowwise_kperm(q_row, s_row))
    assert torch.equal(_bytes(q_col), _bytes(q_col2)) and torch.equal(s_col, s_col2)
    with pytest.raises(ValueError, match="row_dequant"):
        quantize_mxfp8_cuda(x[:, :96].contiguous(), True, False, row_dequant=True)


@pytest.mark.parametrize("rows", [1, 129, 1000])
def test_dense_swizzled(rows):
    _check(_random(rows, 512), None, True, True, True)


@pytest.mark.parametrize("swizzled", [False, True])
@pytest.mark.parametrize("mode", ["row", "col", "both"])
def test_modes_grouped_and_dense(swizzled, mode):
    sizes = [0, 1, 31, 33, 0, 129, 2, 300]
    x = _with_edges(_random(sum(sizes), 384))
    r, c = mode in ("row", "both"), mode in ("col", "both")
    _check(x, sizes, r, c, swizzled)
    _check(x, None, r, c, swizzled)
    # more work items than resident CTAs: the persistent loop and its double buffer turn over
    _check(_with_edges(_random(5000, 7168)), [0, 2500, 1, 2499], r, c, swizzled)


def test_many_experts_and_large():
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(0, 50, (700,), generator=gen)
    sizes[::7] = 0
    x = _random(int(sizes.sum()), 128)
    _check(x, sizes.tolist(), True, True, True)
    _check(_random(4096 + 17, 7168), None, True, True, False)


def test_front_door_cuda_matches_reference():
    x = _random(77, 256)
    sizes = torch.tensor([10, 0, 67], device="cuda")
    row, col = quantize_mxfp8(x, True, True, sizes, swizzled=True)
    ref_r, ref_c = quantize(x.cpu(), -1, sizes.cpu()), quantize(x.cpu(), 0, sizes.cpu())
    assert torch.equal(row.scale.cpu(), ref_r.scale) and torch.equal(col.scale.cpu(), ref_c.scale)
    assert torch.equal(row.dequantize().cpu(), ref_r.dequantize()) and torch.equal(col.dequantize().cpu().nan_to_num(), ref_c.dequantize().nan_to_num())


def test_zero_tokens():
    x = torch.empty(0, 256, dtype=torch.bfloat16, device="cuda")
    q_row, s_row, q_col, s_col = quantize_mxfp8_cuda(x, True, True, exclusive_offsets(torch.zeros(3, dtype=torch.int32, device="cuda")), False)
    assert q_row.shape == (0, 256) and s_col.shape == (4 * grouped_tiles(0, 3), 256)
    assert bool((s_col == 127).all())


def test_rejects_misaligned_input():
    x = torch.randn(4 * 256 + 1, dtype=torch.bfloat16, device="cuda")[1:].view(4, 256)
    with pytest.raises(ValueError, match="x must start at a 16-byte aligned address"):
        quantize_mxfp8_cuda(x)
