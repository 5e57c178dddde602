"""Compile every registered CuTe DSL kernel for sm_90a / sm_100a without a GPU; check its PTX."""

import pytest

from cute_moe.kernels import registry

pytestmark = pytest.mark.compile

CONFIGS = [(cfg, arch) for cfg in registry() for arch in cfg.archs]


@pytest.mark.parametrize("cfg,arch", CONFIGS, ids=[f"{c.name}@{a}" for c, a in CONFIGS])
def test_kernel_compiles_with_intended_ptx(cfg, arch):
    compiled = cfg.compile(arch)
    ptx = compiled.__ptx__
    assert ptx, "no PTX kept"
    assert f".target {arch}" in ptx
    for needle in cfg.ptx_must_contain:
        assert needle in ptx, f"{cfg.name}@{arch}: PTX lacks {needle!r}"
    for needle in cfg.ptx_must_not_contain:
        assert needle not in ptx, f"{cfg.name}@{arch}: PTX has {needle!r}"


def test_registry_covers_every_kernel_module():
    names = {c.name.split("-")[0] for c in registry()}
    assert {"mxfp8_quantize", "grouped_gemm_sm90", "mx_grouped_gemm_sm90"} <= names
