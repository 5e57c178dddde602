"""SM90 MXFP8 grouped GEMM (FC1 with SwiGLU + MXFP8 h, FC2) vs the exact reference (Hopper GPU).

Error bound (issue 3): the kernel's normwise error against fp64 math on the dequantized operands is
at most twice what torch's bf16 grouped GEMM gets on the same (exactly bf16) dequantized operands.
MXFP8 outputs must be bit-exact against quantizing the kernel's own bf16 ``h`` with the reference.
"""

import pytest
import torch

from cute_moe.functional import swiglu
from cute_moe.kernels.sm90.mx_grouped_gemm import dequantize_rowwise_kperm, kperm_rowwise, mx_grouped_gemm_sm90
from cute_moe.quant import quantize
from cute_moe.quant.api import exclusive_offsets, quantize_mxfp8
from cute_moe.quant.layout import swizzle_scales

from helpers import random_sizes, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9,
                       reason="needs an sm_90 GPU"),
]


def _mx(x):
    """Rowwise MXFP8 of a [..., K] bf16 tensor: (e4m3 data, plain scales, fp64 dequantized)."""
    q = quantize_mxfp8(x.reshape(-1, x.shape[-1]).contiguous())[0]
    shape_s = (*x.shape[:-1], x.shape[-1] // 32)
    return q.data.view(x.shape), q.scale.view(shape_s), q.dequantize(torch.float64).view(x.shape)


def _problem(sizes, n, k, seed=0, spread=0, edit=None):
    """a [T, K], b [E, N, K] (bf16, then MXFP8). ``spread``: rows and experts scaled by random
    powers of two in [-spread, spread], so that the E8M0 codes vary far from 127. ``edit(a, b)``:
    changes the fp32 draws in place before they are rounded."""
    gen = torch.Generator().manual_seed(seed)
    t, e = int(sum(sizes)), len(sizes)
    a = torch.randn(t, k, generator=gen)
    b = torch.randn(e, n, k, generator=gen) / k**0.5
    if spread:
        a *= 2.0 ** torch.randint(-spread, spread + 1, (t, 1), generator=gen)
        b *= 2.0 ** torch.randint(-spread, spread + 1, (e, 1, 1), generator=gen)
    if edit is not None:
        edit(a, b)
    a, b = a.to("cuda", torch.bfloat16), b.to("cuda", torch.bfloat16)
    offsets = exclusive_offsets(torch.tensor(list(sizes), dtype=torch.int32, device="cuda"))
    return _mx(a), _mx(b), offsets


def _check_gemm(out, a_dq, b_dq, sizes, offsets):
    """out vs fp64; and within 2x of torch bf16 _grouped_mm's error on the same operands."""
    ref = torch.zeros(out.shape, dtype=torch.float64, device="cuda")
    start = 0
    for e, s in enumerate(sizes):
        ref[start : start + s] = a_dq[start : start + s] @ b_dq[e].t()
        start += s
    torch_bf16 = torch._grouped_mm(a_dq.to(torch.bfloat16), b_dq.to(torch.bfloat16).transpose(1, 2), offs=offsets[1:])
    bound = 2 * rel_err(torch_bf16, ref) + 1e-6
    assert not torch.isnan(out).any(), f"unwritten rows: {torch.isnan(out).any(1).nonzero().flatten()[:16].tolist()}"
    err = rel_err(out, ref)
    assert err <= bound, f"normwise error {err} > 2x torch bf16 ({bound})"
    start = 0
    for s in sizes:  # per expert, so that rows computed with another expert's weights show up
        if s:
            err = rel_err(out[start : start + s], ref[start : start + s])
            assert err < 1e-2, f"expert rows {start}..{start + s}: normwise relative error {err}"
        start += s
    return ref


def _assert_same_bytes(ref, got, names=None):
    """Each output ``names`` of ``ref`` (a tensor or a tuple of tensors) byte-equal to ``got``'s;
    by default every output ``ref`` has (those it left None skipped)."""
    for name in names or ref:
        r, g = ref[name], got[name]
        if r is None and names is None:
            continue
        for rt, gt in zip(r if isinstance(r, tuple) else (r,), g if isinstance(g, tuple) else (g,)):
            assert torch.equal(rt.view(torch.uint8), gt.view(torch.uint8)), name


GEOMETRIES = [pytest.param(False, id="train"), pytest.param(True, id="decode"), pytest.param(2, id="decode_narrow")]


@pytest.mark.parametrize("decode", GEOMETRIES)
@pytest.mark.parametrize("sizes,n,k", [
    ([0, 1, 127, 128, 129, 0, 300], 256, 512),
    ([5, 0, 0, 200], 512, 64),  # one k-tile: fewer k-tiles than pipeline stages
    ([0, 0, 1], 256, 192),
])
def test_fc2_edge_split_sizes(sizes, n, k, decode):
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, n, k, spread=20)
    y = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, _poison=True, _decode=decode)
    torch.cuda.synchronize()
    assert y.shape == (sum(sizes), n) and y.dtype == torch.bfloat16
    _check_gemm(y, adq, bdq, sizes, offsets)


