"""SM90 grouped GEMM (TMA + WGMMA) vs a per-expert fp32 reference (needs a Hopper GPU)."""

import pytest
import torch

from cute_moe.kernels.sm90.grouped_gemm import GroupedGemmSm90Kernel, grouped_gemm_sm90
from cute_moe.quant.api import exclusive_offsets

from helpers import random_sizes, rel_err

pytestmark = [
    pytest.mark.gpu,
    # wgmma / sm_90a code runs on Hopper only
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9,
                       reason="needs an sm_90 GPU"),
]


def _problem(sizes, n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t, e = int(sum(sizes)), len(sizes)
    a = torch.randn(t, k, generator=gen).to("cuda", torch.bfloat16)
    b = (torch.randn(e, n, k, generator=gen) / k**0.5).to("cuda", torch.bfloat16)
    offsets = exclusive_offsets(torch.tensor(list(sizes), dtype=torch.int32, device="cuda"))
    return a, b, offsets


def _reference(a, b, sizes):
    y = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    start = 0
    for e, s in enumerate(sizes):
        y[start : start + s] = a[start : start + s].float() @ b[e].float().t()
        start += s
    return y


def _check(sizes, n, k, seed=0):
    sizes = [int(s) for s in sizes]
    a, b, offsets = _problem(sizes, n, k, seed)
    y = grouped_gemm_sm90(a, b, offsets, _poison=float("nan"))
    torch.cuda.synchronize()
    assert y.shape == (sum(sizes), n) and y.dtype == torch.bfloat16
    # every row belongs to some expert, so a NaN left anywhere is a row the kernel skipped
    assert not torch.isnan(y).any(), f"unwritten rows: {torch.isnan(y).any(1).nonzero().flatten()[:16].tolist()}"
    ref = _reference(a, b, sizes)
    err = rel_err(y, ref)
    assert err < 1e-2, f"normwise relative error {err}"
    # per expert too, so that a small expert written with another expert's weights shows up
    start = 0
    for s in sizes:
        if s:
            err = rel_err(y[start : start + s], ref[start : start + s])
            assert err < 1e-2, f"expert rows {start}..{start + s}: normwise relative error {err}"
        start += s


@pytest.mark.parametrize("n,k", [(256, 512), (128, 64), (384, 192)])  # k=64: fewer k-tiles than stages
def test_edge_split_sizes(n, k):
    _check([0, 1, 127, 128, 129, 0, 300], n, k)


def test_random_64_experts():
    sizes = random_sizes(64, 100, torch.Generator().manual_seed(1))
    _check(sizes.tolist(), 512, 1024, seed=1)


@pytest.mark.parametrize("owner", [0, 3, 7])
@pytest.mark.parametrize("tokens", [1, 129, 300])
def test_all_experts_empty_but_one(owner, tokens):
    sizes = [0] * 8
    sizes[owner] = tokens
    _check(sizes, 256, 256)


def test_no_tokens():
    a, b, offsets = _problem([0, 0, 0], 128, 64)
    y = grouped_gemm_sm90(a, b, offsets)
    assert y.shape == (0, 128)


def test_tile_multiple_experts_back_to_back():
    # every expert a whole number of tiles: no partial tiles, placed tiles with gaps of one
    _check([128, 256, 128, 384], 256, 512)


def test_rejects_unsupported_shapes():
    with pytest.raises(ValueError):
        GroupedGemmSm90Kernel(200, 512)
    with pytest.raises(ValueError):
        GroupedGemmSm90Kernel(256, 96)
