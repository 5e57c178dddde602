"""CuTe DSL kernels and the registry of representative configurations.

Every kernel the package launches is listed in :data:`REGISTRY` with the configurations it is
compiled for and the PTX it must contain; ``tests/test_compile.py`` (marker ``compile``) compiles
each entry for each of its architectures on a CPU-only machine and checks the PTX, so a kernel that
does not compile, or lost its intended instructions, cannot land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class KernelConfig:
    name: str
    compile: Callable[[str], object]  # arch -> compiled kernel (with PTX kept)
    archs: tuple = ("sm_90a", "sm_100a")
    ptx_must_contain: tuple = ()
    ptx_must_not_contain: tuple = field(default=(".ftz",))


def _quantize_configs():
    from .quantize import compiled_quantize_kernel

    must = ("cvt.rn.satfinite.e4m3x2.f32", "ld.global.nc", "max.u16x2", "mul.rn.f32")
    cfgs = [
        # (cols, rowwise, colwise, grouped, swizzled, cols_per_lane, reload)
        (7168, True, False, False, False, 8, False),
        (7168, False, True, False, False, 8, False),
        (7168, True, True, False, True, 8, False),
        (2048, True, True, True, True, 8, False),
        (4096, True, True, True, False, 4, True),
        (96, True, True, False, False, 4, False),
    ]
    out = []
    for c in cfgs:
        extra = ("vote.sync.ballot",) if c[3] else ()
        out.append(
            KernelConfig(
                name="mxfp8_quantize" + "".join(f"-{v}" for v in c),
                compile=lambda arch, c=c: compiled_quantize_kernel(*c[:5], arch, keep_ptx=True, cols_per_lane=c[5], reload=c[6]),
                ptx_must_contain=must + extra,
            )
        )
    return out


def registry() -> list:
    """All kernel configurations CI compiles (built lazily: importing the DSL is slow)."""
    return _quantize_configs()
