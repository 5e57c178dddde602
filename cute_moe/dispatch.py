"""One place that decides which implementation a call runs (REFERENCE §5), and says why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._cuda import capability
from .recipe import MXFP8BlockScaling, get_recipe

FUSED_SM90 = "fused_sm90"
FUSED_SM100 = "fused_sm100"
MXFP8_UNFUSED = "mxfp8_unfused"
BF16 = "bf16"
REFERENCE = "reference"

#: fused kernels that exist in this build (SM90 forward; SM100 comes later)
AVAILABLE_FUSED: frozenset = frozenset({FUSED_SM90})


@dataclass(frozen=True)
class Decision:
    path: str
    reason: str
    mxfp8: bool

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _grouped_mm_ok(dims) -> bool:
    # torch._grouped_mm needs 16-byte aligned rows in bf16
    return hasattr(torch, "_grouped_mm") and all(d % 8 == 0 for d in dims)


def decide(
    device: torch.device,
    dtype: torch.dtype,
    k: int,
    n_out: int,
    hidden: Optional[int] = None,
    recipe: Optional[MXFP8BlockScaling] = None,
    use_recipe_context: bool = True,
) -> Decision:
    """Path for a grouped GEMM (``hidden`` None: ``[T, k] x [E, n_out, k]``) or a grouped MLP
    (``k`` model dim, ``hidden`` = H, FC1 out 2H)."""
    recipe = get_recipe() if (recipe is None and use_recipe_context) else recipe
    mx = recipe is not None
    device = torch.device(device)
    dims = (k, n_out) if hidden is None else (k, 2 * hidden)
    if device.type != "cuda":
        return Decision(REFERENCE, f"{device.type} device: exact reference math in fp32" + (" with MXFP8 quantization" if mx else ""), mx)
    cap = capability(device)
    if not mx:
        if dtype == torch.bfloat16 and cap[0] >= 9 and _grouped_mm_ok(dims):
            return Decision(BF16, "no FP8 recipe active: bf16 torch._grouped_mm", False)
        return Decision(REFERENCE, f"no FP8 recipe; bf16 grouped GEMM needs bf16 inputs, sm90+ and dims % 8 == 0 (dtype {dtype}, cc {cap}, dims {dims})", False)
    fused_ok = (
        dtype == torch.bfloat16
        and hidden is not None
        and k % 256 == 0
        and hidden % 256 == 0
    )
    arch_path = FUSED_SM90 if cap == (9, 0) else FUSED_SM100 if cap[0] == 10 else None
    if fused_ok and arch_path in AVAILABLE_FUSED and recipe.fused:
        what = "CuTe DSL fused MXFP8 FC1+SwiGLU+MXFP8 h and FC2 grouped GEMMs (forward)" if arch_path == FUSED_SM90 else "fused kernels"
        return Decision(arch_path, f"MXFP8 recipe, K={k} and H={hidden} divisible by 256, bf16, cc {cap}: {what}", True)
    if fused_ok and arch_path is not None and not recipe.fused:
        why = "the recipe asks for the unfused path (fused=False)"
    elif fused_ok and arch_path is not None:
        why = f"fused {arch_path} kernels are not in this build yet"
    elif hidden is None:
        why = "a single grouped GEMM has no fused SwiGLU kernel"
    elif arch_path is None:
        why = f"no fused kernels for compute capability {cap}"
    elif dtype != torch.bfloat16:
        why = f"fused kernels take bf16 activations, got {dtype}"
    else:
        why = f"fused kernels need K % 256 == 0 and H % 256 == 0, got K={k}, H={hidden}"
    if cap[0] >= 9 and dtype == torch.bfloat16 and all(d % 32 == 0 for d in dims) and _grouped_mm_ok(dims):
        return Decision(MXFP8_UNFUSED, f"MXFP8 recipe; {why}: CuTe DSL quantize kernels + bf16 grouped GEMM on dequantized operands", True)
    return Decision(REFERENCE, f"MXFP8 recipe; {why}, and the unfused path needs bf16, sm90+ and dims % 32 == 0: reference math on the GPU", True)


def explain(x: torch.Tensor, *weights: torch.Tensor) -> str:
    """Which path ``grouped_linear(x, w, ...)`` / ``grouped_mlp(x, w1, w2, ...)`` would take here
    under the current recipe, and why (also a module: ``explain(x, module)``)."""
    from .modules import GroupedLinear, GroupedMLP

    if len(weights) == 1 and isinstance(weights[0], GroupedMLP):
        weights = (weights[0].w1, weights[0].w2)
    elif len(weights) == 1 and isinstance(weights[0], GroupedLinear):
        weights = (weights[0].weight,)
    if len(weights) == 1:
        d = decide(x.device, x.dtype, x.shape[-1], weights[0].shape[1])
    elif len(weights) == 2:
        d = decide(x.device, x.dtype, x.shape[-1], weights[1].shape[1], hidden=weights[0].shape[1] // 2)
    else:
        raise TypeError("explain(x, w) for grouped_linear, explain(x, w1, w2) for grouped_mlp, or explain(x, module)")
    if d.path == FUSED_SM90 and len(weights) == 2:
        from .functional import _FusedSm90Ops

        t, e = x.shape[0], weights[0].shape[0]
        form = ("their exact bf16 dequantization (dense mainloop)" if _FusedSm90Ops.dense_weights(t, e)
                else "MXFP8, dequantized in registers (swapped mainloop)")
        return (f"{d}; {t} tokens over {e} experts (bf16 weights from "
                f"{_FusedSm90Ops.DENSE_MIN_TOKENS_PER_EXPERT} per expert): weights as {form}")
    return str(d)