def test_fc2_random_experts():
    sizes = random_sizes(48, 90, torch.Generator().manual_seed(3)).tolist()
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, 768, 1024, seed=3)
    _check_gemm(mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, _poison=True), adq, bdq, sizes, offsets)


def test_no_tokens():
    (aq, as_, _), (bq, bs, _), offsets = _problem([0, 0], 256, 256)
    assert mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets).shape == (0, 256)
    out = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, h_bf16=True, h_row=True, h_col=True)
    assert out["z"].shape == (0, 256) and out["h_row"][0].shape == (0, 128)


def _h_reference(z, probs):
    return swiglu(z.float(), probs).to(torch.bfloat16)


@pytest.mark.parametrize("decode", GEOMETRIES)
@pytest.mark.parametrize("swizzled", [False, True])
@pytest.mark.parametrize("with_probs", [True, False])
@pytest.mark.parametrize("sizes,h,k", [
    ([0, 1, 127, 128, 129, 0, 300, 31], 256, 512),
    ([1, 0, 0, 0], 512, 256),
])
def test_fc1_swiglu_mxfp8(sizes, h, k, with_probs, swizzled, decode):
    n = 2 * h
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, n, k, seed=5)
    t = sum(sizes)
    probs = torch.rand(t, device="cuda") if with_probs else None
    out = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, probs=probs, h_bf16=True, h_row=True,
                               h_col=True, swizzled=swizzled, _poison=True, _decode=decode)
    _check_fc1(out, sizes, adq, bdq, offsets, probs, swizzled)


def _check_fc1(out, sizes, adq, bdq, offsets, probs, swizzled):
    """z vs the exact reference; h vs SwiGLU of the stored z; MXFP8 h (both directions, scales in
    the asked layout, padding codes included) bit-exact vs quantizing the kernel's bf16 h."""
    torch.cuda.synchronize()
    z = out["z"]
    _check_gemm(z, adq, bdq, sizes, offsets)
    # h: SwiGLU in fp32 of the stored bf16 z, as the unfused path computes it; exp may differ by
    # an ulp of fp32 from torch's, which can move a bf16 rounding by one ulp
    hk = out["h"]
    assert not torch.isnan(hk).any()
    href = _h_reference(z, probs)
    diff = (hk.float() - href.float()).abs()
    assert float((diff > 2.0**-7 * href.float().abs()).sum()) == 0, "h differs by more than one bf16 ulp"
    assert float((hk != href).float().mean()) < 1e-3
    # MXFP8 h, bit-exact vs the reference quantization of the kernel's bf16 h
    sizes_t = torch.tensor(sizes, dtype=torch.int32)
    row_ref = quantize(hk, -1)
    col_ref = quantize(hk, 0, sizes_t)
    hq_row, hs_row = out["h_row"]
    hq_col, hs_col = out["h_col"]
    assert torch.equal(hq_row.view(torch.uint8), row_ref.data.view(torch.uint8))
    assert torch.equal(hq_col.view(torch.uint8), col_ref.data.view(torch.uint8))
    if swizzled:
        assert torch.equal(hs_row, swizzle_scales(row_ref.scale, sizes_t.cuda()))
        assert torch.equal(hs_col, col_ref.scale_swizzled)
    else:
        assert torch.equal(hs_row, row_ref.scale)
        assert torch.equal(hs_col, col_ref.scale)


