"""The quantized-weight cache (cute_moe.quant.weight_cache) and the recipe's policy for it, on the CPU."""

import gc
import weakref

import pytest
import torch

import cute_moe
from cute_moe import MXFP8BlockScaling, autocast
from cute_moe.functional import _cache_weights
from cute_moe.quant import weight_cache
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


def test_new_storage_is_a_miss_and_each_form_has_its_entry():
    w = torch.randn(2, 64, 32)
    calls, make = _counting(lambda w: w.clone())
    cached_weight(w, "row_mx", lambda: make(w))
    w.data = torch.randn(2, 64, 32)  # new storage under the same object
    assert torch.equal(cached_weight(w, "row_mx", lambda: make(w)), w)
    cached_weight(w, "row_dequant_kperm", lambda: make(w))  # prefill's form next to decode's
    cached_weight(w, "row_mx", lambda: make(w))
    cached_weight(w, "row_dequant_kperm", lambda: make(w))
    assert len(calls) == 3 and weight_cache_info()["entries"] == 2


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
        v = None
    # an entry whose weight died but is still listed (its callback not run yet) under a reused id
    u = torch.randn(2, 64, 32)
    dead = torch.randn(2, 64, 32)
    ref = weakref.ref(dead)
    del dead
    gc.collect()
    weight_cache._entries[(id(u), "row_mx")] = (ref, weight_cache._stamp(u), torch.zeros(1))
    assert torch.equal(cached_weight(u, "row_mx", lambda: u * 3), u * 3)


def test_inference_tensors_are_not_cached():
    with torch.inference_mode():
        w = torch.randn(2, 64, 32)
    calls, make = _counting(lambda w: w + 0)
    cached_weight(w, "row_mx", lambda: make(w))
    cached_weight(w, "row_mx", lambda: make(w))
    assert len(calls) == 2 and weight_cache_info()["entries"] == 0


def test_recipe_opt_in():
    assert not _cache_weights()  # no recipe: nothing is quantized
    with autocast(), torch.no_grad():
        assert not _cache_weights()  # opt-in only: the version counter misses some writes
    with autocast(recipe=MXFP8BlockScaling(cache_weights=True)):
        assert _cache_weights()
    with pytest.raises(TypeError, match="cache_weights"):
        MXFP8BlockScaling(cache_weights=None)


def test_finite_check_once_per_weight_version_when_cached():
    """With the cache on, the optional value checks scan a weight once per version, not per call."""
    w1, w2 = torch.randn(2, 128, 64), torch.randn(2, 64, 64)
    x, sizes = torch.randn(3, 64), torch.tensor([1, 2])
    with autocast(recipe=MXFP8BlockScaling(cache_weights=True)):
        cute_moe.grouped_mlp(x, w1, w2, sizes)
        before = weight_cache_info()
        cute_moe.grouped_mlp(x, w1, w2, sizes)
        assert weight_cache_info()["hits"] - before["hits"] == 2  # w1 and w2 found finite before
        with torch.no_grad():
            w2[0, 0, 0] = float("nan")  # in place: a new version, scanned again
        with pytest.raises(ValueError, match="w2 contains NaN"):
            cute_moe.grouped_mlp(x, w1, w2, sizes)


def test_public_names():
    assert cute_moe.clear_weight_cache is clear_weight_cache and cute_moe.weight_cache_info is weight_cache_info


def test_threads_share_entries_without_deadlock():
    """Threads looking up, filling and dropping entries concurrently (weights dying mid-way run the
    weakref callback, possibly while another thread holds the lock) all get correct values."""
    import threading

    keep = [torch.randn(2, 16, 8) for _ in range(4)]
    errors = []

    def work(seed):
        gen = torch.Generator().manual_seed(seed)
        for i in range(200):
            w = keep[i % 4] if i % 3 else torch.randn(2, 16, 8, generator=gen)  # some die right away
            got = cached_weight(w, "row_mx", lambda w=w: w * 2)
            if not torch.equal(got, w * 2):
                errors.append((seed, i))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not errors
