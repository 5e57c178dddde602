"""MXFP8 formats, scale layouts and quantization (reference in plain torch; kernels in
:mod:`cute_moe.kernels.quantize`, chosen by :func:`quantize_mxfp8`)."""

from .layout import (
    check_split_sizes,
    deinterleave_gate_up,
    grouped_block_start,
    grouped_col_blocks,
    grouped_rows,
    grouped_tile_start,
    grouped_tiles,
    interleave_gate_up,
    swizzle_offset,
    swizzle_scales,
    swizzled_scales_of,
    unswizzle_scales,
)
from .api import quantize_mxfp8, set_split_size_checks
from .mxfp8 import (
    BLOCK,
    E4M3_MAX,
    SCALE_PAD_CODE,
    MXFP8Tensor,
    dequantize,
    dequantize_device,
    e8m0_to_f32,
    e8m0_from_amax,
    e8m0_to_float,
    quantize,
)

__all__ = [
    "BLOCK", "E4M3_MAX", "SCALE_PAD_CODE", "MXFP8Tensor", "quantize", "dequantize", "dequantize_device", "e8m0_to_f32", "quantize_mxfp8", "e8m0_from_amax",
    "e8m0_to_float", "swizzle_scales", "unswizzle_scales", "swizzle_offset", "swizzled_scales_of",
    "interleave_gate_up", "deinterleave_gate_up", "check_split_sizes", "grouped_tile_start",
    "grouped_tiles", "grouped_block_start", "grouped_col_blocks", "grouped_rows", "set_split_size_checks",
]
