"""The quantized-weight cache (cute_moe.quant.weight_cache) and the recipe's policy for it, on the CPU."""

import gc

import pytest
import torch

import cute_moe
from cute_moe import MXFP8BlockScaling, autocast
from cute_moe.functional import _cache_weights
from cute_moe.quant.weight_cache import cached_weight, clear_weight_cache, weight_cache_info


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_weight_cache()
    yield
    clear_weight_cache()


def _counting(value_of):
    calls = []

    def make(w):
        calls.append(1)
        return value_of(w)

    return calls, make


def test_hit_while_unchanged_miss_after_inplace_update():
    w = torch.randn(4, 64, 32)
    calls, make = _counting(lambda w: w * 2)
    before = weight_cache_info()
    first = cached_weight(w, "row_mx", lambda: make(w))
    again = cached_weight(w, "row_mx", lambda: make(w))
    assert again is first and len(calls) == 1
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step: bumps the version counter
    fresh = cached_weight(w, "row_mx", lambda: make(w))
    assert len(calls) == 2 and torch.equal(fresh, w * 2)
    info = weight_cache_info()
    assert info["hits"] - before["hits"] == 1 and info["misses"] - before["misses"] == 2
    assert (info["entries"], info["bytes"]) == (1, fresh.numel() * 4)


def test_new_storage_shape_or_kind_is_a_miss():
    w = torch.randn(2, 64, 32)
    calls, make = _counting(lambda w: w.clone())
    cached_weight(w, "row_mx", lambda: make(w))
    w.data = torch.randn(2, 64, 32)  # new storage under the same object
    assert torch.equal(cached_weight(w, "row_mx", lambda: make(w)), w)
    cached_weight(w, "row_dequant_kperm", lambda: make(w))  # another form replaces the entry
    cached_weight(w, "row_mx", lambda: make(w))
    assert len(calls) == 4 and weight_cache_info()["entries"] == 1


def test_entry_dies_with_its_weight_and_ids_are_not_confused():
    w = torch.randn(2, 64, 32)
    cached_weight(w, "row_mx", lambda: torch.ones(3))
    assert weight_cache_info()["entries"] == 1
    del w
    gc.collect()
    assert weight_cache_info()["entries"] == 0
    # a new tensor (possibly at the same id and address) never gets another weight's value
    for _ in range(20):
        v = torch.randn(2, 64, 32)
        assert torch.equal(cached_weight(v, "row_mx", lambda: v + 1), v + 1)
        del v


def test_inference_tensors_are_not_cached():
    with torch.inference_mode():
        w = torch.randn(2, 64, 32)
    calls, make = _counting(lambda w: w + 0)
    cached_weight(w, "row_mx", lambda: make(w))
    cached_weight(w, "row_mx", lambda: make(w))
    assert len(calls) == 2 and weight_cache_info()["entries"] == 0


def test_recipe_policy():
    w = torch.randn(2, 64, 32, requires_grad=True)
    frozen = torch.randn(2, 64, 32)
    assert not _cache_weights((w,))  # no recipe: nothing is quantized
    with autocast():
        assert not _cache_weights((w,))  # training: weights get gradients
        assert _cache_weights((frozen,))
        with torch.no_grad():
            assert _cache_weights((w,))  # inference
    with autocast(recipe=MXFP8BlockScaling(cache_weights=True)):
        assert _cache_weights((w,))
    with autocast(recipe=MXFP8BlockScaling(cache_weights=False)), torch.no_grad():
        assert not _cache_weights((w,))
    with pytest.raises(TypeError, match="cache_weights"):
        MXFP8BlockScaling(cache_weights="yes")


def test_public_names():
    assert cute_moe.clear_weight_cache is clear_weight_cache and cute_moe.weight_cache_info is weight_cache_info
