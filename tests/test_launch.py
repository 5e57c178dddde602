"""``compile.launch`` hands the compiled launcher the same argument bytes as calling the compiled
function with DSL objects (``make_ptr`` Pointers, ``Int32``, ``CUstream``), for every front door's
kernel signature. Runs without a GPU: the DSL marshals host-side; both paths' argument pointers are
read back and compared."""

import ctypes
import random
import types

import cuda.bindings.driver as cuda
import cutlass.cute as cute
import pytest
from cutlass import Int32, Uint8
from cutlass.cute.runtime import make_ptr

from cute_moe.kernels.compile import _SLOT_TYPES, _ArgSlot, check_aligned, launch
from cute_moe.kernels.quantize import compiled_quantize_kernel
from cute_moe.kernels.sm90.grouped_gemm import compiled_grouped_gemm_kernel
from cute_moe.kernels.sm90.mx_grouped_gemm import compiled_mx_grouped_gemm_kernel

pytestmark = pytest.mark.compile

MX = "p" * 13 + "iiiiii" + "s"
KERNELS = {
    "mx_swap_fc1": (lambda: compiled_mx_grouped_gemm_kernel(512, 256, (True, True, False, False, True, True, True, True),
                                                            "sm_90a"), MX),
    "mx_dense_fc2": (lambda: compiled_mx_grouped_gemm_kernel(256, 256, (False,) * 6 + (True, False, True), "sm_90a"),
                     MX),
    "quantize": (lambda: compiled_quantize_kernel(256, True, True, True, True, "sm_90a"), "pppppp" + "iiii" + "s"),
    "grouped_gemm": (lambda: compiled_grouped_gemm_kernel(256, 128, "sm_90a"), "pppp" + "iii" + "s"),
}


def _read(address, kind):
    address = address if isinstance(address, int) else address.value
    size = 4 if kind == "i" else 8
    return int.from_bytes(ctypes.string_at(address, size), "little", signed=kind == "i")


@pytest.mark.parametrize("name", list(KERNELS))
def test_launch_slots_marshal_like_dsl_objects(name):
    make, signature = KERNELS[name]
    kern = make()
    rng = random.Random(name)
    values = [rng.randrange(1, 2**40) * 16 if c == "p" else rng.randrange(-2**31, 2**31) if c == "i"
              else rng.randrange(1, 2**47) for c in signature]
    dsl_args = [make_ptr(Uint8, v, cute.AddressSpace.gmem, assumed_align=16) if c == "p" else
                Int32(v) if c == "i" else cuda.CUstream(v) for c, v in zip(signature, values)]
    want, _ = kern.generate_execution_args(*dsl_args)
    slots = [_ArgSlot(_SLOT_TYPES[c]) for c in signature]
    got, _ = kern.generate_execution_args(*slots)
    for slot, v in zip(slots, values):
        slot.value.value = v
    assert len(want) == len(got) == len(signature)
    assert [_read(p, c) for p, c in zip(want, signature)] == values
    assert [_read(p, c) for p, c in zip(got, signature)] == values


def test_check_aligned_names_the_tensor():
    import torch

    buf = torch.zeros(64, dtype=torch.bfloat16)
    check_aligned(x=buf, offsets=None)
    with pytest.raises(ValueError, match="probs must start at a 16-byte aligned address"):
        check_aligned(x=buf, probs=buf[1:])


def test_launch_writes_values_into_reused_slots(monkeypatch):
    """``launch`` itself, down to the launcher's C entry: the DSL's own executor packs the argument
    addresses once; every launch hands the same array, holding that call's values, and a CUDA error
    the launcher reports is raised."""
    from cutlass.base_dsl.jit_executor import JitExecutor

    from cute_moe.kernels import compile as c

    make, signature = KERNELS["quantize"]
    kern = make()
    # this thread's launch entries, fresh: a GPU test may already have bound this kernel for real
    monkeypatch.setattr(c._launch_tls, "entries", {}, raising=False)
    calls, error = [], [0]

    def capi(packed):  # stands in for the compiled launcher (binding the real one needs a GPU)
        calls.append((packed, list(packed)))
        ctypes.c_int32.from_address(packed[len(signature)]).value = error[0]  # the executor's result slot

    capi.restype = ctypes.c_int32
    executor = JitExecutor(types.SimpleNamespace(capi_func=capi), None, False)
    monkeypatch.setattr(kern, "to", lambda device=None: executor)
    for base in (16, 4096):
        values = [base * (i + 1) for i in range(6)] + [7, -8, 9, 10] + [base + 1]
        launch(kern, signature, *values)
        assert [_read(p, c) for p, c in zip(calls[-1][1], signature)] == values
    assert calls[0][0] is calls[1][0] and len(calls[0][1]) == len(signature) + 1  # one array, + result slot
    error[0] = 700
    with pytest.raises(RuntimeError, match="CUDA error 700"):
        launch(kern, signature, *values)
