"""Exact MXFP8 MoE math on any device: the oracle the tests hold every path to, and the CPU path.

Same formulas as :mod:`cute_moe.functional` (one implementation), run with reference quantization
and per-expert matmuls in ``dtype`` (fp64 for the oracle). ``act_dtype`` rounds the stored
activations (z, h, dz) the way a bf16 run does, so that an oracle for bf16 inputs differs from a
path only by accumulation order.
"""

from __future__ import annotations

from typing import Optional

import torch

from .functional import _GroupedLinearFn, _GroupedMLPFn, _RefOps
from .quant.api import check_split_sizes_arg


def grouped_mlp_reference(x, w1, w2, split_sizes, probs=None, mx: bool = True, dtype=torch.float64, act_dtype: Optional[torch.dtype] = None):
    """Differentiable reference grouped MLP; inputs are cast to ``dtype`` (leaves keep grads)."""
    sizes = check_split_sizes_arg(split_sizes, x.shape[0], torch.device("cpu"), w1.shape[0])
    return _GroupedMLPFn.apply(x, w1, w2, probs, sizes, _RefOps(mx, dtype, act_dtype))


def grouped_linear_reference(x, weight, split_sizes, mx: bool = True, dtype=torch.float64):
    sizes = check_split_sizes_arg(split_sizes, x.shape[0], torch.device("cpu"), weight.shape[0])
    return _GroupedLinearFn.apply(x, weight, sizes, _RefOps(mx, dtype))
