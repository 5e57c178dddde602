"""Compiling CuTe DSL kernels: target architecture, argument placeholders, in-memory cache.

A kernel is compiled once per static configuration (its constructor arguments and the target
arch) and reused for every runtime shape: token counts and split sizes are kernel arguments.
Kernels compile without a GPU for a named arch (``CUTE_DSL_ARCH`` or ``arch=``), which is how CI
checks every kernel's PTX.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any, Callable

import cuda.bindings.driver as cuda
import cutlass.cute as cute
import torch
from cutlass.base_dsl.compiler import DumpDir
from cutlass.cute.runtime import make_ptr

# Imported once here: gmem_ptr / stream_arg run on every kernel launch.
_cache: dict = {}
_lock = threading.Lock()


def target_arch(device=None) -> str:
    """``sm_90a`` / ``sm_100a`` for the given CUDA device, else ``$CUTE_DSL_ARCH``."""
    if device is not None and torch.device(device).type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}a"
    env = os.environ.get("CUTE_DSL_ARCH")
    if env:
        return env
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}a"
    raise RuntimeError("no CUDA device and CUTE_DSL_ARCH is unset: set CUTE_DSL_ARCH=sm_90a (or sm_100a) to compile")


def gmem_ptr(dtype, tensor=None):
    """A global-memory pointer argument (address 0 when compiling without data)."""
    return make_ptr(dtype, 0 if tensor is None else tensor.data_ptr(), cute.AddressSpace.gmem, assumed_align=16)


def stream_arg(torch_stream=None):
    return cuda.CUstream(0 if torch_stream is None else torch_stream.cuda_stream)


def compile_kernel(key: tuple, make: Callable[[], Any], args: tuple, arch: str, keep_ptx: bool = False):
    """Compile ``make()`` (a ``cute.jit`` callable) for ``arch`` once per ``key``; cached."""
    full_key = (key, arch, keep_ptx)
    with _lock:
        hit = _cache.get(full_key)
        if hit is not None:
            return hit
        opts = [cute.GPUArch(arch)]
        if keep_ptx:
            # KeepPTX also writes a .ptx file; keep it out of the working directory
            opts += [cute.KeepPTX, DumpDir(tempfile.gettempdir())]
        compiled = cute.compile[tuple(opts)](make(), *args)
        _cache[full_key] = compiled
        return compiled
