"""Scale layouts (REFERENCE.md §2) and the gate/up interleave (§3).

Swizzled layout ("1D block scaling factors layout"): a scale matrix with R rows (the M or N index
of the GEMM) and C scale columns (blocks along the contraction), padded to R' = ceil(R/128)*128 and
C' = ceil(C/4)*4, stores (r, c) at byte
``((r // 128) * (C' // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)``.
Padding bytes hold ``SCALE_PAD_CODE`` (127, i.e. 2**0: harmless if a kernel ever reads them).

Grouped placement (tokens sorted by expert, any split sizes, no host sync needed): expert e, whose
tokens start at ``offset[e]``, owns 128-token tiles starting at tile ``offset[e] // 128 + e``
(the quack varlen scheme). A buffer for T tokens and E experts holds ``ceil(T/128) + E - 1``
tiles; each expert's tiles are disjoint from every other expert's (tile starts grow by >= 1 per
expert and by >= the previous expert's tile count). This one rule serves both orientations:
- rowwise scales of grouped tokens (tokens are the GEMM's M rows): token ``offset[e] + i`` sits at
  placed row ``128 * (offset[e] // 128 + e) + i`` before swizzling;
- columnwise scales (tokens are the contraction, 4 blocks of 32 per tile): block j of expert e sits
  at placed block ``4 * (offset[e] // 128 + e) + j``. The plain columnwise grouped scale tensor
  ``[grouped_col_blocks(T, E), C]`` already uses this placement, so swizzling it is the dense
  swizzle of its transpose.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .mxfp8 import SCALE_PAD_CODE

TILE = 128


def check_split_sizes_form(split_sizes, num_experts: Optional[int] = None, name: str = "split_sizes") -> torch.Tensor:
    """Type, dtype and shape of split sizes (reads no values: no sync). Lists become tensors."""
    if isinstance(split_sizes, (list, tuple)):
        split_sizes = torch.tensor(split_sizes, dtype=torch.int64)
    if not isinstance(split_sizes, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor (or list), got {type(split_sizes).__name__}")
    if split_sizes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {split_sizes.dtype}")
    if split_sizes.dim() != 1 or split_sizes.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(split_sizes.shape)}")
    if num_experts is not None and split_sizes.numel() != num_experts:
        raise ValueError(f"{name} must have one entry per expert ({num_experts}), got {split_sizes.numel()}")
    return split_sizes


def check_split_sizes(split_sizes, total: int, num_experts: Optional[int] = None, name: str = "split_sizes") -> torch.Tensor:
    """Validate split sizes on the host (this reads their values: one sync for a CUDA tensor);
    returns them as a CPU int64 tensor."""
    split_sizes = check_split_sizes_form(split_sizes, num_experts, name)
    host = split_sizes.detach().to("cpu", torch.int64)
    if bool((host < 0).any()):
        raise ValueError(f"{name} must be >= 0, got {host.tolist()}")
    if int(host.sum()) != total:
        raise ValueError(f"{name} must sum to the number of tokens {total}, got sum {int(host.sum())}")
    return host


def grouped_tile_start(offset: int, expert: int) -> int:
    return offset // TILE + expert


def grouped_tiles(total: int, num_experts: int) -> int:
    """128-token tiles a grouped buffer for ``total`` tokens over ``num_experts`` needs."""
    return -(-total // TILE) + num_experts - 1


def grouped_block_start(offset: int, expert: int) -> int:
    """Index of expert e's first 32-token block in a grouped columnwise scale buffer."""
    return 4 * grouped_tile_start(offset, expert)


def grouped_col_blocks(total: int, num_experts: int) -> int:
    return 4 * grouped_tiles(total, num_experts)


def grouped_rows(total: int, num_experts: int) -> int:
    return TILE * grouped_tiles(total, num_experts)


def _offsets(split_sizes: Sequence[int]) -> list[int]:
    off, out = 0, []
    for n in split_sizes:
        out.append(off)
        off += n
    return out


