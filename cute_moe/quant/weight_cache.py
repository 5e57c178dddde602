"""Quantized weights kept between calls while the weight is unchanged (opt-in:
``MXFP8BlockScaling(cache_weights=True)``).

A forward under the MXFP8 recipe quantizes its weight operands (all experts) before the GEMMs. In
decode that pass costs far more than the GEMM, which touches a few experts: flash's W1 is 8.6 GB of
bf16 against ~0.1 GB of touched MXFP8 weights per step. With the cache, each weight keeps its
quantized forms (one per ``kind``) here, reused while the weight tensor is the same object with the
same version counter, storage, shape and dtype.

Opt-in because the version counter does not see every write: in-place ops on the tensor (optimizer
steps, ``copy_``, ``load_state_dict``) bump it, but writes through ``w.data``, collectives
(``dist.broadcast`` / ``all_reduce`` of a weight) and FSDP's all-gather into the same storage do
not. After such writes call :func:`clear_weight_cache`, or the next call computes with the old
weights. Streams follow PyTorch's rules (a call on another stream than the one that filled an
entry must be ordered after it by the caller). CUDA graphs: capture after a warm-up call, so that
the graph reads the cached copies (a miss during capture computes but stores nothing); replacing or
clearing an entry frees copies a captured graph still reads, so re-capture after either.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import torch

_entries: dict = {}  # (id(weight), kind) -> (weakref to the weight, stamp, value)
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def _stamp(w: torch.Tensor):
    """What the cached value depends on; None when ``w`` has no version counter (an inference tensor)."""
    try:
        version = w._version
    except RuntimeError:
        return None
    return version, w.data_ptr(), tuple(w.shape), w.dtype


def _forget(ref, key):
    # the weight died: drop its entry unless the key already holds a newer weight's (no lock: this
    # runs from the garbage collector, possibly inside a locked section of this thread)
    entry = _entries.get(key)
    if entry is not None and entry[0] is ref:
        _entries.pop(key, None)


def cached_weight(w: torch.Tensor, kind: str, make: Callable[[], object]):
    """``make()``'s result for weight ``w`` in form ``kind``, from the cache while ``w`` is unchanged."""
    stamp = _stamp(w)
    if stamp is None:
        return make()
    key = (id(w), kind)
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is w and entry[1] == stamp:
            _stats["hits"] += 1
            return entry[2]
    value = make()
    if w.is_cuda and torch.cuda.is_current_stream_capturing():
        return value  # recorded, not computed: nothing valid to keep for eager calls
    ref = weakref.ref(w, lambda r, key=key: _forget(r, key))
    with _lock:
        _stats["misses"] += 1
        _entries[key] = (ref, stamp, value)
    return value


def clear_weight_cache() -> None:
    """Drop every cached quantized weight (frees their memory)."""
    with _lock:
        _entries.clear()


def weight_cache_info() -> dict:
    """Hits and misses since import, and the entries held now with their bytes."""
    with _lock:
        values = [entry[2] for entry in _entries.values()]
    nbytes = sum(t.numel() * t.element_size() for v in values for t in _tensors(v))
    return dict(_stats, entries=len(values), bytes=nbytes)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