@pytest.mark.parametrize("decode", [pytest.param(True, id="decode"), pytest.param(2, id="decode_narrow")])
@pytest.mark.parametrize("swizzled", [False, True])
@pytest.mark.parametrize("e,touched", [
    (40, {0: 1, 3: 128, 4: 129, 31: 256, 32: 5, 39: 2}),  # full tiles: a gap tile after their tokens
    (1000, {5: 3, 300: 128, 600: 1, 998: 124, 999: 128}),  # T % 128 == 0: no trailing gap tile
    (1000, {0: 1, 999: 1}),
])
def test_decode_grid_few_touched_experts(e, touched, swizzled, decode):
    """The decode grid enumerates only the tiles that hold tokens (a warp scan over ``offsets``);
    the gap tiles of up to 1000 experts, touched or not, get their padding codes from the tail CTAs."""
    sizes = [touched.get(i, 0) for i in range(e)]
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, 512, 128, seed=11, spread=6)
    probs = torch.rand(sum(sizes), device="cuda")
    out = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, probs=probs, h_bf16=True, h_row=True,
                               h_col=True, swizzled=swizzled, _poison=True, _decode=decode)
    _check_fc1(out, sizes, adq, bdq, offsets, probs, swizzled)
    _check_gemm(mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, _poison=True, _decode=decode), adq, bdq, sizes,
                offsets)


def test_fc1_many_experts_random():
    sizes = random_sizes(128, 40, torch.Generator().manual_seed(7)).tolist()
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, 512, 768, seed=7, spread=8)
    out = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, h_row=True, h_col=True, _poison=True)
    _check_gemm(out["z"], adq, bdq, sizes, offsets)
    href = _h_reference(out["z"], None)
    col_ref = quantize(href, 0, torch.tensor(sizes, dtype=torch.int32))
    # quantizing the reference h: equal except where an exp ulp moved a bf16 rounding
    assert float((out["h_col"][0].view(torch.uint8) != col_ref.data.view(torch.uint8)).float().mean()) < 1e-3
    assert torch.equal(out["h_col"][1] != 0xFF, torch.ones_like(col_ref.scale, dtype=torch.bool))


def test_rejects_bad_operands():
    (aq, as_, _), (bq, bs, _), offsets = _problem([3, 4], 256, 256)
    with pytest.raises(ValueError, match="scales"):
        mx_grouped_gemm_sm90(aq, as_[:, :4], bq, bs, offsets)
    with pytest.raises(TypeError, match="float8"):
        mx_grouped_gemm_sm90(aq.view(torch.uint8), as_, bq, bs, offsets)
    with pytest.raises(ValueError, match="offsets"):
        mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets[:2])
    with pytest.raises(ValueError, match="swiglu"):
        mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, h_row=True)
    # a slice that starts off a 16-byte boundary: refused by name, before any launch
    probs = torch.rand(8, device="cuda")[1:]
    with pytest.raises(ValueError, match="probs must start at a 16-byte aligned address"):
        mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, probs=probs)


@pytest.mark.parametrize("decode", GEOMETRIES)
@pytest.mark.parametrize("swiglu", [False, True])
def test_dequantized_tokens_bit_identical(swiglu, decode):
    """a_dequant (bf16 tokens TMA'd straight into the operand layout) gives the MXFP8 path's bytes,
    over narrow (<= 32 tokens), 128- and 256-token units, empty and 1-token experts."""
    sizes = [0, 1, 33, 130, 5, 0, 77, 32, 256, 300]
    (aq, as_, _), (bq, bs, _), offsets = _problem(sizes, 512, 384, seed=11, spread=6)
    kw = {"_decode": decode}
    if swiglu:
        kw = dict(swiglu=True, probs=torch.rand(sum(sizes), device="cuda"), h_bf16=True, h_row=True, h_col=True,
                  swizzled=True, _decode=decode)
    ref = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, **kw)
    got = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=dequantize_rowwise_kperm(aq, as_),
                               _poison=True, **kw)
    if not swiglu:
        ref, got = {"y": ref}, {"y": got}
    else:
        # h_dequant: the same rowwise MXFP8 h, dequantized and K-permuted for FC2's a_dequant
        kw.pop("h_row")
        hd = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=dequantize_rowwise_kperm(aq, as_),
                                  h_dequant=True, _poison=True, **kw)
        plain = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, swiglu=True, probs=kw["probs"], h_row=True,
                                     _decode=decode)
        assert hd["h_row"] is None
        assert torch.equal(hd["h_dequant"], dequantize_rowwise_kperm(*plain["h_row"]))
        assert torch.equal(hd["z"], ref["z"])
    _assert_same_bytes(ref, got)


