"""Reference MXFP8 quantization vs an independent scalar implementation, and the edge values."""

import math
import struct

import pytest
import torch

from cute_moe.quant import E4M3_MAX, dequantize_device, e8m0_from_amax, e8m0_to_float, quantize


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _scalar_e8m0(amax: float) -> int:
    if math.isnan(amax):
        return 0xFF
    v = struct.unpack("<f", struct.pack("<f", amax * struct.unpack("<f", struct.pack("<f", 1 / 448))[0]))[0]
    if math.isinf(v):
        return 254
    b = _f32_bits(v)
    e = ((b >> 23) & 0xFF) + (1 if b & 0x7FFFFF else 0)
    return min(e, 254)


def _e4m3_table():
    """All finite non-negative e4m3fn values decoded from their bit fields, by byte."""
    vals = {}
    for byte in range(0x7F):  # 0x7F is NaN
        exp, man = byte >> 3, byte & 7
        vals[byte] = (man / 8) * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return vals


E4M3 = _e4m3_table()


def _scalar_e4m3(y: float) -> int:
    if math.isnan(y):
        return 0x7F
    sign = 0x80 if math.copysign(1, y) < 0 else 0
    a = min(abs(y), E4M3_MAX)  # satfinite
    best = min(E4M3, key=lambda b: (abs(E4M3[b] - a), b & 1))  # nearest; ties to the even mantissa
    return sign | best


def _scalar_quantize_rows(x: torch.Tensor):
    xs = x.double().tolist()
    data, scales = [], []
    for row in xs:
        qrow, srow = [], []
        for b in range(0, len(row), 32):
            blk = row[b : b + 32]
            amax = float("nan") if any(math.isnan(v) for v in blk) else max(abs(v) for v in blk)
            e = _scalar_e8m0(amax)
            srow.append(e)
            for v in blk:
                qrow.append(0x7F if e == 0xFF else _scalar_e4m3(v * 2.0 ** (127 - e)))
        data.append(qrow)
        scales.append(srow)
    return torch.tensor(data, dtype=torch.uint8), torch.tensor(scales, dtype=torch.uint8)


EDGE_AMAX = [0.0, 1e-45, 1e-40, 2.0**-130, 2.0**-126, 1.0, 2.0**10, 448.0, 448.0 * 2**5, 449.0, 3.3895e38, float("inf"), float("nan")]


def test_scale_rule_edges():
    got = e8m0_from_amax(torch.tensor(EDGE_AMAX, dtype=torch.float32)).tolist()
    assert got == [_scalar_e8m0(float(torch.tensor(v, dtype=torch.float32))) for v in EDGE_AMAX]
    # documented points of the rule
    assert got[0] == 0  # amax 0 -> smallest code
    assert got[EDGE_AMAX.index(448.0)] == 127  # 448/448 = 1 exactly: no round up
    assert got[EDGE_AMAX.index(449.0)] == 128  # just above: rounds the power of two up
    assert got[EDGE_AMAX.index(float("inf"))] == 254 and got[-1] == 0xFF


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantize_matches_scalar_reference(dtype):
    x = torch.randn(6, 96) * torch.exp2(torch.randint(-30, 30, (6, 1)).float())
    flat = x.view(-1)
    flat[:8] = torch.tensor([0.0, -0.0, 448.0, -3.3895e38, float("inf"), float("-inf"), 1e-40, 2.0**-133])
    flat[40:72] = float("nan")  # one all-NaN block
    flat[100] = float("nan")  # one NaN among finite values
    flat[140:172] = 0.0
    x = x.to(dtype)
    q = quantize(x)
    data, scale = _scalar_quantize_rows(x)
    assert torch.equal(q.scale, scale)
    assert torch.equal(q.data.view(torch.uint8), data)


def test_columnwise_is_transposed_rowwise():
    x = torch.randn(70, 64).bfloat16()
    qc, qr = quantize(x, 0), quantize(x.t().contiguous(), -1)
    assert torch.equal(qc.data.view(torch.uint8), qr.data.t().view(torch.uint8))
    assert torch.equal(qc.scale, qr.scale.t())


def test_grouped_columnwise_blocks_stay_in_expert():
    x = torch.randn(100, 32).bfloat16()
    sizes = [3, 0, 60, 37]
    q = quantize(x, 0, torch.tensor(sizes))
    off = 0
    for n in sizes:
        if n:
            assert torch.equal(q.data[off : off + n].view(torch.uint8), quantize(x[off : off + n], 0).data.view(torch.uint8))
        off += n


def test_dequantize_exact_and_extremes():
    x = (torch.randn(4, 64) * 1000).bfloat16()
    q = quantize(x)
    ref = q.data.double() * e8m0_to_float(q.scale).repeat_interleave(32, -1)
    assert torch.equal(q.dequantize(torch.float64), ref)
    assert torch.equal(q.dequantize(torch.float32), ref.float())
    assert torch.equal(dequantize_device(q, torch.float32), ref.float())
    # bf16 max rounds up to 256 * 2**120 = 2**128: exact in fp64, inf in fp32 (documented)
    big = torch.full((1, 32), 3.3895e38).bfloat16()
    qb = quantize(big)
    assert qb.scale.item() == 247 and qb.data.float()[0, 0].item() == 256.0
    assert qb.dequantize(torch.float64)[0, 0].item() == 2.0**128
    assert torch.isinf(qb.dequantize(torch.float32)).all()
    # smallest scale with subnormal data: exact in fp32/fp64
    tiny = torch.full((1, 32), 2.0**-133).bfloat16()
    qt = quantize(tiny)
    assert qt.scale.item() == 1 and qt.dequantize(torch.float64)[0, 0].item() == 2.0**-133


def test_nan_block_and_inf():
    x = torch.zeros(1, 64)
    x[0, 3] = float("nan")
    x[0, 40] = float("inf")
    x[0, 41] = 3.0
    q = quantize(x.bfloat16())
    assert q.scale.tolist() == [[255, 254]]
    assert bool((q.data.view(torch.uint8)[0, :32] == 0x7F).all())
    assert q.data.float()[0, 40].item() == 448.0
    assert torch.isnan(q.dequantize()[0, :32]).all()


def test_bad_axis_and_dtype():
    with pytest.raises(ValueError, match="axis"):
        quantize(torch.zeros(4, 32), axis=2)
    with pytest.raises(TypeError, match="floating"):
        quantize(torch.zeros(4, 32, dtype=torch.int32))


def test_device_dequantize_in_bf16_is_one_rounding_of_the_exact_value():
    x = (torch.randn(300, 96) * torch.exp2(torch.randint(-40, 40, (300, 1)).float())).bfloat16()
    x.view(-1)[:6] = torch.tensor([3.3895e38, float("inf"), float("nan"), 1e-40, 2.0**-133, -0.0]).bfloat16()
    for t in (quantize(x, -1), quantize(x, 0), quantize(x, 0, torch.tensor([0, 7, 200, 0, 93])), quantize(x[:, :80], -1)):
        exact = t.dequantize(torch.float64)
        assert torch.equal(dequantize_device(t, torch.bfloat16).view(torch.int16), exact.to(torch.bfloat16).view(torch.int16))
        assert torch.equal(dequantize_device(t, torch.float32).nan_to_num(), exact.float().nan_to_num())
