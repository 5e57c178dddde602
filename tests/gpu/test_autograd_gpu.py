"""GPU paths (fused SM90 MXFP8, unfused MXFP8 with the CuTe DSL quantize kernels, bf16) vs the fp64 oracle."""

import pytest
import torch

import cute_moe
from cute_moe import autocast, dispatch, grouped_linear, grouped_mlp
from cute_moe.functional import last_decision

from helpers import mlp_problem, oracle_linear, oracle_mlp, rel_err, run_mlp

pytestmark = pytest.mark.gpu
NAMES = ["y", "dx", "dw1", "dw2", "dprobs"]
SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
UNFUSED = cute_moe.MXFP8BlockScaling(fused=False)


def _check_mx_vs_oracle(got, x, w1, w2, sizes, p, dy):
    want = oracle_mlp(x, w1, w2, sizes, p, dy)
    plain = oracle_mlp(x, w1, w2, sizes, p, dy, mx=False)
    for name, a, b, c in zip(NAMES, got, want, plain):
        if a is None and b is None:  # no probs: no dprobs
            continue
        assert torch.isfinite(a).all(), name
        # MXFP8 quantization is discontinuous: a bf16 rounding of z/h/dh that differs in the last
        # bit (GPU exp vs CPU, bf16 GEMM outputs) moves a few elements by one e4m3 step, ~1-2%
        # normwise. The path must still sit much closer to the MXFP8 oracle than to plain math.
        assert rel_err(a, b) < 3e-2, name
        assert rel_err(a, b) < 0.5 * rel_err(a, c), f"{name}: not MXFP8 numerics (no silent bf16 fallback)"
    zero = (sizes == 0).nonzero().flatten()
    assert bool((got[2][zero] == 0).all()) and bool((got[3][zero] == 0).all())


@pytest.mark.parametrize("e,t_mean,k,h", [(6, 40, 256, 256), (4, 100, 512, 256), (3, 17, 256, 96)])
def test_mxfp8_unfused_vs_oracle(e, t_mean, k, h):
    sizes, x, w1, w2, p, dy = mlp_problem(e, t_mean, k, h, device="cuda", seed=e)
    with autocast(recipe=UNFUSED):
        assert last_decision(x, w1, w2).path == dispatch.MXFP8_UNFUSED
        got = run_mlp(grouped_mlp, x, w1, w2, sizes, p, dy)
    _check_mx_vs_oracle(got, x, w1, w2, sizes, p, dy)


@pytest.mark.skipif(not SM90, reason="the fused forward kernels are SM90")
@pytest.mark.parametrize("probs", [True, False])
@pytest.mark.parametrize("e,t_mean,k,h", [(6, 40, 256, 256), (4, 100, 512, 512), (9, 150, 768, 256)])
def test_mxfp8_fused_sm90_vs_oracle(e, t_mean, k, h, probs):
    sizes, x, w1, w2, p, dy = mlp_problem(e, t_mean, k, h, device="cuda", seed=e, probs=probs)
    with autocast():
        assert last_decision(x, w1, w2).path == dispatch.FUSED_SM90
        got = run_mlp(grouped_mlp, x, w1, w2, sizes, p, dy)
    _check_mx_vs_oracle(got, x, w1, w2, sizes, p, dy)
    # the same numerics as the unfused path: only accumulation order differs
    with autocast(recipe=UNFUSED):
        unfused = run_mlp(grouped_mlp, x, w1, w2, sizes, p, dy)
    for name, a, b in zip(NAMES, got, unfused):
        if a is not None:
            assert rel_err(a, b) < 2e-2, name


@pytest.mark.skipif(not SM90, reason="the fused forward kernels are SM90")
def test_fused_sm90_dense_and_swapped_weights_agree(monkeypatch):
    """Both weight forms of the fused forward (bf16 dequantized weights, dense mainloop; MXFP8 weights
    dequantized in registers) give the same bytes, forward and backward."""
    from cute_moe.functional import _FusedSm90Ops

    sizes, x, w1, w2, p, dy = mlp_problem(5, 120, 512, 256, device="cuda", seed=3, probs=True)
    runs = []
    for threshold in (0, 10**9):
        monkeypatch.setattr(_FusedSm90Ops, "DENSE_MIN_TOKENS_PER_EXPERT", threshold)
        with autocast():
            runs.append(run_mlp(grouped_mlp, x, w1, w2, sizes, p, dy))
    for name, a, b in zip(NAMES, *runs):
        assert torch.equal(a, b), name


def test_bf16_path_vs_plain_oracle():
    sizes, x, w1, w2, p, dy = mlp_problem(5, 50, 256, 256, device="cuda")
    assert last_decision(x, w1, w2).path == dispatch.BF16
    got = run_mlp(grouped_mlp, x, w1, w2, sizes, p, dy)
    want = oracle_mlp(x, w1, w2, sizes, p, dy, mx=False)
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) < 1e-2, name


def test_grouped_linear_gpu():
    sizes = torch.tensor([0, 1, 40, 33, 70], device="cuda")
    x = torch.randn(144, 256, device="cuda").bfloat16()
    w = torch.randn(5, 128, 256, device="cuda").bfloat16()
    dy = torch.randn(144, 128, device="cuda").bfloat16()
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    with autocast():
        y = grouped_linear(xl, wl, sizes)
    y.backward(dy)
    for name, a, b in zip(["y", "dx", "dw"], [y, xl.grad, wl.grad], oracle_linear(x, w, sizes, dy)):
        assert rel_err(a, b) < 1e-2, name