def test_geometries_bit_identical():
    """The training (256 tokens x 128 features), decode (128 x 256) and narrow decode (128 x 128)
    geometries of the swapped kernels write the same bytes: FC1 with every h output, and FC2, on
    bf16 tokens."""
    sizes = [0, 1, 33, 130, 5, 0, 77, 32, 256, 300, 129]
    (aq, as_, _), (bq, bs, _), offsets = _problem(sizes, 512, 512, seed=13, spread=6)
    ad = dequantize_rowwise_kperm(aq, as_)
    kw = dict(swiglu=True, probs=torch.rand(sum(sizes), device="cuda"), h_bf16=True, h_col=True, swizzled=True,
              h_dequant=True)
    outs = [mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, _decode=d, **kw)
            for d in (False, True, 2)]
    for other in outs[1:]:
        _assert_same_bytes(outs[0], other)
    ys = [mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, _decode=d)
          for d in (False, True, 2)]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])


@pytest.mark.parametrize("decode", [pytest.param(True, id="decode"), pytest.param(2, id="decode_narrow")])
@pytest.mark.parametrize("splits", [2, 3, 7])
def test_decode_split_k(splits, decode):
    """Split K (every decode tile forced into ``splits`` parts of the k-tile pairs; the last part
    to finish adds the fp32 partials in split order and runs the epilogue): FC1's z against the
    exact reference, h and MXFP8 h against the stored z, FC2; narrow (<= 32 tokens) and 128-token
    tiles, empty and 1-token experts, an uneven share of 8 k-tile pairs. A second launch (the
    counters back at zero) gives the same bytes."""
    sizes = [0, 1, 33, 130, 5, 0, 77, 32, 128, 3]
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, 512, 1024, seed=17, spread=6)
    ad = dequantize_rowwise_kperm(aq, as_)
    probs = torch.rand(sum(sizes), device="cuda")
    kw = dict(swiglu=True, probs=probs, h_bf16=True, h_row=True, h_col=True, swizzled=True, _decode=decode,
              _splits=splits)
    out = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, **kw)
    _check_fc1(out, sizes, adq, bdq, offsets, probs, True)
    _assert_same_bytes(out, mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, **kw))
    whole = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, **{**kw, "_splits": 1})
    assert rel_err(out["z"].double(), whole["z"].double()) < 1e-2
    y = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, _decode=decode, _splits=splits)
    _check_gemm(y, adq, bdq, sizes, offsets)


@pytest.mark.parametrize("decode", [pytest.param(True, id="decode"), pytest.param(2, id="decode_narrow")])
def test_decode_tail_split(decode):
    """The launcher's own split (:func:`tail_splits`): a grid of a few tiles more than the SMs
    runs the first round whole and splits the short last one; same checks as above."""
    from cute_moe._cuda import sm_count
    from cute_moe.kernels.sm90.mx_grouped_gemm import GEOMETRIES as FORMS, TILE_K, filled_slots, tail_splits

    n, k = 512, 2048
    n_tiles, sms = n // FORMS[decode][1], sm_count(torch.device("cuda"))
    for experts in range(sms // n_tiles, 2 * sms):  # 1-3 tokens each: a short last round of tiles
        sizes = [1 + i % 3 for i in range(experts)]
        tiles = n_tiles * filled_slots(sum(sizes), experts)
        splits, whole = tail_splits(sms, tiles, k // TILE_K)
        if splits > 1 and whole > 0:
            break
    assert splits > 1 and 0 < whole < tiles
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, n, k, seed=19, spread=4)
    ad = dequantize_rowwise_kperm(aq, as_)
    probs = torch.rand(sum(sizes), device="cuda")
    kw = dict(swiglu=True, probs=probs, h_bf16=True, h_row=True, h_col=True, swizzled=False, _decode=decode)
    out = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, **kw)
    _check_fc1(out, sizes, adq, bdq, offsets, probs, False)
    unsplit = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _splits=1, **kw)
    assert rel_err(out["z"].double(), unsplit["z"].double()) < 1e-2
    y = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, _decode=decode)
    _check_gemm(y, adq, bdq, sizes, offsets)


