"""Recipe context (nesting, threads, torch.compile) and the dispatcher's decisions."""

import threading

import pytest
import torch

import cute_moe
from cute_moe import MXFP8BlockScaling, autocast, get_recipe
from cute_moe import dispatch


def test_autocast_nests_and_restores():
    assert get_recipe() is None
    with autocast():
        assert isinstance(get_recipe(), MXFP8BlockScaling)
        with autocast(enabled=False):
            assert get_recipe() is None
        assert get_recipe() == MXFP8BlockScaling()
    assert get_recipe() is None
    with pytest.raises(ValueError, match="block_size"):
        MXFP8BlockScaling(block_size=16)
    with pytest.raises(TypeError, match="recipe"):
        with autocast(recipe="mxfp8"):
            pass


def test_autocast_is_per_thread():
    seen = {}
    barrier = threading.Barrier(2)

    def worker(name, enabled):
        with autocast(enabled=enabled):
            barrier.wait()
            seen[name] = get_recipe()
            barrier.wait()

    threads = [threading.Thread(target=worker, args=("on", True)), threading.Thread(target=worker, args=("off", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(seen["on"], MXFP8BlockScaling) and seen["off"] is None


def test_autocast_under_torch_compile_matches_eager():
    m = cute_moe.GroupedMLP(2, 64, 64, dtype=torch.float32)
    x = torch.randn(40, 64)
    sizes = torch.tensor([25, 15])

    def step(x):
        with autocast():
            return m(x, sizes)

    eager = step(x)
    compiled = torch.compile(step, backend="eager")(x)
    assert torch.equal(eager, compiled)
    with autocast(enabled=False):
        plain = m(x, sizes)
    assert not torch.equal(plain, eager)  # the recipe really changed the numerics


def _fake_cuda(monkeypatch, cap):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: cap)
    monkeypatch.setattr(dispatch, "capability", lambda device: cap)  # (dispatch caches the driver's answer)


def test_dispatch_cpu():
    cpu = torch.device("cpu")
    d = dispatch.decide(cpu, torch.bfloat16, 256, 256, hidden=256)
    assert d.path == dispatch.REFERENCE and not d.mxfp8
    with autocast():
        d = dispatch.decide(cpu, torch.bfloat16, 256, 256, hidden=256)
    assert d.path == dispatch.REFERENCE and d.mxfp8 and "cpu" in d.reason


@pytest.mark.parametrize("cap", [(9, 0), (10, 0)])
def test_dispatch_cuda_rules(monkeypatch, cap):
    _fake_cuda(monkeypatch, cap)
    cuda = torch.device("cuda")
    assert dispatch.decide(cuda, torch.bfloat16, 256, 256, hidden=256).path == dispatch.BF16
    with autocast():
        ok = dispatch.decide(cuda, torch.bfloat16, 512, 512, hidden=256)
        odd = dispatch.decide(cuda, torch.bfloat16, 512, 512, hidden=96)
        fp32 = dispatch.decide(cuda, torch.float32, 512, 512, hidden=256)
        tiny = dispatch.decide(cuda, torch.bfloat16, 40, 40, hidden=32)
    # SM90 fused kernels exist in this build, SM100 ones not yet: an eligible call says which
    if cap == (9, 0):
        assert ok.path == dispatch.FUSED_SM90 and "FC1+SwiGLU" in ok.reason
    else:
        assert ok.path == dispatch.MXFP8_UNFUSED and "not in this build" in ok.reason
    with autocast(recipe=cute_moe.MXFP8BlockScaling(fused=False)):
        opt_out = dispatch.decide(cuda, torch.bfloat16, 512, 512, hidden=256)
    assert opt_out.path == dispatch.MXFP8_UNFUSED and "fused=False" in opt_out.reason
    assert odd.path == dispatch.MXFP8_UNFUSED and "256" in odd.reason
    assert fp32.path == dispatch.REFERENCE and fp32.mxfp8
    assert tiny.path == dispatch.REFERENCE
    monkeypatch.setattr(dispatch, "AVAILABLE_FUSED", frozenset({dispatch.FUSED_SM90, dispatch.FUSED_SM100}))
    with autocast():
        fused = dispatch.decide(cuda, torch.bfloat16, 512, 512, hidden=256)
        not_div = dispatch.decide(cuda, torch.bfloat16, 512 + 128, 512 + 128, hidden=256)
    assert fused.path == (dispatch.FUSED_SM90 if cap == (9, 0) else dispatch.FUSED_SM100)
    assert not_div.path == dispatch.MXFP8_UNFUSED


def test_explain_names_path_and_reason():
    m = cute_moe.GroupedMLP(2, 64, 64)
    x = torch.randn(8, 64).bfloat16()
    assert cute_moe.explain(x, m).startswith("reference: cpu device")
    with autocast():
        assert "MXFP8" in cute_moe.explain(x, m.w1, m.w2)
    with pytest.raises(TypeError):
        cute_moe.explain(x)
