"""Compiling CuTe DSL kernels: target architecture, argument placeholders, compile cache.

A kernel is compiled once per static configuration (its constructor arguments and the target
arch) and reused for every runtime shape: token counts and split sizes are kernel arguments.
Kernels compile without a GPU for a named arch (``CUTE_DSL_ARCH`` or ``arch=``), which is how CI
checks every kernel's PTX.

Compiled kernels are cached in memory and on disk, across processes. ``cute.compile`` bypasses the
DSL's own file cache (that one serves implicitly jitted calls), so the disk cache uses the DSL's
export path instead: ``JitCompiledFunction.dump_to_object`` writes the host launcher with the cubin
inside, ``cutlass.runtime.load_module`` loads it back (milliseconds instead of seconds). Files live
in ``$CUTE_MOE_CACHE_DIR`` (default ``~/.cache/cute_moe``; ``off`` disables the disk cache), named
by a hash of the configuration, the arch, the DSL version and the source of ``cute_moe.kernels``:
editing a kernel or upgrading the DSL never loads a stale binary.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import cuda.bindings.driver as cuda
import cutlass.cute as cute
import torch
from cutlass.base_dsl.compiler import DumpDir
from cutlass.cute.runtime import make_ptr

from .._cuda import capability

# gmem_ptr / stream_arg build the placeholder arguments a kernel is compiled on; launches go
# through launch() with raw values.
_cache: dict = {}
_lock = threading.Lock()
_stats = {"memory_hits": 0, "disk_hits": 0, "compiled": 0}
_source_hash: list = []


def target_arch(device=None) -> str:
    """``sm_90a`` / ``sm_100a`` for the given CUDA device, else ``$CUTE_DSL_ARCH``."""
    if device is not None and torch.device(device).type == "cuda":
        major, minor = capability(device)
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


def check_aligned(**tensors) -> None:
    """The kernels take every pointer as 16-byte aligned (vector and TMA accesses): a tensor that
    starts elsewhere (a slice) is refused here, by name, before any launch."""
    for name, t in tensors.items():
        if t is not None and t.data_ptr() % 16:
            raise ValueError(f"{name} must start at a 16-byte aligned address, got {t.data_ptr():#x} (a slice? "
                             "pass a contiguous copy)")


def addr(tensor) -> int:
    """A tensor's device address for :func:`launch` (0 for an absent operand)."""
    return 0 if tensor is None else tensor.data_ptr()


class _ArgSlot:
    """One kernel argument's value: the DSL passes an argument to the compiled launcher as the
    address of its value, which is all ``__c_pointers__`` tells it."""

    __slots__ = ("value", "_pointers")

    def __init__(self, ctype):
        self.value = ctype(0)
        self._pointers = [ctypes.addressof(self.value)]

    def __c_pointers__(self):
        return self._pointers


_SLOT_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int32, "s": ctypes.c_void_p}
_launch_tls = threading.local()


def launch(compiled, signature: str, *values) -> None:
    """Run ``compiled`` on raw values, one per character of ``signature``: ``p`` a device address
    (:func:`addr`), ``i`` an int32, ``s`` a CUDA stream handle (``torch.cuda.Stream.cuda_stream``).

    Calling the compiled function with DSL objects (a ``make_ptr`` Pointer per address, ``Int32``,
    ``CUstream``) builds and marshals them in Python on every launch; with the placeholder
    arguments that were built on every cache hit too, a front-door call took 143-231 us of CPU on
    the H200 host, more than a decode-size GEMM takes on the GPU. Here each thread marshals a set of
    argument slots once per kernel (through the DSL's own ``generate_execution_args``), packs their
    addresses once (:func:`_direct_launcher`), and a launch only writes the values into them: the
    compiled launcher reads the same bytes (tests/test_launch.py compares them). Session 18 (H200,
    ``bench/bench_host.py``): 23-58 us of CPU per GEMM front-door call, all of it included."""
    entries = getattr(_launch_tls, "entries", None)
    if entries is None:
        entries = _launch_tls.entries = {}
    entry = entries.get(compiled)  # keyed by the object (identity): each kernel has one signature
    if entry is None:
        slots = [_ArgSlot(_SLOT_TYPES[c]) for c in signature]
        exe_args = compiled.generate_execution_args(*slots)[0]
        entry = entries[compiled] = (slots, exe_args, _direct_launcher(compiled, exe_args))
    slots, exe_args, direct = entry
    if len(values) != len(slots):
        raise TypeError(f"launch: {len(slots)} values for signature {signature!r}, got {len(values)}")
    for slot, v in zip(slots, values):
        slot.value.value = v
    if direct is None:
        compiled.run_compiled_program(exe_args)
    else:
        direct()