def test_split_launches_of_different_sizes_share_the_workspace():
    """Split launches with different numbers of split tiles, alternating on one stream (FC1 then FC2
    of a decode step, twice), each find their counters at zero: every output matches the reference
    and the second step repeats the first one's bytes."""
    sizes = [0, 1, 33, 130, 5, 0, 77, 32, 128, 3]
    (aq, as_, adq), (bq, bs, bdq), offsets = _problem(sizes, 512, 1024, seed=29, spread=4)
    (_, _, _), (bq2, bs2, bdq2), _ = _problem(sizes, 1536, 1024, seed=31, spread=4)
    ad = dequantize_rowwise_kperm(aq, as_)
    probs = torch.rand(sum(sizes), device="cuda")
    fc1 = dict(swiglu=True, probs=probs, h_bf16=True, h_row=True, h_col=True, swizzled=True, _decode=2, _splits=2)
    steps = []
    for _ in range(2):
        z = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _poison=True, **fc1)
        y = mx_grouped_gemm_sm90(None, None, bq2, bs2, offsets, a_dequant=ad, _poison=True, _decode=True, _splits=5)
        steps.append((z, y))
    _check_fc1(steps[0][0], sizes, adq, bdq, offsets, probs, True)
    _check_gemm(steps[0][1], adq, bdq2, sizes, offsets)
    _assert_same_bytes(steps[0][0], steps[1][0])
    assert torch.equal(steps[0][1], steps[1][1])


def test_decode_split_k_in_cuda_graph():
    """A split launch captured in a CUDA graph (its workspace zeroed inside the graph) and replayed
    twice gives the eager launch's bytes."""
    sizes = [0, 1, 33, 130, 5, 0, 77, 32, 128, 3]
    (aq, as_, _), (bq, bs, _), offsets = _problem(sizes, 512, 1024, seed=23, spread=4)
    ad = dequantize_rowwise_kperm(aq, as_)
    kw = dict(swiglu=True, probs=torch.rand(sum(sizes), device="cuda"), h_dequant=True, h_col=True, _decode=True,
              _splits=3)
    eager = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, **kw)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, **kw)
    for _ in range(2):
        for t in (captured["z"], captured["h_dequant"], captured["h_col"][0].view(torch.uint8)):
            t.fill_(0)
        graph.replay()
        torch.cuda.synchronize()
        _assert_same_bytes(eager, captured)


def _dense_weights(bq, bs):
    e, n, k = bq.shape
    return dequantize_rowwise_kperm(bq.view(e * n, k), bs.view(e * n, k // 32)).view(e, n, k)


@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("n,k", [(512, 320), (512, 512), (768, 256)])
def test_dense_weights_bit_identical(swiglu, n, k):
    """b_dequant (weights as exact bf16 too: a plain bf16 mainloop, tokens x features) gives the
    swapped MXFP8 path's bytes: z / y, bf16 h, MXFP8 h both ways (swizzled scales), h_dequant;
    over empty, 1-token, partial and multi-tile experts (units of two token tiles whose second
    tile is partial, empty or a gap tile), an odd number of k-tiles (K = 320) and of N tiles."""
    sizes = [0, 1, 33, 300, 5, 0, 77, 128, 129]
    (aq, as_, a_dq), (bq, bs, b_dq), offsets = _problem(sizes, n, k, seed=12, spread=6)
    kw = {}
    if swiglu:
        kw = dict(swiglu=True, probs=torch.rand(sum(sizes), device="cuda"), h_bf16=True, h_col=True, swizzled=True)
    ref = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, h_row=swiglu, **kw)
    ref_dq = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, h_dequant=True, **kw) if swiglu else None
    ad, bd = dequantize_rowwise_kperm(aq, as_), _dense_weights(bq, bs)
    got = mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=ad, b_dequant=bd, h_row=swiglu,
                               _poison=True, **kw)
    if not swiglu:
        _check_gemm(got, a_dq, b_dq, sizes, offsets)
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
        return
    got_dq = mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=ad, b_dequant=bd, h_dequant=True,
                                  _poison=True, **kw)
    assert torch.equal(got_dq["h_dequant"], ref_dq["h_dequant"])
    _assert_same_bytes(ref, got, ("z", "h", "h_row", "h_col"))


