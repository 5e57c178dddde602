"""The CUDA queries a front door makes on every call, at their cheapest.

A decode step's GEMMs take 20-130 us on the GPU, and every microsecond of Python in front of them
shows when a loop calls them eagerly (bench/bench_host.py: one torch op costs ~25 us of CPU on the
H200 host). ``torch.cuda.current_stream(dev)`` builds a Stream object and
``get_device_capability`` / ``get_device_properties`` a driver query per call; these answer from a
cache or a raw handle.
"""

from __future__ import annotations

import functools

import torch

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def device_index(dev) -> int:
    """The CUDA device index of ``dev`` (a device, its name, or an index; "cuda" alone: the current device)."""
    index = dev.index if isinstance(dev, torch.device) else torch.device(dev).index
    return torch.cuda.current_device() if index is None else index


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(dev) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device ``dev``, asked of the driver once per device."""
    return _capability(device_index(dev))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(dev) -> int:
    """Streaming multiprocessors of CUDA device ``dev``, asked of the driver once per device."""
    return _sm_count(device_index(dev))


def stream_handle(dev) -> int:
    """The current stream of CUDA device ``dev`` as a raw ``cudaStream_t`` (the kernels' launch argument)."""
    index = device_index(dev)
    return _raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream
