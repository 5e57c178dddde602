"""FP8 recipes and the ``autocast`` context that selects one.

The active recipe lives in a :class:`contextvars.ContextVar`: each thread (and asyncio task) sees
its own, contexts nest, and leaving a context restores exactly what was there before.
``torch.compile``: cute_moe's autograd functions read the recipe when they are called, in Python;
dynamo treats them as opaque calls (graph break), so enter ``autocast`` around the compiled region
or inside it — both run the same path as eager (tested with the eager backend).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class MXFP8BlockScaling:
    """OCP MXFP8 (REFERENCE §1): E4M3 data, E8M0 scales, one scale per 32 elements, RCEIL.

    ``fused=False`` keeps eligible calls on the unfused MXFP8 path (same numerics; for A/B checks).
    ``cache_weights=True``: keep each weight's quantized forms between calls while the weight is
    unchanged (decode, inference, gradient accumulation); writes the version counter does not see
    (``w.data``, collectives, FSDP all-gathers) need :func:`cute_moe.clear_weight_cache` after them
    (:mod:`cute_moe.quant.weight_cache`)."""

    data_format: str = "e4m3"
    scale_format: str = "e8m0"
    block_size: int = 32
    scale_rule: str = "rceil"
    fused: bool = True
    cache_weights: bool = False

    def __post_init__(self):
        if not isinstance(self.cache_weights, bool):
            raise TypeError(f"cache_weights must be True or False, got {self.cache_weights!r}")
        if (self.data_format, self.scale_format, self.block_size, self.scale_rule) != ("e4m3", "e8m0", 32, "rceil"):
            raise ValueError(
                "MXFP8BlockScaling supports data_format='e4m3', scale_format='e8m0', block_size=32, scale_rule='rceil' "
                f"only, got {self.data_format!r}, {self.scale_format!r}, {self.block_size}, {self.scale_rule!r}"
            )


_RECIPE: contextvars.ContextVar[Optional[MXFP8BlockScaling]] = contextvars.ContextVar("cute_moe_recipe", default=None)


@contextlib.contextmanager
def autocast(enabled: bool = True, recipe: Optional[MXFP8BlockScaling] = None) -> Iterator[None]:
    """Run cute_moe layers under ``recipe`` (default :class:`MXFP8BlockScaling`); ``enabled=False``
    switches FP8 off inside (bf16 path), also when nested in an enabled context."""
    if recipe is not None and not isinstance(recipe, MXFP8BlockScaling):
        raise TypeError(f"recipe must be an MXFP8BlockScaling, got {type(recipe).__name__}")
    token = _RECIPE.set((recipe or MXFP8BlockScaling()) if enabled else None)
    try:
        yield
    finally:
        _RECIPE.reset(token)


def get_recipe() -> Optional[MXFP8BlockScaling]:
    """The recipe in force here, or None (no FP8)."""
    return _RECIPE.get()