@pytest.mark.parametrize("decode", GEOMETRIES)
def test_swiglu_fallback_values_bit_exact(decode):
    """Gate values that take the SiLU's div.rn fallback (zero, |g| >= 2^65, |g| < 2^-64) in some row
    groups of a thread and not in others (zero token rows; gate rows scaled by 2^80 and 2^-80):
    the swapped kernels, which recompute a thread's groups after the fact, write the dense path's
    bytes (a fallback inline per group), and h is the reference's SwiGLU of the stored z."""
    def edit(a, b):
        a[[3, 40, 41, 200, 310]] = 0  # z = 0 in these rows: g = 0 in their row groups only
        b[:, 64:80] *= 2.0**80  # pair 1's gates: silu of huge values (exp(-g) 0 or inf)
        b[:, 80:96] *= 2.0**-80  # and of tiny ones

    sizes = [0, 1, 33, 300, 5, 129]
    (aq, as_, _), (bq, bs, _), offsets = _problem(sizes, 512, 256, seed=21, edit=edit)
    probs = torch.rand(sum(sizes), device="cuda")
    kw = dict(swiglu=True, probs=probs, h_bf16=True, h_dequant=True, h_col=True, _poison=True)
    ad = dequantize_rowwise_kperm(aq, as_)
    got = mx_grouped_gemm_sm90(None, None, bq, bs, offsets, a_dequant=ad, _decode=decode, **kw)
    dense = mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=ad, b_dequant=_dense_weights(bq, bs),
                                 **kw)
    _assert_same_bytes(dense, got)
    assert torch.equal(got["h"], _h_reference(got["z"], probs))


@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("n,ctas", [(512, None), (768, None), (512, 1), (768, 5)])
def test_dense_persistent_many_tiles(swiglu, n, ctas):
    """The persistent dense kernel walks many units per CTA (more placed tiles than SMs, or a grid
    forced down to 1 cluster / 5 CTAs) across empty experts and gap tiles, with the ring's phases
    wrapping many times: same bytes as the swapped path."""
    gen = torch.Generator().manual_seed(5)
    sizes = torch.randint(0, 700, (48,), generator=gen)
    sizes[::7] = 0
    sizes[3], sizes[10] = 1, 129
    sizes = sizes.tolist()
    k = 256
    (aq, as_, a_dq), (bq, bs, b_dq), offsets = _problem(sizes, n, k, seed=13, spread=6)
    kw = dict(swiglu=True, probs=torch.rand(sum(sizes), device="cuda"), h_bf16=True, h_col=True,
              swizzled=True, h_row=True) if swiglu else {}
    ref = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, **kw)
    got = mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=dequantize_rowwise_kperm(aq, as_),
                               b_dequant=_dense_weights(bq, bs), _poison=True, _ctas=ctas, **kw)
    if not swiglu:
        _check_gemm(got, a_dq, b_dq, sizes, offsets)
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
        return
    _assert_same_bytes(ref, got, ("z", "h", "h_row", "h_col"))


def test_kperm_rowwise_order():
    x = torch.arange(128, device="cuda").view(1, 128)
    p = kperm_rowwise(x)[0].tolist()
    for base in (0, 64):
        for s in range(4):
            for h in range(2):
                for c in range(4):
                    for e in range(2):
                        assert p[base + 16 * s + 8 * h + 2 * c + e] == base + 16 * c + 4 * s + 2 * h + e