def _direct_launcher(compiled, exe_args):
    """A call of the compiled launcher's C entry on an argument array packed once (the executor is
    bound on the first launch, which loads the kernel's module, like ``run_compiled_program``). The array holds
    the slots' addresses, which never change, so ``run_compiled_program`` re-packing it on every
    launch (a ctypes conversion per argument) is skipped. None when this DSL build's executor lacks
    the attributes it reads (then :func:`launch` goes through ``run_compiled_program``)."""
    try:
        executor = compiled.to(None)  # the device-bound executor run_compiled_program would use
        packed = executor._get_invoke_packed_args_func(exe_args)
        capi, result = executor.capi_func, (executor.cuda_result if executor._has_cuda_result else None)
    except AttributeError as exc:  # a DSL version that renamed them
        warnings.warn(f"cute_moe: this DSL build's executor lacks {exc.name!r}; kernels launch through "
                      "run_compiled_program (slower per call)", stacklevel=3)
        return None
    packed = (ctypes.c_void_p * len(packed))(*packed)  # a copy: the executor reuses its buffer per thread

    def call():
        capi(packed)
        if result is not None and result.value != 0:
            raise RuntimeError(f"cute_moe: kernel launch failed with CUDA error {result.value}")

    call.executor = executor  # kept alive with the launcher: ``packed`` points into what it owns
    return call


def cache_dir():
    """The disk cache directory, or None when ``CUTE_MOE_CACHE_DIR=off``."""
    env = os.environ.get("CUTE_MOE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cute_moe"


def cache_info() -> dict:
    """Counts since import: kernels served from memory, loaded from disk, compiled."""
    return dict(_stats)


def clear_memory_cache() -> None:
    """Forget the in-process kernels (tests: the next call loads from disk or compiles)."""
    with _lock:
        _cache.clear()
        _front_door.clear()


_front_door: dict = {}


def front_door_kernel(key: tuple, get: Callable[[], Any]):
    """A front door's kernel by its raw per-call key (arguments as the front door has them), else
    ``get()`` (which normalizes them and goes through :func:`compile_kernel`): a decode step pays
    one dictionary lookup per launch, not the normalization and the lock."""
    hit = _front_door.get(key)
    if hit is None:
        hit = _front_door[key] = get()
    else:
        _stats["memory_hits"] += 1
    return hit


def _kernels_source_hash() -> str:
    if not _source_hash:
        import cutlass

        h = hashlib.sha256(getattr(cutlass, "__version__", "?").encode())
        root = Path(__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        _source_hash.append(h.hexdigest())
    return _source_hash[0]


def _disk_path(key: tuple, arch: str):
    d = cache_dir()
    if d is None:
        return None, None
    digest = hashlib.sha256(repr((key, arch, _kernels_source_hash())).encode()).hexdigest()[:24]
    name = "_".join(str(k) for k in key if not isinstance(k, tuple))[:60]
    return d / f"{name}-{arch}-{digest}.o", f"cute_moe_{digest}"  # prefix: the object's symbol namespace


def _load(path: Path, prefix: str):
    from cutlass.runtime import load_module

    try:
        return getattr(load_module(str(path)), prefix)
    except Exception as exc:  # truncated or foreign file: compile again and overwrite it
        warnings.warn(f"cute_moe: ignoring unreadable compile cache file {path}: {exc}", stacklevel=3)
        return None


def _store(path: Path, prefix: str, compiled) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(compiled.dump_to_object(prefix))
        os.replace(tmp, path)  # atomic: concurrent processes never read a partial file
    except Exception as exc:  # a read-only or full disk costs compile time, never correctness
        warnings.warn(f"cute_moe: could not write compile cache file {path}: {exc}", stacklevel=3)


def compile_kernel(key: tuple, make: Callable[[], Any], args: Callable[[], tuple], arch: str,
                   keep_ptx: bool = False):
    """Compile ``make()`` (a ``cute.jit`` callable) on the placeholder arguments ``args()`` for
    ``arch`` once per ``key``; cached in memory and (not with ``keep_ptx``, which needs the PTX
    text) on disk. Both callables run only on a miss: a hit is a dictionary lookup."""
    full_key = (key, arch, keep_ptx)
    with _lock:
        hit = _cache.get(full_key)
        if hit is not None:
            _stats["memory_hits"] += 1
            return hit
        path, prefix = (None, None) if keep_ptx else _disk_path(key, arch)
        compiled = _load(path, prefix) if path is not None and path.exists() else None
        if compiled is not None:
            _stats["disk_hits"] += 1
        else:
            opts = [cute.GPUArch(arch)]
            if keep_ptx:
                # KeepPTX also writes a .ptx file; keep it out of the working directory
                opts += [cute.KeepPTX, DumpDir(tempfile.gettempdir())]
            compiled = cute.compile[tuple(opts)](make(), *args())
            _stats["compiled"] += 1
            if path is not None:
                _store(path, prefix, compiled)
        _cache[full_key] = compiled
        return compiled
