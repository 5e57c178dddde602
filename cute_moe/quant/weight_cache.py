"""Quantized weights kept between calls while the weight is unchanged.

A forward under the MXFP8 recipe quantizes its weight operands (all experts) before the GEMMs. In
decode that pass costs far more than the GEMM, which touches a few experts: flash's W1 is 8.6 GB of
bf16 against ~0.1 GB of touched MXFP8 weights per step. So each weight keeps its latest quantized
form here, reused while the weight tensor is the same object with the same version counter (every
in-place op on it, optimizer steps included, bumps that), the same storage, shape and dtype. Streams follow
PyTorch's rules: a call on another stream than the one that filled the entry must be ordered after
it by the caller. A CUDA graph captured after a warm-up call reads the cached copies (the capture
holds their addresses: re-capture after updating the weights).

Which calls use it is the recipe's ``cache_weights``: by default (None) calls that record no
gradient for the weights (inference, decode), where the cached copy is all the memory they cost;
True also in training (gradient accumulation: micro-batches of one step share the quantization,
and the copy stays allocated between steps); False never. In-place writes through ``w.data``
bypass the version counter: call :func:`clear_weight_cache` after those.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import torch

from .mxfp8 import MXFP8Tensor

_entries: dict = {}  # id(weight) -> (weakref to the weight, stamp, value)
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def _stamp(w: torch.Tensor, kind: str):
    """What the cached value depends on; None when ``w`` has no version counter (an inference tensor)."""
    try:
        version = w._version
    except RuntimeError:
        return None
    return kind, version, w.data_ptr(), tuple(w.shape), w.dtype


def _forget(ref, key):
    # the weight died: drop its entry (unless the id already belongs to a newer weight's entry)
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0] is ref:
            del _entries[key]


def cached_weight(w: torch.Tensor, kind: str, make: Callable[[], object]):
    """``make()``'s result for weight ``w`` in form ``kind``, from the cache while ``w`` is unchanged.
    One entry per weight: a new ``kind`` replaces the previous form."""
    stamp = _stamp(w, kind)
    if stamp is None:
        return make()
    key = id(w)
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is w and entry[1] == stamp:
            _stats["hits"] += 1
            return entry[2]
    value = make()
    with _lock:
        _stats["misses"] += 1
        _entries[key] = (weakref.ref(w, lambda ref, key=key: _forget(ref, key)), stamp, value)
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
    elif isinstance(value, MXFP8Tensor):
        yield from _tensors((value.data, value._scale, value._scale_swizzled))
