"""Front door for MXFP8 quantization: the CuTe DSL kernel on CUDA, the reference elsewhere."""

from __future__ import annotations

from typing import Optional

import torch

from .._cuda import capability
from .layout import check_split_sizes, check_split_sizes_form
from .mxfp8 import MXFP8Tensor, quantize

# Reading split sizes on the host to validate them costs one device sync per call; training loops
# that trust their router can turn it off (``set_split_size_checks(False)``).
_CHECK_SPLIT_SIZES = [True]


def set_split_size_checks(enabled: bool) -> None:
    """Validate split-size values (>= 0, sum == T) on every call (default: on; costs a sync)."""
    _CHECK_SPLIT_SIZES[0] = bool(enabled)


def split_size_checks_enabled() -> bool:
    return _CHECK_SPLIT_SIZES[0]


def check_split_sizes_arg(split_sizes, total: int, device: torch.device, num_experts: Optional[int] = None, name: str = "split_sizes") -> torch.Tensor:
    """Shape/dtype checks always; value checks unless disabled. Returns the tensor on ``device``."""
    split_sizes = check_split_sizes_form(split_sizes, num_experts, name)
    if split_sizes.device.type == "cpu" or split_size_checks_enabled():
        check_split_sizes(split_sizes, total, num_experts, name)
    return split_sizes.to(device, non_blocking=True)


def exclusive_offsets(split_sizes: torch.Tensor) -> torch.Tensor:
    """int32 [E+1]: 0, s0, s0+s1, ... computed on the split sizes' device (no sync)."""
    return torch.nn.functional.pad(torch.cumsum(split_sizes, 0, dtype=torch.int32), (1, 0))  # two ops: per-call cost


def quantize_mxfp8(
    x: torch.Tensor,
    rowwise: bool = True,
    colwise: bool = False,
    split_sizes: Optional[torch.Tensor] = None,
    swizzled: bool = False,
) -> tuple[Optional[MXFP8Tensor], Optional[MXFP8Tensor]]:
    """Quantize a 2-D ``[T, C]`` tensor to MXFP8 rowwise and/or columnwise in one pass.

    On a CUDA device (compute capability >= 9.0) this runs the CuTe DSL kernel (bf16 input,
    C % 32 == 0, and C % 128 == 0 when ``swizzled``); elsewhere the reference. ``split_sizes``
    groups the tokens by expert: columnwise blocks never cross an expert boundary, and swizzled
    scales use the per-expert placement of :mod:`cute_moe.quant.layout`. Returns
    ``(rowwise_tensor or None, columnwise_tensor or None)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [T, C], got {type(x).__name__} with shape {tuple(getattr(x, 'shape', ()))}")
    if not (rowwise or colwise):
        raise ValueError("ask for at least one of rowwise=True / colwise=True")
    if split_sizes is not None:
        split_sizes = check_split_sizes_arg(split_sizes, x.shape[0], x.device)
    if x.device.type == "cuda":
        if x.dtype != torch.bfloat16:
            raise TypeError(f"x must be bfloat16 for the CUDA quantize kernel, got {x.dtype}")
        if not x.is_contiguous():
            raise ValueError("x must be contiguous (row-major)")
        if x.shape[1] % 32 or (swizzled and x.shape[1] % 128):
            need = 128 if swizzled else 32
            raise ValueError(f"x.shape[1] must be a multiple of {need} for the CUDA quantize kernel, got {x.shape[1]}")
        if capability(x.device)[0] < 9:
            raise RuntimeError("the CUDA quantize kernel needs compute capability >= 9.0; use cute_moe.quant.quantize on this device")
        from ..kernels.common.placement import MAX_EXPERTS

        if split_sizes is not None and split_sizes.numel() > MAX_EXPERTS:
            raise ValueError(f"split_sizes may have at most {MAX_EXPERTS} experts, got {split_sizes.numel()}")
    offsets = None if split_sizes is None else exclusive_offsets(split_sizes)
    return quantize_checked(x, rowwise, colwise, split_sizes, offsets, swizzled)


def quantize_checked(x, rowwise, colwise, split_sizes, offsets, swizzled=False, row_dequant=False):
    """:func:`quantize_mxfp8` on inputs already validated, with ``offsets`` (int32 [E+1] on
    x's device, or None) already computed: the per-call path of the autograd functions, which
    check and group their inputs once per call, not once per quantized operand.
    ``row_dequant`` (CUDA): the rowwise result is the bf16 tensor the SM90 GEMM takes as
    ``a_dequant`` (exact dequantization of the rowwise MXFP8 values, K-permuted), not an MXFP8Tensor."""
    if x.device.type != "cuda":
        if row_dequant:
            raise ValueError("row_dequant is produced by the CUDA quantize kernel only")
        sizes_cpu = None if split_sizes is None else split_sizes.cpu()
        row = quantize(x, -1, sizes_cpu) if rowwise else None
        col = quantize(x, 0, sizes_cpu) if colwise else None
        return row, col
    from ..kernels.quantize import quantize_mxfp8_cuda

    q_row, s_row, q_col, s_col = quantize_mxfp8_cuda(x, rowwise, colwise, offsets, swizzled, row_dequant)
    key = "scale_swizzled" if swizzled else "scale"
    if row_dequant:
        row = q_row
    else:
        row = MXFP8Tensor(q_row, -1, split_sizes=split_sizes, **{key: s_row}) if rowwise else None
    col = MXFP8Tensor(q_col, 0, split_sizes=split_sizes, **{key: s_col}) if colwise else None
    return row, col