def test_no_host_sync_when_checks_are_off():
    sizes, x, w1, w2, p, dy = mlp_problem(6, 64, 256, 256, device="cuda")
    m = cute_moe.GroupedMLP(6, 256, 256, device="cuda")
    with autocast():
        m(x, sizes, p).backward(dy)  # compile / warm up
    cute_moe.set_split_size_checks(False)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with autocast():
            y = m(x, sizes, p)
            y.backward(dy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        cute_moe.set_split_size_checks(True)
    torch.cuda.synchronize()


def test_explain_on_gpu():
    x = torch.randn(8, 256, device="cuda").bfloat16()
    m = cute_moe.GroupedMLP(2, 256, 256, device="cuda")
    with autocast():
        msg = cute_moe.explain(x, m)
    if SM90:
        assert msg.startswith(dispatch.FUSED_SM90) and "dequantized in registers" in msg, msg
        with autocast():
            big = cute_moe.explain(torch.randn(2 * 512, 256, device="cuda").bfloat16(), m)
        assert "exact bf16 dequantization (dense mainloop)" in big, big
    else:
        assert msg.startswith(dispatch.MXFP8_UNFUSED) and "not in this build" in msg


CACHED = cute_moe.MXFP8BlockScaling(cache_weights=True)


@pytest.mark.parametrize("path,recipe,tokens_per_expert", [
    ("fused swapped", CACHED, 3), ("fused dense", CACHED, 900),
    ("unfused", cute_moe.MXFP8BlockScaling(fused=False, cache_weights=True), 3)])
def test_weight_cache(path, recipe, tokens_per_expert):
    """With ``cache_weights=True`` the second call quantizes no weight (nor scans it for the value
    checks) and gives the same bytes; an in-place update (an optimizer step) invalidates the
    entries, so the next call matches a call without the cache; a training forward reads the same
    entries and gives the same bytes; the default recipe caches nothing."""
    if path.startswith("fused") and not SM90:
        pytest.skip("the fused forward kernels are SM90")
    from cute_moe.quant.weight_cache import clear_weight_cache, weight_cache_info

    clear_weight_cache()
    e, k, h = 4, 256, 256
    sizes = torch.tensor([tokens_per_expert, 0, 2 * tokens_per_expert + 1, 1], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(int(sizes.sum()), k, device="cuda", generator=gen).bfloat16()
    w1 = (torch.randn(e, 2 * h, k, device="cuda", generator=gen) / k**0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(e, k, h, device="cuda", generator=gen) / h**0.5).bfloat16().requires_grad_()
    p = torch.rand(x.shape[0], device="cuda", generator=gen)
    no_cache = cute_moe.MXFP8BlockScaling(fused=recipe.fused)

    def forward(r):
        with torch.no_grad(), autocast(recipe=r):
            return grouped_mlp(x, w1, w2, sizes, p)

    with autocast(recipe=recipe):
        want_path = dispatch.MXFP8_UNFUSED if path == "unfused" else dispatch.FUSED_SM90
        assert last_decision(x, w1, w2).path == want_path
    plain = forward(no_cache)
    assert weight_cache_info()["entries"] == 0
    before = weight_cache_info()
    first, second = forward(recipe), forward(recipe)
    info = weight_cache_info()
    # per weight: its quantized form and (value checks on) its finiteness
    assert (info["misses"] - before["misses"], info["hits"] - before["hits"], info["entries"]) == (4, 4, 4)
    assert torch.equal(first, second) and torch.equal(first, plain)
    with torch.no_grad():
        w1.mul_(0.5)  # in place: bumps the version counter
    updated = forward(recipe)
    assert weight_cache_info()["misses"] - info["misses"] == 2
    assert torch.equal(updated, forward(no_cache)) and not torch.equal(updated, first)
    hits = weight_cache_info()["hits"]
    with autocast(recipe=recipe):
        y_train = grouped_mlp(x, w1, w2, sizes, p)  # the autograd function (columnwise copies too)
    y_train.sum().backward()
    assert weight_cache_info()["hits"] - hits == 4
    assert y_train.grad_fn is not None and torch.equal(y_train.detach(), updated)


@pytest.mark.parametrize("recipe", [None, cute_moe.MXFP8BlockScaling(), CACHED])
def test_grouped_linear_no_grad_matches_autograd_forward(recipe):
    """A call autograd records nothing for runs the forward directly (no autograd function, no
    columnwise x): the same bytes as the recorded call's output."""
    sizes = torch.tensor([0, 1, 40, 33, 70], device="cuda")
    x = torch.randn(144, 256, device="cuda").bfloat16()
    w = torch.randn(5, 128, 256, device="cuda").bfloat16().requires_grad_()
    with autocast(enabled=recipe is not None, recipe=recipe):
        recorded = grouped_linear(x, w, sizes)
        with torch.no_grad():
            direct = grouped_linear(x, w, sizes)
    assert recorded.grad_fn is not None and direct.grad_fn is None
    assert torch.equal(recorded.detach(), direct)
