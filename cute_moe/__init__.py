"""cute_moe: exact MXFP8 Mixture-of-Experts MLP training kernels in CuTe DSL (Hopper, Blackwell).

Front door: ``grouped_mlp`` / ``grouped_linear`` (autograd), ``GroupedMLP`` / ``GroupedLinear``
(modules), ``autocast(MXFP8BlockScaling())`` to train in MXFP8, ``explain`` to see which path a
call takes. Formats and layouts: :mod:`cute_moe.quant`.
"""

from .dispatch import explain
from .functional import grouped_linear, grouped_mlp
from .modules import GroupedLinear, GroupedMLP
from .quant import deinterleave_gate_up, interleave_gate_up, set_split_size_checks
from .quant.weight_cache import clear_weight_cache, weight_cache_info
from .recipe import MXFP8BlockScaling, autocast, get_recipe

__all__ = [
    "grouped_mlp",
    "grouped_linear",
    "GroupedMLP",
    "GroupedLinear",
    "autocast",
    "MXFP8BlockScaling",
    "get_recipe",
    "interleave_gate_up",
    "deinterleave_gate_up",
    "explain",
    "set_split_size_checks",
    "clear_weight_cache",
    "weight_cache_info",
]
__version__ = "0.1.0"