# E8M0 codes from 0 (2^-127) to 246, and 134/135 where the on-chip dequantization switches multipliers
EDGE_CODES = torch.tensor([0, 1, 7, 50, 119, 120, 126, 127, 128, 133, 134, 135, 136, 200, 240, 246])


def _every_byte(rows, k):
    """[rows, K] MXFP8 (cuda): every e4m3 byte but the NaN ones (they appear only under a NaN scale)
    in each row's 32-blocks, under EDGE_CODES in turn."""
    data = (torch.arange(k)[None, :] + torch.arange(rows)[:, None]) % 256
    data[(data & 0x7F) == 0x7F] = 0x7E
    q = data.to(torch.uint8).view(torch.float8_e4m3fn).cuda()
    s = EDGE_CODES[(torch.arange(rows)[:, None] + torch.arange(k // 32)[None, :]) % len(EDGE_CODES)]
    return q, s.to(torch.uint8).cuda()


def test_dequantization_every_e4m3_byte_and_edge_codes():
    """y = a @ I: every e4m3 byte of the tokens under E8M0 codes from 0 to 246 must come out as
    bf16(q * 2^(E-127)) exactly."""
    from cute_moe.quant.mxfp8 import dequantize

    t, k = 32, 256
    a_q, a_s = _every_byte(t, k)
    eye = torch.eye(k, dtype=torch.bfloat16)
    b_q, b_s, _ = _mx(eye[None].cuda())
    offsets = exclusive_offsets(torch.tensor([t], dtype=torch.int32, device="cuda"))
    y = mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets, _poison=True)
    want = dequantize(a_q.cpu(), a_s.cpu(), dtype=torch.float64).to(torch.float32).to(torch.bfloat16)
    # value equality: the GEMM's sum turns -0 into +0
    assert torch.equal(y.cpu().float(), want.float())


@pytest.mark.parametrize("decode", [False, True])
def test_weight_dequantization_every_e4m3_byte_and_edge_codes(decode):
    """y = I @ W^T with bf16 tokens (the fused forward's operands): every e4m3 byte of the weights
    under E8M0 codes from 0 to 246, dequantized in registers by the swapped kernels (both
    geometries), must come out as bf16(q * 2^(E-127)) exactly."""
    from cute_moe.quant.mxfp8 import dequantize

    n, k = 256, 256
    b_q, b_s = _every_byte(n, k)
    eye = torch.eye(k, dtype=torch.bfloat16, device="cuda")
    a_q, a_s, _ = _mx(eye)
    offsets = exclusive_offsets(torch.tensor([k], dtype=torch.int32, device="cuda"))
    y = mx_grouped_gemm_sm90(None, None, b_q[None], b_s[None], offsets, a_dequant=dequantize_rowwise_kperm(a_q, a_s),
                             _poison=True, _decode=decode)
    want = dequantize(b_q.cpu(), b_s.cpu(), dtype=torch.float64).to(torch.float32).to(torch.bfloat16)
    assert torch.equal(y.cpu().float(), want.t().float())


def test_kernel_loaded_from_disk_cache_gives_same_bytes(tmp_path, monkeypatch):
    """A kernel loaded back by the disk compile cache (another process's view) runs like the
    freshly compiled one."""
    from cute_moe.kernels import compile as c

    monkeypatch.setenv("CUTE_MOE_CACHE_DIR", str(tmp_path))
    sizes = [0, 3, 130]
    (aq, as_, _), (bq, bs, _), offsets = _problem(sizes, 256, 320, seed=3)
    c.clear_memory_cache()
    before = c.cache_info()
    fresh = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets)
    assert c.cache_info()["compiled"] == before["compiled"] + 1 and list(tmp_path.glob("*.o"))
    c.clear_memory_cache()
    loaded = mx_grouped_gemm_sm90(aq, as_, bq, bs, offsets, _poison=True)
    assert c.cache_info()["disk_hits"] == before["disk_hits"] + 1
    assert torch.equal(fresh, loaded)