def swizzle_offset(r, c, cols_padded: int):
    """Byte offset of (r, c) in the swizzled layout (works on ints and integer tensors)."""
    return ((r // 128) * (cols_padded // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    return -(-rows // 128) * 128, -(-cols // 4) * 4


def _swizzle_dense(scale: torch.Tensor) -> torch.Tensor:
    r, c = scale.shape
    rp, cp = swizzled_shape(r, c)
    padded = torch.full((rp, cp), SCALE_PAD_CODE, dtype=torch.uint8, device=scale.device)
    padded[:r, :c] = scale
    return padded.view(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4).reshape(rp, cp)


def _unswizzle_dense(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    rp, cp = swizzled_shape(rows, cols)
    flat = swizzled.reshape(-1)
    if flat.numel() != rp * cp:
        raise ValueError(f"swizzled scales for ({rows}, {cols}) must hold {rp * cp} bytes, got {flat.numel()}")
    plain = flat.view(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(rp, cp)
    return plain[:rows, :cols]


def _place_rows(scale: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    placed = torch.full((grouped_rows(scale.shape[0], len(sizes)), scale.shape[1]), SCALE_PAD_CODE, dtype=torch.uint8, device=scale.device)
    for e, (off, n) in enumerate(zip(_offsets(sizes), sizes)):
        start = TILE * grouped_tile_start(off, e)
        placed[start : start + n] = scale[off : off + n]
    return placed


def swizzle_scales(scale: torch.Tensor, split_sizes=None) -> torch.Tensor:
    """Plain ``[R, C]`` E8M0 codes (R = the GEMM's M/N index, C = blocks along K) -> swizzled.

    Returns a ``[R', C']`` uint8 tensor whose memory is in swizzled order. With ``split_sizes``
    the R rows are grouped tokens and are first placed per expert (module docstring), so
    R' = 128 * grouped_tiles(R, E).
    """
    if scale.dtype != torch.uint8 or scale.dim() != 2:
        raise ValueError(f"scale must be a 2-D uint8 tensor, got {scale.dtype} with shape {tuple(scale.shape)}")
    if split_sizes is not None:
        scale = _place_rows(scale, check_split_sizes(split_sizes, scale.shape[0]).tolist())
    return _swizzle_dense(scale)


def unswizzle_scales(swizzled: torch.Tensor, rows: int, cols: int, split_sizes=None) -> torch.Tensor:
    """Inverse of :func:`swizzle_scales`: back to plain ``[rows, cols]``."""
    if split_sizes is None:
        return _unswizzle_dense(swizzled, rows, cols)
    sizes = check_split_sizes(split_sizes, rows).tolist()
    placed = _unswizzle_dense(swizzled, grouped_rows(rows, len(sizes)), cols)
    out = torch.empty((rows, cols), dtype=torch.uint8, device=swizzled.device)
    for e, (off, n) in enumerate(zip(_offsets(sizes), sizes)):
        start = TILE * grouped_tile_start(off, e)
        out[off : off + n] = placed[start : start + n]
    return out


def swizzled_scales_of(t) -> torch.Tensor:
    """The GEMM-operand (swizzled) scales of an :class:`MXFP8Tensor`.

    Rowwise: rows of the tensor are the M/N index. Columnwise: the columns are (the tensor is the
    transposed operand of a wgrad GEMM), so the plain scale is transposed first.
    """
    if t.axis == 0:
        return _swizzle_dense(t.scale.t())
    return swizzle_scales(t.scale.reshape(-1, t.scale.shape[-1]))


# --- gate/up interleave (REFERENCE §3) ---------------------------------------------------------

def interleave_gate_up(w_gate: torch.Tensor, w_up: torch.Tensor, block: int = 32) -> torch.Tensor:
    """``[..., H, K]`` gate and up weights -> ``[..., 2H, K]`` with 32-row blocks alternating
    gate, up, gate, up ... (rows 64k..64k+31 = gate 32k..32k+31, then the matching up rows)."""
    if w_gate.shape != w_up.shape:
        raise ValueError(f"w_gate and w_up must have the same shape, got {tuple(w_gate.shape)} and {tuple(w_up.shape)}")
    if w_gate.dim() < 2 or w_gate.shape[-2] % block:
        raise ValueError(f"w_gate must be [..., H, K] with H divisible by block={block}, got {tuple(w_gate.shape)}")
    *lead, h, k = w_gate.shape
    g = w_gate.reshape(*lead, h // block, 1, block, k)
    u = w_up.reshape(*lead, h // block, 1, block, k)
    return torch.cat([g, u], dim=-3).reshape(*lead, 2 * h, k)


def deinterleave_gate_up(w: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`interleave_gate_up`: ``[..., 2H, K]`` -> (gate ``[..., H, K]``, up)."""
    if w.dim() < 2 or w.shape[-2] % (2 * block):
        raise ValueError(f"w must be [..., 2H, K] with 2H divisible by {2 * block}, got {tuple(w.shape)}")
    *lead, h2, k = w.shape
    v = w.reshape(*lead, h2 // (2 * block), 2, block, k)
    return v[..., 0, :, :].reshape(*lead, h2 // 2, k), v[..., 1, :, :].reshape(*lead, h2 // 2, k)
