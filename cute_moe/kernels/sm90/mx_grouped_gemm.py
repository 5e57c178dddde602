"""CuTe DSL MXFP8 grouped GEMM for Hopper, with the FC1 (SwiGLU + MXFP8 out) and FC2 (bf16 out)
epilogues: ``acc[t] = dq(a_row)[t] @ dq(b_row)[e(t)].T`` for tokens sorted by expert.

Hopper has no block-scaled MMA (REFERENCE §6), so operands travel as e4m3 bytes (half of bf16's
traffic) and are dequantized exactly to bf16 on chip, then multiplied by BF16 WGMMA with fp32
accumulation. One kernel per static configuration (N, K, epilogue flags); T, E and the split sizes
(``offsets``, E+1 int32 on the device) are runtime values: routing changes never recompile.

How the work is laid out, and why:
- A CTA owns one *unit* of placed 128-token tiles of one expert (REFERENCE §2 grouped placement,
  :func:`placed_unit`) by a tile of output features, in one of three geometries (``set_geometry``;
  the launcher picks, :func:`swapped_geometry`):
  - training (from 160 tokens per expert on average, the measured crossover): units of two
    tiles, 256 tokens (starting at ``offsets[e] // 256 + e``), by 128 features: each warpgroup
    owns one 64-row block of weights for all 256 tokens, so a weight element converted once
    serves 256 tokens (session 12: the conversion is what these kernels issue most; at 128 tokens
    per conversion qwen3's FC1 GEMM took ~10% longer);
  - decode: one tile, 128 tokens, by 256 features (two blocks per warpgroup): with a few tokens per
    expert the kernel streams weights, and twice the weight bytes per stage and per CTA keep that
    stream at HBM speed (the training geometry read 25% fewer GB/s there);
  - narrow decode: the same by 128 features, twice the CTAs, when the decode CTAs would leave a
    short last round on the SMs (pro B=1: 144 CTAs on 132 SMs, see DECODE_NARROW_GEOMETRY).
  The grid is known on the host without reading ``offsets``: training, (N / features, ceil(T /
  unit) + E - 1), one CTA per placed unit, gap units included (an empty expert's gap unit writes
  its padding scale codes; another expert's gap tile gets them from the unit before it, so its gap
  unit's CTA only looks up its expert);
  decode, one CTA per (N tile, *filled* tile slot), ceil(T / 128) + min(E, T) - 1 slots found by a
  warp scan over ``offsets`` (:func:`filled_tile`), then FC1's gap-code CTAs, one per 32 experts
  per N tile (:meth:`write_gap_tiles`): a decode step touches 6 of 256-384 experts, and one CTA
  per placed tile launched 4096-9216 CTAs for 96-144 that read weights (session 14: B=1 FC1 took
  twice as long). On bf16 tokens the tiles of a short last round of CTAs are split along K
  (:func:`tail_splits`, :meth:`reduce_splits`: fp32 partials, the last split adds them in split
  order and runs the epilogue): pro B=1's 144 FC1 tiles on 132 SMs took two rounds for 1.09 of
  work (session 19: 149 -> 109 us). Gap units and empty experts never touch ``b``. CTAs take
  their (N tile, unit) in bands of 8 N tiles (``parts.banded_tile``), so that the CTAs in flight
  share weight tiles in L2.
- TMA loads the unit's token rows (a box of up to 256 rows from the unit's first token; TMA boxes
  start at any row) and the e4m3 weight rows of ``b_row[e]``, 64 k per stage, into a
  ``PipelineTmaAsync`` ring (5 stages in training, 6 in decode), the weights plain row-major
  (64-byte rows: a quarter-warp's 16-byte reads cover 128 contiguous bytes, no bank conflicts).
- The WGMMA runs transposed ("swap AB"): the weights are its M side, taken from *registers* (RS),
  the tokens its N side, from shared memory. A thread reads 16 contiguous e4m3 bytes of each of its
  weight rows and dequantizes them straight into its A fragment: the weights never round-trip
  through shared memory as bf16. The 16 bytes are the thread's A-fragment k slots of the four k16
  steps; the tokens' bf16 copy is in the same k order (a permutation of K inside each 64-wide
  k-tile: the dot products are unchanged). Dequantization: e4m3 -> f16 (hardware) -> f32 -> times
  2^(E-127) -> bf16, exact. The rows' E8M0 codes come from global memory, on the bf16-token path as
  one 32-bit word per row per k-tile pair, loaded two pairs ahead (their L2 round trip stalled the
  decode mainloop when loaded one k-tile ahead, session 16).
- WGMMA's N follows the unit's tokens: 256 (more than 128), 128, or 32 (decode: at most 32 tokens;
  the tensor cores then stay far below the weight stream). With ``a_dequant`` the narrower units
  also load only a 128- or 32-row token box.
- Tokens, two ways (bit-identical results):
  - MXFP8 ``a`` (``mainloop_and_store``): all 256 threads convert the stage's valid token rows into
    one of three bf16 buffers in WGMMA's 128-byte-swizzled K-major layout, then one CTA barrier.
    Three buffers let one barrier per k-tile suffice: buffer kt % 3 was last read by WGMMA kt-3,
    retired before the previous barrier.
  - ``a_dequant`` (``mainloop_bf16_tokens``, what the fused forward uses): the tokens' exact bf16
    values, already K-permuted by the pass that quantized them, come by TMA straight into the
    swizzled layout: no token conversion, no CTA barrier; a stage is released once the WGMMAs of
    its k-tile retire, and k-tiles alternate two register sets of A fragments.
- ``b_dequant`` too ("dense"; many tokens per expert): both operands as exact bf16, a plain bf16
  mainloop in a persistent, warp-specialized kernel of its own (:mod:`.dense_grouped_gemm`, a
  subclass sharing the epilogue pieces).
- Epilogue (swapped forms): accumulators -> bf16 -> shared memory by transposing stmatrix into a
  [token][feature] tile (rows padded by 16 bytes: no bank conflicts), then 16-byte stores of the
  tile's rows that belong to the expert (a TMA store would overwrite the next expert's rows). That
  is ``y`` (FC2) or ``z`` (FC1).
- FC1 only: from the staged bf16 ``z``, ``h = p * silu(g) * u`` (REFERENCE §3 interleave: each
  64-column gate/up pair of the tile gives 32 columns of ``h``), rounded to bf16 exactly like the
  unfused path (SwiGLU of the stored bf16 ``z`` in fp32; SiLU by ``activation.silu_exact``, the IEEE
  expression without a branch per division, its rare ``div.rn`` fallback run once per thread after
  all of its row groups; row groups past the unit's tokens are skipped), staged
  as one 128-row h tile per placed tile (64 columns in training, 128 in decode), then quantized by
  the shared tile passes: warpgroup 0 rowwise, warpgroup 1 columnwise (per-expert 32-row blocks),
  at the same time, the unit's tiles in a dynamic loop (one copy of the passes' code: with one
  copy per tile the epilogue stalled on instruction fetch, session 17). Gap tiles still get their
  padding scale codes.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
import torch
from cutlass import BFloat16, Boolean, Float32, Int32, Int64, Uint8, Uint32

from ...quant.layout import grouped_tiles
from ...quant.mxfp8 import dequantize
from ..common.activation import swiglu_bf16x2
from ..common.placement import MAX_EXPERTS, TILE_TOKENS, filled_tile, gap_tile, placed_unit
from ..common.ptx import (atomic_add_acq_rel, e4m3_to_bf16_scaled, ld_global_cg_f32x4, ld_global_u8, ld_global_u32,
                          ld_shared, st_global, st_global_f32x4, st_shared)
from ..common.quantize_tile import quantize_tile_colwise, quantize_tile_rowwise, row_bytes
from ..._cuda import sm_count, stream_handle
from ..compile import addr, check_aligned, compile_kernel, front_door_kernel, gmem_ptr, launch, stream_arg, target_arch
from .parts import (banded_head_tail, banded_tile, bf16_view, grouped_tma_atoms, load_ab_stage, make_tiled_mma_bf16,
                    release_and_refill, stage_acc_bf16, start_ab_pipeline, token_tma_atom)

TILE_K = 64  # 64 e4m3 = one 64-byte stage row; 64 bf16 = one 128-byte swizzle atom
WARPGROUPS = 2
THREADS = 128 * WARPGROUPS
# A CTA's work, two ways: (placed 128-token tiles per unit, features, TMA stages).
# - training: 256 tokens x 128 features, one 64-row WGMMA block per warpgroup; 5 stages of 32 KB
#   bf16 (16 KB e4m3) tokens + 8 KB weights;
# - decode: 128 tokens x 256 features, two blocks per warpgroup; 6 stages of 16 KB + 16 KB: with
#   a few tokens per expert the kernel streams weights, and twice the weight bytes per stage (and
#   per CTA) keep that stream at HBM speed (session 12, H200: the training form read 2300-2650 GB/s
#   of weights in decode, this one 3000-3200).
# - decode, narrow: 128 tokens x 128 features, 8 stages of 16 KB + 8 KB: twice the CTAs for the
#   same weights, for a decode step whose 256-feature CTAs would leave a short last wave (pro B=1:
#   144 CTAs on 132 SMs; one SM streams weights at ~25 GB/s however idle the others are, so the
#   12-CTA second wave cost as much as the first; half-size CTAs make 3 half rounds of it: FC1
#   148 -> 140 us, FC2 70 -> 67, session 15, H200).
TRAIN_GEOMETRY = (2, 128, 5)
DECODE_GEOMETRY = (1, 256, 6)
DECODE_NARROW_GEOMETRY = (1, 128, 8)
GEOMETRIES = (TRAIN_GEOMETRY, DECODE_GEOMETRY, DECODE_NARROW_GEOMETRY)  # by the ``decode`` flag: 0, 1, 2
# the launcher takes the narrow decode form when its rounds of half-size CTAs, each costing this
# much of a full round, beat the full-size CTAs' rounds (session 15, H200, bench_geometry.py
# --batch: 0.63 at pro B=1, three narrow rounds 140 us against two full ones 148; where both make
# the same rounds the full-size form wins, e.g. flash B=1 52 vs 70 us)
NARROW_ROUND_COST = 0.6
# the launcher picks the training form from this many tokens per expert on average (T / E): the
# measured crossover (bench/bench_geometry.py, H200, top-6 routing, qwen3 and flash shapes: the
# decode form faster up to 144 tokens per expert, the two within 2% at 160, the training form
# faster from 176)
TRAIN_MIN_TOKENS_PER_EXPERT = 160
TOK_BUFS = 3  # bf16 token operands of the MXFP8-token path (see the module docstring)
NARROW = 32  # units with at most this many tokens use 64 x NARROW WGMMAs
GLU = 32
CHUNK = 16  # bytes of e4m3 per conversion chunk
GAP_GROUP = 32  # experts per gap-code CTA of the decode grid (one per lane)
# Split K for the decode forms' last round: at one CTA per SM a round costs one CTA's length however
# few CTAs it holds (one SM streams weights at ~25 GB/s, session 15), so pro's FC1 at B=1 (144
# decode CTAs on 132 SMs) paid two rounds for 1.09 of work. The tiles of a short last round are
# split into ``splits`` parts of K each, so that their CTAs fill the SMs for a fraction of a round;
# each part stores its fp32 accumulators, and the last to finish adds all of them in split order
# (deterministic) and runs the epilogue. Splitting every tile was slower (session 15: ~10 us of
# fixed cost per CTA); only the last round's tiles are split, and only when they fill at most half
# the SMs.
MAX_SPLITS = 8
MIN_PAIRS_PER_SPLIT = 4  # k-tile pairs (the bf16-token mainloop's step) per split at least
# what a split last round costs, in full decode rounds, in either form (session 19, H200, pro B=1
# FC1: the decode form 149 us whole (two rounds), 109 us with its 12 last tiles in 8 splits; the
# narrow form 136 whole, its split not validly measured yet): mostly fixed cost (pipeline fill,
# the partials' round trip, the epilogue), not the split's share of K
SPLIT_TAIL_COST = 0.45


def filled_slots(tokens, num_experts):
    """Decode grid rows that cover every placed tile holding tokens: expert e fills
    ceil(size_e / 128) tiles, at most ceil(T / 128) + min(E, T) - 1 in all (host ints or Int32)."""
    return (tokens + TILE_TOKENS - 1) // TILE_TOKENS + _min(num_experts, tokens) - 1


def swapped_geometry(dev, n: int, k: int, tokens: int, num_experts: int, split: bool = True) -> int:
    """The swapped kernels' geometry (index into GEOMETRIES) for this launch on device ``dev``:
    :func:`pick_geometry` with the GPU's SM count."""
    return pick_geometry(sm_count(dev), n, k, tokens, num_experts, split)


def pick_geometry(sms: int, n: int, k: int, tokens: int, num_experts: int, split: bool = True) -> int:
    """Training from TRAIN_MIN_TOKENS_PER_EXPERT tokens per expert on average; below, decode, or
    narrow decode when its half-size CTAs' rounds on ``sms`` SMs cost less (NARROW_ROUND_COST each)
    than the full-size CTAs' rounds (both counted on the host's bound of the filled tiles). With
    ``split`` (bf16 tokens: :func:`tail_splits` applies) a split last round costs SPLIT_TAIL_COST of
    a full round in either form."""
    if tokens >= TRAIN_MIN_TOKENS_PER_EXPERT * num_experts:
        return 0
    tiles = n // DECODE_GEOMETRY[1] * filled_slots(tokens, num_experts)

    def cost(ctas, round_cost):
        splits, whole = tail_splits(sms, ctas, k // TILE_K) if split else (1, ctas)
        if splits > 1:
            return whole // sms * round_cost + SPLIT_TAIL_COST
        return -(-ctas // sms) * round_cost

    return 2 if cost(2 * tiles, NARROW_ROUND_COST) < cost(tiles, 1.0) else 1


def grid_rows(tokens, num_experts, geometry: int, gap_codes: bool = True, n_tiles=1, splits=1, whole=0):
    """Launch grid rows (y) of the swapped kernels: training, one per placed 256-token unit,
    ceil(T / 256) + E - 1; the decode forms, the filled tile slots (over ``n_tiles`` N tiles, the
    tiles after the first ``whole`` ``splits`` CTAs each: :func:`tail_splits`), then FC1's gap-code
    CTAs (host ints, or Int32 in the kernel; the host checks the bound with ``gap_codes``)."""
    if geometry:
        tiles = n_tiles * filled_slots(tokens, num_experts)  # (the defaults: the slots, unsplit)
        rows = (whole + (tiles - whole) * splits + n_tiles - 1) // n_tiles
        return rows + (gap_groups(num_experts) if gap_codes else 0)
    unit = TILE_TOKENS * TRAIN_GEOMETRY[0]
    return (tokens + unit - 1) // unit + num_experts - 1


def tail_splits(sms: int, tiles: int, k_tiles: int):
    """(splits, whole): the first ``whole`` of ``tiles`` decode tiles run one CTA each, the rest
    (a last round of at most half the ``sms`` SMs) ``splits`` CTAs each; (1, tiles) when nothing is
    split."""
    whole = tiles // sms * sms
    tail = tiles - whole
    splits = min(sms // tail, MAX_SPLITS, k_tiles // 2 // MIN_PAIRS_PER_SPLIT) if 0 < 2 * tail <= sms else 1
    return (splits, whole) if splits > 1 else (1, tiles)


def split_counter_bytes(split_tiles):
    """The split-K workspace's int32 arrival counters, one per split tile, rounded up to 16 bytes
    (the fp32 partials follow; host ints or Int32)."""
    return (split_tiles * 4 + 15) // 16 * 16


def split_part_bytes(tile_n: int) -> int:
    """fp32 partials of one split of one tile: every thread's 64 accumulators per 64-row WGMMA
    block (tile_n / 64 blocks over the warpgroups)."""
    return THREADS * (tile_n // WARPGROUPS // 64) * 64 * 4


def gap_groups(num_experts):
    """Gap-code CTAs per N tile of the decode grid: one per GAP_GROUP experts."""
    return (num_experts + GAP_GROUP - 1) // GAP_GROUP


def _min(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else cutlass.min(a, b)


class MXGroupedGemmSm90Kernel:
    """See the module docstring. ``swiglu=False``: FC2 (bf16 ``out`` only). ``swiglu=True``: FC1,
    ``out`` is bf16 ``z`` and the flags say which of ``h`` bf16 / MXFP8 rowwise / MXFP8 columnwise
    are written; ``probs`` (fp32 [T]) scales ``h`` when ``with_probs``."""

    threads = THREADS

    def __init__(self, n: int, k: int, swiglu: bool = False, with_probs: bool = False, h_bf16: bool = False,
                 h_row: bool = False, h_col: bool = False, swizzled: bool = False, tokens_bf16: bool = False,
                 h_dequant: bool = False, weights_bf16: bool = False, decode: int = 0):
        if k <= 0 or k % TILE_K:
            raise ValueError(f"K must be a positive multiple of {TILE_K}, got {k}")
        self.set_geometry(decode)
        # FC1's h comes in whole 128-column scale groups (N = 2H, H % 128 == 0)
        n_mult = max(self.tile_n, 256) if swiglu else self.tile_n
        if n <= 0 or n % n_mult:
            raise ValueError(f"N must be a positive multiple of {n_mult}, got {n}")
        if h_row and h_dequant:
            raise ValueError("h_row and h_dequant share the rowwise pass: ask for one")
        if not swiglu and (with_probs or h_bf16 or h_row or h_col or h_dequant):
            raise ValueError("probs and h outputs need the SwiGLU epilogue")
        self.n, self.k = n, k
        self.swiglu, self.with_probs, self.h_bf16, self.h_row, self.h_col, self.swizzled = (
            swiglu, with_probs, h_bf16, h_row, h_col, swizzled)
        self.hidden = n // 2
        self.k_tiles = k // TILE_K
        self.tile_mnk = (self.tile_m, self.tile_n, TILE_K)
        if weights_bf16 and not tokens_bf16:
            raise ValueError("weights_bf16 needs tokens_bf16: both operands then come as bf16")
        if tokens_bf16 and not weights_bf16 and k % (2 * TILE_K):
            raise ValueError(f"bf16 tokens need K % {2 * TILE_K} == 0 (k-tiles alternate register sets), got {k}")
        # tokens_bf16: ``a`` is already dequantized bf16, K-permuted into the A-fragment order;
        # h_dequant: the rowwise pass writes h's MXFP8 values dequantized that way (FC2's tokens)
        self.tokens_bf16, self.h_dequant = tokens_bf16, h_dequant
        # placed tiles without tokens still carry scale codes (padding) in these layouts
        self.gap_codes = swiglu and (h_col or (h_row and swizzled))
        # weights_bf16 ("dense"): the weights too come as their exact bf16 dequantization
        # (K-permuted like the tokens), and the tile runs non-swapped: tokens are WGMMA's M (64 per
        # warpgroup), features its N (256), both operands from shared memory, no conversion at all
        self.weights_bf16 = weights_bf16

    def set_geometry(self, decode: int):
        """A CTA's tile (``GEOMETRIES[decode]``: 0 training, 1 decode, 2 narrow decode; see
        TRAIN_GEOMETRY): ``tile_m`` tokens (``unit_tiles`` placed tiles) x ``tile_n`` features,
        ``blocks`` 64-row WGMMA blocks per warpgroup, the WGMMA N by the unit's tokens (``widths``),
        the staged output / h tiles."""
        self.unit_tiles, self.tile_n, self.stages = GEOMETRIES[int(decode)]
        self.tile_m = TILE_TOKENS * self.unit_tiles
        self.blocks = self.tile_n // WARPGROUPS // 64
        self.widths = (NARROW, TILE_TOKENS, self.tile_m)  # <= 32, <= 128, more (training form only)
        # decode: the grid enumerates only the tiles that hold tokens (``filled_tile``), and FC1's
        # gap tiles get their padding scale codes from a few tail CTAs (``write_gap_tiles``)
        self.filled_only = int(decode) > 0
        self.out_row_bytes = row_bytes(self.tile_n)  # staged bf16 output rows (+16: stmatrix rows over banks)
        self.h_rows, self.h_cols = self.tile_m, self.tile_n // 2

    @cute.jit
    def __call__(self, a: cute.Pointer, a_scale: cute.Pointer, b: cute.Pointer, b_scale: cute.Pointer,
                 offsets: cute.Pointer, out: cute.Pointer, probs: cute.Pointer, h: cute.Pointer,
                 hq_row: cute.Pointer, hs_row: cute.Pointer, hq_col: cute.Pointer, hs_col: cute.Pointer,
                 partials: cute.Pointer, tokens: Int32, num_experts: Int32, num_tiles: Int32, ctas: Int32,
                 splits: Int32, whole: Int32, stream: cuda.CUstream):
        """``partials``, ``splits``, ``whole``: the decode forms' split K (:func:`tail_splits`; the
        workspace: :func:`split_counter_bytes` of counters, zero, then fp32 partials)."""
        N, K = self.n, self.k
        row_major = cutlass.tensor_utils.LayoutEnum.ROW_MAJOR
        if cutlass.const_expr(self.tokens_bf16):
            a8_smem = sm90_utils.make_smem_layout_b(row_major, (64, self.tile_m, TILE_K), BFloat16, self.stages)
        else:
            a8_smem = cute.make_layout((self.tile_m, TILE_K, self.stages), stride=(TILE_K, 1, self.tile_m * TILE_K))
        b8_smem = cute.make_layout((self.tile_n, TILE_K, self.stages), stride=(TILE_K, 1, self.tile_n * TILE_K))
        # tokens are the WGMMA's B operand: (N = tile_m tokens, K) per buffer, 128-byte swizzled
        t16_smem = sm90_utils.make_smem_layout_b(row_major, (64, self.tile_m, TILE_K), BFloat16, TOK_BUFS)
        mma_narrow, mma_half, mma_wide = [make_tiled_mma_bf16(1, w, a_in_registers=True) for w in self.widths]
        # TMA over the e4m3 bytes, into plain row-major stages
        tma_a, tma_mA, tma_b, tma_mB = grouped_tma_atoms(
            a, b, tokens, num_experts, N, K, cute.slice_(a8_smem, (None, None, 0)),
            cute.slice_(b8_smem, (None, None, 0)), self.tile_mnk)
        tma_a_n, tma_mA_n, tma_a_h, tma_mA_h = tma_a, tma_mA, tma_a, tma_mA
        if cutlass.const_expr(self.tokens_bf16):
            # narrower units load a 32- or 128-row token box into the first rows of the stage (same
            # 128-byte swizzle): most of a full box would be other experts' rows (the decode
            # geometry's full box is the 128-row one)
            box = [cute.slice_(sm90_utils.make_smem_layout_b(row_major, (64, w, TILE_K), BFloat16, 1), (None, None, 0))
                   for w in self.widths[:2]]
            tma_a_n, tma_mA_n = token_tma_atom(a, tokens, K, box[0], NARROW, TILE_K)
            if cutlass.const_expr(self.tile_m > TILE_TOKENS):
                tma_a_h, tma_mA_h = token_tma_atom(a, tokens, K, box[1], TILE_TOKENS, TILE_K)

        a_bytes = self.tile_m * TILE_K * self.stages * (2 if self.tokens_bf16 else 1)
        t16_elems = 1024 if self.tokens_bf16 else cute.cosize(t16_smem)

        @cute.struct
        class SharedStorage:
            bars: cute.struct.MemRange[cutlass.Int64, self.stages * 2]
            sA8: cute.struct.Align[cute.struct.MemRange[Uint8, a_bytes], 1024]
            sB8: cute.struct.Align[cute.struct.MemRange[Uint8, cute.cosize(b8_smem)], 1024]
            sT16: cute.struct.Align[cute.struct.MemRange[BFloat16, t16_elems], 1024]

        self.shared_storage = SharedStorage
        units = grid_rows(tokens, num_experts, int(self.filled_only), self.gap_codes, N // self.tile_n, splits, whole)
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, a_scale, b_scale, offsets, out, probs, h, hq_row, hs_row,
                    hq_col, hs_col, partials, tokens, num_experts, num_tiles, splits, whole, mma_wide, mma_half,
                    mma_narrow, a8_smem, b8_smem, t16_smem, tma_a_n, tma_mA_n, tma_a_h, tma_mA_h).launch(
            grid=[N // self.tile_n, units, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, tma_mA: cute.Tensor, tma_b: cute.CopyAtom, tma_mB: cute.Tensor,
               a_scale: cute.Pointer, b_scale: cute.Pointer, offsets: cute.Pointer, out: cute.Pointer,
               probs: cute.Pointer, h: cute.Pointer, hq_row: cute.Pointer, hs_row: cute.Pointer,
               hq_col: cute.Pointer, hs_col: cute.Pointer, partials: cute.Pointer, tokens: Int32,
               num_experts: Int32, num_tiles: Int32, splits: Int32, whole: Int32, mma_wide: cute.TiledMma,
               mma_half: cute.TiledMma, mma_narrow: cute.TiledMma, a8_smem, b8_smem, t16_smem: cute.ComposedLayout,
               tma_a_n: cute.CopyAtom, tma_mA_n: cute.Tensor, tma_a_h: cute.CopyAtom, tma_mA_h: cute.Tensor):
        # ---- which expert and rows this unit holds (rows 0: gap unit / empty expert)
        tidx, _, _ = cute.arch.thread_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if cutlass.const_expr(self.filled_only):
            # (N tile, filled-tile slot), then the gap-code CTAs (N tile, group of experts)
            n_tile, unit, gap_cta, z, split_tile, idle = banded_head_tail(filled_slots(tokens, num_experts), splits,
                                                                          whole)
            e, row0, rows, tile0 = filled_tile(offsets, num_experts, unit, tidx % 32)
            rows = cutlass.select_(gap_cta | idle, Int32(0), rows)
            unit_tiles = cutlass.select_(rows > 0, Int32(1), Int32(0))
        else:
            n_tile, unit = banded_tile()
            # (gap, empty: FC1's gap-tile codes; unused, and compiled away, elsewhere)
            e, row0, rows, tile0, unit_tiles, gap, empty = placed_unit(offsets, num_experts, unit, tidx % 32,
                                                                       num_tiles, self.unit_tiles, True)
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        # epilogue staging reuses the operand buffers: the bf16 out tile in the token ring (68 KB),
        # the h tile in the bf16 token buffers or the weight ring (36 KB)
        out_stage = storage.sA8.data_ptr().toint()
        h_stage = storage.sT16.data_ptr().toint()
        if cutlass.const_expr(self.tokens_bf16):
            h_stage = storage.sB8.data_ptr().toint()
        mmas = (mma_narrow, mma_half, mma_wide)  # in the order of widths
        # zeroed accumulators + ACCUMULATE always on; set here, outside the branches below: a field
        # set inside one branch would be an IR value the other branch cannot use
        for m in mmas:
            m.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
        split = None
        if cutlass.const_expr(self.filled_only and self.tokens_bf16):
            # (the flag word: the token-conversion buffer, unused on bf16 tokens)
            split = self.split_coords(partials, tokens, num_experts, z, split_tile, splits, whole,
                                      storage.sT16.data_ptr().toint())
        last = Int32(1)  # whether this CTA runs the epilogue (split K: the last split of its tile)
        if rows > 0:
            if cutlass.const_expr(self.tokens_bf16):
                # the widths differ in the token box (and so the stage's byte count, a static
                # pipeline parameter): one instance of the mainloop each
                if rows <= NARROW:
                    last = self.mainloop_bf16_tokens(tma_a_n, tma_mA_n, tma_b, tma_mB, b_scale, out, e, row0, rows,
                                                     n_tile, tidx, warp, storage, mmas, a8_smem, b8_smem, 0, split)
                else:
                    if cutlass.const_expr(self.tile_m > TILE_TOKENS):  # training form: 128 or 256
                        if rows <= TILE_TOKENS:
                            self.mainloop_bf16_tokens(tma_a_h, tma_mA_h, tma_b, tma_mB, b_scale, out, e, row0, rows,
                                                      n_tile, tidx, warp, storage, mmas, a8_smem, b8_smem, 1)
                        else:
                            self.mainloop_bf16_tokens(tma_a, tma_mA, tma_b, tma_mB, b_scale, out, e, row0, rows,
                                                      n_tile, tidx, warp, storage, mmas, a8_smem, b8_smem, 2)
                    else:
                        last = self.mainloop_bf16_tokens(tma_a, tma_mA, tma_b, tma_mB, b_scale, out, e, row0, rows,
                                                         n_tile, tidx, warp, storage, mmas, a8_smem, b8_smem, 2, split)
            else:
                self.mainloop_and_store(tma_a, tma_mA, tma_b, tma_mB, a_scale, b_scale, out, tokens, e, row0, rows,
                                        n_tile, tidx, warp, storage, mmas, a8_smem, b8_smem, t16_smem)
            if cutlass.const_expr(self.swiglu):
                if last != 0:
                    self.swiglu_epilogue(probs, h, out_stage, h_stage, row0, rows, n_tile, tidx)
        if cutlass.const_expr(self.swiglu):
            # one 128-row h tile per placed tile of the unit (gap tiles: padding scale codes only)
            if cutlass.const_expr(self.filled_only):
                if (unit_tiles > 0) & (last != 0):  # decode: one placed tile per CTA
                    self.quantize_unit_tile(h_stage, hq_row, hs_row, hq_col, hs_col, tile0, n_tile, row0, rows,
                                            num_tiles, tidx, 0)
            else:
                tiles_written = unit_tiles
                if cutlass.const_expr(self.gap_codes):
                    # a gap tile that opens a unit of its own is written by the unit before it, which
                    # holds the expert's last tokens: the gap unit's CTA then only looks up its expert
                    # and exits (probe, session 16: the gap units' codes cost ~6 us of qwen3's FC1);
                    # an empty expert has no unit with tokens of its own before its gap tile
                    tiles_written = cutlass.select_((rows > 0) | empty, unit_tiles, Int32(0))
                    if rows > 0:
                        if gap == tile0 + self.unit_tiles:
                            self.quantize_h(h_stage, hq_row, hs_row, hq_col, hs_col, gap, n_tile, Int32(0),
                                            Int32(0), num_tiles, tidx)
                # a dynamic loop, not one copy per tile: the MXFP8 passes are most of the kernel's
                # code, and with two copies the epilogue stalled on instruction fetch (ncu, session
                # 17: 44% of the passes' warp samples on qwen3 FC1 were "no instruction")
                for t in cutlass.range(tiles_written, unroll=1):
                    self.quantize_unit_tile(h_stage, hq_row, hs_row, hq_col, hs_col, tile0, n_tile, row0, rows,
                                            num_tiles, tidx, t)
            if cutlass.const_expr(self.filled_only and self.gap_codes):
                if gap_cta:
                    self.write_gap_tiles(offsets, num_experts, unit, n_tile, hq_row, hs_row, hq_col, hs_col,
                                         num_tiles, h_stage, tidx)

    @cute.jit
    def quantize_unit_tile(self, h_stage, hq_row, hs_row, hq_col, hs_col, tile0, n_tile, row0, rows, num_tiles,
                           tidx, t):
        """:meth:`quantize_h` of the unit's ``t``-th placed tile (its rows of the staged h)."""
        self.quantize_h(h_stage + t * TILE_TOKENS * row_bytes(self.h_cols), hq_row, hs_row, hq_col, hs_col, tile0 + t,
                        n_tile, row0 + t * TILE_TOKENS,
                        cutlass.max(cutlass.min(rows - t * TILE_TOKENS, Int32(TILE_TOKENS)), Int32(0)), num_tiles,
                        tidx)

    @cute.jit
    def write_gap_tiles(self, offsets, num_experts, group, n_tile, hq_row, hs_row, hq_col, hs_col, num_tiles,
                        h_stage, tidx):
        """Padding scale codes of the gap tiles of experts 32 group .. 32 group + 31, column block
        ``n_tile`` (the decode grid has no CTA for a tile without tokens)."""
        gap = gap_tile(offsets, num_experts, group * GAP_GROUP + tidx % 32, num_tiles)
        for i in cutlass.range(GAP_GROUP):
            tile = cute.arch.shuffle_sync(gap, i)
            if tile >= 0:
                self.quantize_h(h_stage, hq_row, hs_row, hq_col, hs_col, tile, n_tile, Int32(0), Int32(0),
                                num_tiles, tidx)

    @cute.jit
    def quantize_h(self, h_stage, hq_row, hs_row, hq_col, hs_col, tile, cblk, row0, rows, num_tiles, tidx,
                   one_warpgroup: cutlass.Constexpr = False):
        """A staged 128-row h tile (``self.h_cols`` columns, column block ``cblk``) -> MXFP8 (as
        asked): warpgroup 0 rowwise, warpgroup 1 columnwise, at the same time (``one_warpgroup``:
        both passes, one after the other, by threads ``tidx`` < 128). Every placed tile, gap tiles
        included, writes its scale bytes (padding codes for rows it does not hold); with rows == 0
        nothing else is stored and the staged bytes are unused."""
        if cutlass.const_expr(self.h_row or self.h_col or self.h_dequant):
            wg = 0 if one_warpgroup else tidx // 128
            if wg == 0:
                if cutlass.const_expr(self.h_row or self.h_dequant):
                    quantize_tile_rowwise(h_stage, hq_row, hs_row, tile, cblk, row0, rows, tidx, self.hidden,
                                          self.swizzled, self.h_dequant, self.h_cols)
            if wg == 1 or one_warpgroup:
                if cutlass.const_expr(self.h_col):
                    quantize_tile_colwise(h_stage, hq_col, hs_col, tile, cblk, row0, rows, num_tiles, tidx % 128,
                                          self.hidden, True, self.swizzled, self.h_cols)

    # ---- pieces both mainloops use, in the order data flows: TMA, then the WGMMA operands

    @cute.jit
    def mma_operands(self, mmas, sTok16, bufs: cutlass.Constexpr, tidx, sets: cutlass.Constexpr):
        """Per warpgroup (features x tokens), for each WGMMA width: B fragments over the bf16 token
        buffers (the first ``width`` rows, same swizzled layout) and the accumulators as that
        width's (the first width / 8 n-blocks of the wide ones: same registers); the zeroed fp32
        accumulators; ``sets`` x ``blocks`` A fragments in registers, also as 16 words each."""
        thr = [m.get_slice(tidx % 128) for m in mmas]
        acc = [cute.make_rmem_tensor(thr[-1].partition_shape_C((64, self.tile_m)), Float32) for _ in range(self.blocks)]
        views = []
        for i, width in enumerate(self.widths):
            s_tok = cute.local_tile(sTok16, (width, TILE_K, bufs), (0, 0, 0))
            acc_w = [cute.make_tensor(x.iterator, cute.make_layout(thr[i].partition_shape_C((64, width))))
                     for x in acc]
            views.append((mmas[i].make_fragment_B(thr[i].partition_B(s_tok)), acc_w))
        rA = [[mmas[-1].make_fragment_A(thr[-1].partition_shape_A((64, TILE_K))) for _ in range(self.blocks)]
              for _ in range(sets)]
        rA32 = [[cute.make_tensor(cute.recast_ptr(x.iterator, dtype=Uint32), cute.make_layout(TILE_K // 4))
                 for x in per_set] for per_set in rA]
        for x in acc:
            x.fill(0.0)
        return views, acc, rA, rA32

    @cute.jit
    def weight_rows(self, b_scale, e, n_tile, tidx, warp):
        """This thread's A-fragment rows: block j, half q -> feature row 64 (wg blocks + j) + 16 (warp %
        4) + lane // 4 + 8 q, of which it reads the 16 bytes of chunk lane % 4 (one E8M0 code:
        block (lane % 4) // 2 of the k-tile). Returns (chunk, rows, (the first row's scale-code
        address at k-tile 0, the other rows' static offsets from it))."""
        wg = cute.arch.make_warp_uniform(tidx // 128)
        fc = tidx % 4
        f_rows = [wg * (self.tile_n // WARPGROUPS) + 64 * (i // 2) + 16 * (warp % 4) + (tidx % 32) // 4 + 8 * (i % 2)
                  for i in range(2 * self.blocks)]
        kb = self.k // 32
        # one 64-bit address and static offsets (the rows are 8 and 64 apart): live addresses cost
        # the mainloop registers it does not have
        b_sc = b_scale.toint() + (Int64(e) * self.n + n_tile * self.tile_n + f_rows[0]) * kb + fc // 2
        return fc, f_rows, (b_sc, [(64 * (i // 2) + 8 * (i % 2)) * kb for i in range(2 * self.blocks)])

    @cute.jit
    def weight_codes(self, b_sc, kb_index):
        """The E8M0 codes of this thread's weight rows at scale column ``kb_index``."""
        base, offs = b_sc
        return [ld_global_u8(base + kb_index + o) for o in offs]

    @cute.jit
    def weight_code_words(self, b_sc, fc, kb_index):
        """The four E8M0 codes of each of this thread's weight rows at scale columns ``kb_index`` ..
        + 3 (two k-tiles; ``kb_index`` % 4 == 0, K % 128 == 0: 4-byte aligned) as one word per
        row: a quarter of the loads of :meth:`weight_codes`."""
        base, offs = b_sc
        return [ld_global_u32(base - fc // 2 + kb_index + o) for o in offs]

    @cute.jit
    def weights_to_registers(self, stage: Int32, f_rows, fc, codes, rA32_j, j: cutlass.Constexpr):
        """Dequantize block j's two rows (16 e4m3 bytes each) straight into its A fragment words:
        per k16 step s, (row, k 2c), (row+8, k 2c), (row, k 2c+8), (row+8, k 2c+8)."""
        for q in cutlass.range_constexpr(2):
            i = 2 * j + q
            v = e4m3_to_bf16_scaled(ld_shared(stage + f_rows[i] * TILE_K + fc * CHUNK, 4), codes[i])
            for s in cutlass.range_constexpr(TILE_K // 16):
                rA32_j[4 * s + q] = v[2 * s]
                rA32_j[4 * s + 2 + q] = v[2 * s + 1]

    @cute.jit
    def issue_block(self, mma, view, j: cutlass.Constexpr, rA_j, buf):
        """Block j's four k16 WGMMAs over token buffer ``buf`` at one width (``view``: that width's
        B fragments and accumulators from :meth:`mma_operands`)."""
        tCrB, acc = view
        for s in cutlass.range(TILE_K // 16, unroll_full=True):
            cute.gemm(mma, acc[j], rA_j[(None, None, s)], tCrB[(None, None, s, buf)], acc[j])

    # ---- the three mainloops: MXFP8 tokens, bf16 tokens, bf16 tokens and weights (dense)

    @cute.jit
    def mainloop_and_store(self, tma_a, tma_mA, tma_b, tma_mB, a_scale, b_scale, out, tokens, e, row0, rows, n_tile,
                           tidx, warp, storage, mmas, a8_smem, b8_smem, t16_smem):
        """MXFP8 tokens: all warps dequantize the stage's token rows into bf16 buffers (one CTA
        barrier per k-tile), then each warpgroup its weight rows into registers."""
        ab_pipe, prod, parts = start_ab_pipeline(tma_a, tma_mA, storage.sA8.get_tensor(a8_smem), tma_b, tma_mB,
                                                 storage.sB8.get_tensor(b8_smem), storage.bars.data_ptr(), self.stages,
                                                 (self.tile_m + self.tile_n) * TILE_K, self.k_tiles, row0, e, n_tile,
                                                 self.tile_mnk, warp, THREADS // 32)
        k_tiles = self.k_tiles
        sT16 = storage.sT16.get_tensor(t16_smem.outer, swizzle=t16_smem.inner)
        views, acc, rA, rA32 = self.mma_operands(mmas, sT16, TOK_BUFS, tidx, 1)
        fc, f_rows, b_sc = self.weight_rows(b_scale, e, n_tile, tidx, warp)

        # ---- token conversion: thread t converts the 16-byte chunk (t % 4) of rows t // 4 + 64 i
        kc = tidx % 4
        r0 = tidx // 4
        kb = self.k // 32
        a8 = storage.sA8.data_ptr().toint()
        b8 = storage.sB8.data_ptr().toint()
        t16 = storage.sT16.data_ptr().toint()
        a_sc = []
        for i in cutlass.range_constexpr(self.tile_m // 64):
            # rows past T hold TMA zeros; any in-bounds scale byte serves them
            r = cutlass.min(row0 + r0 + 64 * i, tokens - 1)
            a_sc.append(a_scale.toint() + Int64(r) * kb + kc // 2)

        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        buf = Int32(0)
        # scale codes run one k-tile ahead in registers: an L2 round trip per k-tile would
        # otherwise stall every warp right before its conversion
        a_next = [ld_global_u8(p) for p in a_sc]
        b_next = self.weight_codes(b_sc, 0)
        for kt in cutlass.range(k_tiles, unroll=1):
            a_codes = a_next
            b_codes = b_next
            nxt = 2 * cutlass.min(kt + 1, k_tiles - 1)
            a_next = [ld_global_u8(p + nxt) for p in a_sc]
            b_next = self.weight_codes(b_sc, nxt)
            ab_pipe.consumer_wait(read)
            tok_bytes = self.tile_m * TILE_K
            self.convert_tokens(a8 + read.index * tok_bytes, t16 + buf * (2 * tok_bytes), r0, kc, a_codes, rows)
            # generic-proxy smem writes -> visible to WGMMA (async proxy), then to every warp
            cute.arch.fence_proxy("async.shared", space="cta")
            cute.arch.sync_threads()
            # refill the stage every warp released last iteration: never waits
            if warp == 0 and kt > 0 and prod.count < k_tiles:
                load_ab_stage(ab_pipe, prod, tma_a, tma_b, parts)
                prod.advance()
            stage = b8 + read.index * (self.tile_n * TILE_K)
            for j in cutlass.range_constexpr(self.blocks):
                # WGMMA (kt-1, j) read rA[j]: retire it before overwriting
                cute.nvgpu.warpgroup.wait_group(1)
                self.weights_to_registers(stage, f_rows, fc, b_codes, rA32[0][j], j)
                cute.nvgpu.warpgroup.fence()
                # committed inside each branch: a commit after the branches merge makes ptxas add an
                # empty HGMMA to carry the group, and wait_group(1) would then also wait for this block
                if rows <= NARROW:
                    self.issue_block(mmas[0], views[0], j, rA[0][j], buf)
                    cute.nvgpu.warpgroup.commit_group()
                else:
                    if cutlass.const_expr(self.tile_m > TILE_TOKENS):
                        if rows <= TILE_TOKENS:
                            self.issue_block(mmas[1], views[1], j, rA[0][j], buf)
                            cute.nvgpu.warpgroup.commit_group()
                        else:
                            self.issue_block(mmas[2], views[2], j, rA[0][j], buf)
                            cute.nvgpu.warpgroup.commit_group()
                    else:
                        self.issue_block(mmas[2], views[2], j, rA[0][j], buf)
                        cute.nvgpu.warpgroup.commit_group()
            ab_pipe.consumer_release(read)
            read.advance()
            buf = buf + 1
            if buf == TOK_BUFS:
                buf = Int32(0)
        cute.nvgpu.warpgroup.wait_group(0)
        # every warp is past its last WGMMA: the token ring can hold the output tile
        cute.arch.sync_threads()
        self.store_acc_bf16(acc, mmas[-1], storage, out, row0, rows, n_tile, tidx)

    @cute.jit
    def mainloop_bf16_tokens(self, tma_a, tma_mA, tma_b, tma_mB, b_scale, out, e, row0, rows, n_tile, tidx, warp,
                             storage, mmas, a_smem, b8_smem, width: cutlass.Constexpr, split=None):
        """Tokens arrive as bf16 (TMA straight into the swizzled operand layout): only the weights
        are dequantized, and the warpgroups never wait for each other. ``width``: index into ``widths``
        of the WGMMA N (the unit's tokens); ``tma_a`` loads boxes of that many rows into the first
        rows of each stage. ``split`` (the decode forms, :meth:`split_coords`): this CTA's k-tiles
        of its tile only, then :meth:`reduce_splits`. Returns whether this CTA stored ``out`` (and
        runs the epilogue): always, unless it is a split of K other than its tile's last."""
        sA = bf16_view(storage.sA8, a_smem)
        box = self.widths[width]
        sA_box = cute.local_tile(sA, (box, TILE_K, self.stages), (0, 0, 0))
        k_tiles, k0 = self.k_tiles, None
        if cutlass.const_expr(split is not None):
            k_tiles, k0 = split[1], split[0] * TILE_K
        ab_pipe, prod, parts = start_ab_pipeline(tma_a, tma_mA, sA_box, tma_b, tma_mB,
                                                 storage.sB8.get_tensor(b8_smem), storage.bars.data_ptr(), self.stages,
                                                 (2 * box + self.tile_n) * TILE_K, k_tiles, row0, e, n_tile,
                                                 (box, self.tile_n, TILE_K), warp, THREADS // 32, k0)
        # two register sets of A fragments: k-tile kt converts into set kt % 2 while the WGMMAs of
        # kt-1 still read the other (one set would make every conversion wait for the tensor cores)
        views, acc, rA, rA32 = self.mma_operands(mmas, sA, self.stages, tidx, 2)
        fc, f_rows, b_sc = self.weight_rows(b_scale, e, n_tile, tidx, warp)
        if cutlass.const_expr(split is not None):
            b_sc = (b_sc[0] + 2 * split[0], b_sc[1])  # two scale columns per k-tile
        b8 = storage.sB8.data_ptr().toint()
        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        prev = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        # the codes of a k-tile pair in one word per row, loaded two pairs ahead: loaded one k-tile
        # ahead, their L2 round trip was the mainloop's second stall (ncu source counters, pro B=1
        # FC1: 5% of the warps' samples, after the full-barrier waits' 14%); one pair ahead was
        # not enough (bench_ab, session 16: pro B=1 FC1 140.0 -> 145.8 us one pair ahead, 135.6 two)
        w_next = self.weight_code_words(b_sc, fc, 0)
        w_next2 = self.weight_code_words(b_sc, fc, 4 * cutlass.min(1, k_tiles // 2 - 1))
        shift = (fc // 2) * 8
        for kt2 in cutlass.range(k_tiles // 2, unroll=1):  # k_tiles is even here (K % 128 == 0)
            w_cur = w_next
            w_next = w_next2
            w_next2 = self.weight_code_words(b_sc, fc, 4 * cutlass.min(kt2 + 2, k_tiles // 2 - 1))
            for half in cutlass.range_constexpr(2):
                kt = 2 * kt2 + half
                b_codes = [(w >> (shift + 16 * half)) & Uint32(0xFF) for w in w_cur]
                ab_pipe.consumer_wait(read)
                stage = b8 + read.index * (self.tile_n * TILE_K)
                for j in cutlass.range_constexpr(self.blocks):
                    self.weights_to_registers(stage, f_rows, fc, b_codes, rA32[half][j], j)
                cute.nvgpu.warpgroup.fence()
                # one group per k-tile (the width is static here: no branch for ptxas to carry the
                # group across, see mainloop_and_store)
                for j in cutlass.range_constexpr(self.blocks):
                    self.issue_block(mmas[width], views[width], j, rA[half][j], read.index)
                cute.nvgpu.warpgroup.commit_group()
                # k-tile kt-1 retires: its register set is free, its stage goes back to TMA
                cute.nvgpu.warpgroup.wait_group(1)
                prev, prod = release_and_refill(ab_pipe, prev, prod, kt, warp, k_tiles, tma_a, tma_b, parts)
                read.advance()
        cute.nvgpu.warpgroup.wait_group(0)
        cute.arch.sync_threads()
        last = Int32(1)
        if cutlass.const_expr(split is not None):
            last = self.reduce_splits(acc, 16 if width == 0 else 64, split, tidx)
        if last != 0:
            self.store_acc_bf16(acc, mmas[-1], storage, out, row0, rows, n_tile, tidx)
        return last

    # ---- split K (decode forms): which k-tiles, and the last split's sum of the partials

    @cute.jit
    def split_coords(self, partials, tokens, num_experts, z, split_tile, splits, whole, flag):
        """Split ``z`` of its tile (``split_tile`` among the split tiles; negative: a whole tile, one
        split): (first k-tile, k-tiles (an even share of the k-tile pairs), split, splits of the
        tile, its split 0's partials address, bytes per split, its arrival counter's address, flag
        address (a shared word: whether this CTA is its tile's last)). Workspace: the counters
        (:func:`split_counter_bytes`), then per split tile and split THREADS x 16 fp32 x 4 per
        64-row block."""
        tiles = (self.n // self.tile_n) * filled_slots(tokens, num_experts)
        parts = cutlass.select_(split_tile >= 0, splits, Int32(1))
        pairs = self.k_tiles // 2
        p0 = z * pairs // parts
        per_split = split_part_bytes(self.tile_n)
        at = Int64(cutlass.max(split_tile, Int32(0)))
        base = partials.toint() + split_counter_bytes(tiles - whole) + at * parts * per_split
        return 2 * p0, 2 * ((z + 1) * pairs // parts - p0), z, parts, base, per_split, partials.toint() + at * 4, flag

    @cute.jit
    def reduce_splits(self, acc, count: cutlass.Constexpr, split, tidx):
        """After the mainloop of a split tile: every split stores its fp32 accumulators (the first
        ``count`` of each block's) and arrives on the tile's counter; the last to arrive adds all
        the splits' partials in split order (the same bytes whatever the arrival order) into
        ``acc`` and puts the counter back to zero for the next launch. Returns 1 for that CTA (it
        runs the epilogue), else 0; 1 for a whole tile."""
        _, _, z, parts, base, per_split, counter, flag = split
        last = Int32(1)
        if parts > 1:
            # value 4q + c of block j at ((16 j + q) THREADS + tidx) 16 + 4c: coalesced
            for j in cutlass.range_constexpr(self.blocks):
                for q in cutlass.range_constexpr(count // 4):
                    at = base + Int64(z) * per_split + (Int64(16 * j + q) * THREADS + tidx) * 16
                    st_global_f32x4(at, [acc[j][4 * q + c] for c in range(4)])
            cute.arch.fence_acq_rel_gpu()
            cute.arch.sync_threads()
            if tidx == 0:
                st_shared(flag, [cutlass.select_(atomic_add_acq_rel(counter, 1) == parts - 1, Int32(1), Int32(0))])
            cute.arch.sync_threads()
            last = Int32(ld_shared(flag, 1)[0])
            if last != 0:
                cute.arch.fence_acq_rel_gpu()
                # per block, each split's values in one batch of independent loads (one L2 round
                # trip per split, not per value), added in split order: the same sum per element
                for j in cutlass.range_constexpr(self.blocks):
                    acc[j].fill(0.0)
                    for s in cutlass.range(parts, unroll=1):
                        at = base + Int64(s) * per_split + (Int64(16 * j) * THREADS + tidx) * 16
                        vs = [ld_global_cg_f32x4(at + Int64(q * THREADS * 16)) for q in range(count // 4)]
                        for q in cutlass.range_constexpr(count // 4):
                            for c in cutlass.range_constexpr(4):
                                acc[j][4 * q + c] = acc[j][4 * q + c] + vs[q][c]
                st_global(counter, [Int32(0)], tidx == 0)
        return last

    @cute.jit
    def convert_tokens(self, src: Int32, dst: Int32, r0: Int32, kc: Int32, codes: list, rows: Int32):
        """e4m3 token rows (64 bytes per stage row) -> bf16 B operand rows (128 bytes, 128-byte
        swizzle: 16-byte chunk c of row r at ``c ^ (r % 8)``), in the weights' A-fragment k order:
        bytes 4s + 2h + (0, 1) of chunk kc are WGMMA k 16s + 8h + 2kc + (0, 1). Rows >= ``rows``
        are skipped: their stale values only reach output columns that are never stored."""
        for i in cutlass.range_constexpr(len(codes)):
            r = r0 + 64 * i
            if r < rows:
                v = e4m3_to_bf16_scaled(ld_shared(src + r * TILE_K + kc * CHUNK, 4), codes[i])
                sw = r % 8
                for s in cutlass.range_constexpr(4):
                    for hh in cutlass.range_constexpr(2):
                        st_shared(dst + r * 128 + ((2 * s + hh) ^ sw) * 16 + kc * 4, [v[2 * s + hh]])

    @cute.jit
    def store_acc_bf16(self, acc, tiled_mma, storage, out, row0, rows, n_tile, tidx):
        """Accumulators (features x tokens) -> bf16 [token][feature] tile staged in shared memory
        (transposing stmatrix) -> the expert's rows of ``out`` [T, N] (16-byte stores). The staged
        tile stays for the SwiGLU epilogue."""
        stage_i = storage.sA8.data_ptr().toint()
        wg = tidx // 128
        for j in cutlass.range_constexpr(self.blocks):
            # this block's 64 features are columns tile_n / 2 wg + 64 j of the token-major tile
            col0 = cute.make_ptr(BFloat16, stage_i + (wg * (self.tile_n // WARPGROUPS) + 64 * j) * 2,
                                 cute.AddressSpace.smem, assumed_align=16)
            s_out = cute.make_tensor(col0, cute.make_layout((64, self.tile_m), stride=(1, self.out_row_bytes // 2)))
            stage_acc_bf16(acc[j], tiled_mma, s_out, tidx % 128, transposed=True)
        cute.arch.sync_threads()
        store_rows(out, self.n, n_tile * self.tile_n, self.tile_n, stage_i, self.out_row_bytes, row0, rows, tidx,
                   THREADS, self.tile_m)

    @cute.jit
    def swiglu_epilogue(self, probs, h, z_stage, h_stage, row0, rows, n_tile, tidx):
        """Staged bf16 z (``tile_n`` columns = tile_n / 64 gate/up pairs) -> h = p * silu(g) * u, bf16,
        into the staged h tile (rows past ``rows`` zeroed); optionally stored as bf16 ``h``."""
        step = THREADS // (4 * (self.tile_n // (2 * GLU)))  # rows per step: 4 threads per pair and row
        hw = cute.make_rmem_tensor(4, Uint32)
        slow = Boolean(False)
        for i in cutlass.range_constexpr(self.tile_m // step):
            hw.fill(0)
            # row groups past the unit's tokens stay zero (decode units hold a few tokens: most
            # of the 256 rows would be SiLU of stale values)
            if step * i < rows:
                hv, slow_i = self.swiglu_row(probs, z_stage, row0, rows, tidx, Int32(step * i), "deferred")
                slow = slow | slow_i
                for j in cutlass.range_constexpr(4):
                    hw[j] = hv[j]
            self.store_h_row(h_stage, tidx, Int32(step * i), [hw[j] for j in range(4)])
        # an operand outside the fast division's exact range (a zero, a huge or tiny g, an inf or
        # a NaN: rare): this thread's rows again with div.rn, in one loop for all of its row groups
        # instead of a fallback inlined in each (the epilogue's code and branches, session 16)
        if slow:
            for i in cutlass.range(self.tile_m // step, unroll=1):
                if step * i < rows:
                    self.store_h_row(h_stage, tidx, step * i,
                                     self.swiglu_row(probs, z_stage, row0, rows, tidx, step * i, "divrn"))
        cute.arch.sync_threads()
        if cutlass.const_expr(self.h_bf16):
            self.store_h_bf16(h, h_stage, row0, rows, n_tile, tidx)

    def swiglu_coords(self, tidx, group_row):
        """This thread's row in the row group starting at ``group_row``, its gate/up pair, and which
        8 of the pair's 32 columns it takes."""
        pairs = self.tile_n // (2 * GLU)
        return tidx // (4 * pairs) + group_row, (tidx // 4) % pairs, tidx % 4

    @cute.jit
    def swiglu_row(self, probs, z_stage, row0, rows, tidx, group_row, silu_mode: cutlass.Constexpr):
        """This thread's 8 h columns (4 bf16-pair words) of its row in the row group starting at
        ``group_row`` (:meth:`swiglu_coords`; :func:`swiglu_bf16x2` in ``silu_mode``)."""
        r, blk, c8 = self.swiglu_coords(tidx, group_row)
        g = ld_shared(z_stage + r * self.out_row_bytes + (blk * 2 * GLU + c8 * 8) * 2, 4)
        u = ld_shared(z_stage + r * self.out_row_bytes + (blk * 2 * GLU + GLU + c8 * 8) * 2, 4)
        valid = r < rows
        p = Float32(1.0)
        if cutlass.const_expr(self.with_probs):
            if valid:
                p = cute.make_tensor(probs + (row0 + r), cute.make_layout(1))[0]
        return swiglu_bf16x2(g, u, p if self.with_probs else None, valid, silu_mode)

    @cute.jit
    def store_h_row(self, h_stage, tidx, group_row, words):
        """:meth:`swiglu_row`'s 4 words -> the staged h tile."""
        r, blk, c8 = self.swiglu_coords(tidx, group_row)
        st_shared(h_stage + r * row_bytes(self.h_cols) + (blk * GLU + c8 * 8) * 2, words)

    @cute.jit
    def store_h_bf16(self, h, h_stage, row0, rows, n_tile, tidx, threads: cutlass.Constexpr = THREADS):
        """The staged h tile (``self.h_rows`` x ``self.h_cols``) -> the expert's rows of bf16 ``h``
        [T, N/2] (16-byte stores)."""
        store_rows(h, self.hidden, n_tile * self.h_cols, self.h_cols, h_stage, row_bytes(self.h_cols), row0, rows,
                   tidx, threads, self.h_rows)


@cute.jit
def store_rows(dst: cute.Pointer, dst_cols: cutlass.Constexpr, col0, cols: cutlass.Constexpr, stage: Int32,
               stage_row_bytes: cutlass.Constexpr, row0, rows, tidx, threads: cutlass.Constexpr,
               tile_rows: cutlass.Constexpr):
    """A staged bf16 tile (``tile_rows`` rows ``stage_row_bytes`` apart, ``cols`` columns) -> rows
    ``row0 .. row0 + rows - 1``, columns ``col0 ..`` of ``dst`` [T, dst_cols], by 16-byte stores of
    ``threads`` threads (``tidx`` < threads); rows past ``rows`` belong to the next expert and are
    not written."""
    per_row = cols * 2 // 16  # 16-byte chunks per row
    ch = tidx % per_row
    base = dst.toint() + (Int64(row0) * dst_cols + col0 + ch * 8) * 2
    for q in cutlass.range_constexpr(tile_rows * per_row // threads):
        r = tidx // per_row + q * (threads // per_row)
        st_global(base + Int64(r) * (dst_cols * 2), ld_shared(stage + r * stage_row_bytes + ch * 16, 4), r < rows)


# --- host side --------------------------------------------------------------------------------

def _placeholder_args(tokens_bf16=False, h_dequant=False, weights_bf16=False):
    u8 = Uint8
    # a, a_scale, b, b_scale, offsets, out, probs, h, hq_row, hs_row, hq_col, hs_col, partials, T, E, tiles,
    # ctas, splits, whole, stream
    return (gmem_ptr(BFloat16 if tokens_bf16 else u8), gmem_ptr(u8), gmem_ptr(BFloat16 if weights_bf16 else u8),
            gmem_ptr(u8), gmem_ptr(Int32),
            gmem_ptr(BFloat16), gmem_ptr(Float32), gmem_ptr(BFloat16), gmem_ptr(BFloat16 if h_dequant else u8),
            gmem_ptr(u8), gmem_ptr(u8), gmem_ptr(u8), gmem_ptr(u8),
            Int32(1), Int32(1), Int32(1), Int32(1), Int32(1), Int32(1), stream_arg())


def compiled_mx_grouped_gemm_kernel(n, k, flags=(False,) * 6, arch=None, keep_ptx=False):
    """``flags`` = (swiglu, with_probs, h_bf16, h_row, h_col, swizzled, tokens_bf16, h_dequant,
    weights_bf16, decode); missing trailing flags are False. ``decode`` (swapped forms only): the
    geometry, ``GEOMETRIES[decode]`` (False / True: training / decode, 2: narrow decode); the dense
    form has one."""
    flags = tuple(flags) + (False,) * (10 - len(flags))
    geometry = 0 if flags[8] else int(flags[9])
    flags = tuple(bool(f) for f in flags[:9]) + (geometry,)
    from .dense_grouped_gemm import DenseGroupedGemmSm90Kernel  # (it subclasses this module's kernel)
    cls = DenseGroupedGemmSm90Kernel if flags[8] else MXGroupedGemmSm90Kernel
    return compile_kernel(("mx_grouped_gemm_sm90", n, k, flags), lambda: cls(n, k, *flags),
                          lambda: _placeholder_args(flags[6], flags[7], flags[8]), arch or target_arch(), keep_ptx)


class SplitWorkspace:
    """One split-K workspace: ``counter_cap`` bytes of int32 arrival counters, then fp32 partials.
    The kernel finds a launch's counters at the address it is given and the partials right after
    them (:func:`split_counter_bytes` of the launch's split tiles), so the address handed over puts
    the launch's counters at the *end* of the counter region: the partials then always start at
    ``counter_cap``, and nothing but counters is ever written below it. Counters start at zero (the
    buffer is zeroed when allocated) and every launch leaves them at zero (the last split of a tile
    resets its counter; a tile without tokens never touches its own), so a launch may follow any
    other in stream order, whatever its number of split tiles. (Counters placed at the start with
    the partials after them, as first written, put a later launch's counters on an earlier one's
    partials: a review caught it before any multi-launch test did.)"""

    def __init__(self, counter_cap: int, nbytes: int, alloc):
        self.counter_cap = counter_cap
        self.buffer = alloc(counter_cap + nbytes)

    def fits(self, counter_bytes: int, partial_bytes: int) -> bool:
        return counter_bytes <= self.counter_cap and partial_bytes <= self.buffer.numel() - self.counter_cap

    def address(self, counter_bytes: int) -> int:
        """The kernel's ``partials`` argument for a launch with ``counter_bytes`` of counters."""
        return self.buffer.data_ptr() + self.counter_cap - counter_bytes


_SPLIT_WORKSPACES = {}
_MAX_SPLIT_WORKSPACES = 8  # streams with a workspace kept; older ones are dropped (in stream order: safe)


def split_workspace(dev, counter_bytes: int, partial_bytes: int) -> SplitWorkspace:
    """The :class:`SplitWorkspace` for a split-K launch on ``dev``'s current stream: one per
    (device, stream), zeroed, replaced by a larger one when a launch does not fit. During CUDA graph
    capture a fresh one, zeroed inside the graph; the caller holds it until the launch is issued,
    after which the graph's pool may hand its bytes to later captured work, which runs after the
    kernel in stream order."""
    alloc = lambda n: torch.zeros(n, dtype=torch.uint8, device=dev)  # noqa: E731
    with torch.cuda.device(dev):
        capturing = torch.cuda.is_current_stream_capturing()
    if capturing:
        return SplitWorkspace(counter_bytes, partial_bytes, alloc)
    key = (dev, stream_handle(dev))
    ws = _SPLIT_WORKSPACES.pop(key, None)
    if ws is None or not ws.fits(counter_bytes, partial_bytes):
        cap = max(counter_bytes, 4096 if ws is None else ws.counter_cap)
        size = max(partial_bytes, 1 << 20 if ws is None else ws.buffer.numel() - ws.counter_cap)
        ws = SplitWorkspace(cap, size, alloc)
    _SPLIT_WORKSPACES[key] = ws  # most recent last
    while len(_SPLIT_WORKSPACES) > _MAX_SPLIT_WORKSPACES:
        _SPLIT_WORKSPACES.pop(next(iter(_SPLIT_WORKSPACES)))
    return ws


def _check_mx_operand(q, s, shape, name):
    if q.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{name} data must be float8_e4m3fn, got {q.dtype}")
    if tuple(q.shape) != tuple(shape) or not q.is_contiguous():
        raise ValueError(f"{name} data must be a contiguous {list(shape)} tensor, got {tuple(q.shape)}")
    want = (*shape[:-1], shape[-1] // 32)
    if s.dtype != torch.uint8 or tuple(s.shape) != want or not s.is_contiguous():
        raise ValueError(f"{name} scales must be contiguous uint8 {list(want)} (plain rowwise layout), got "
                         f"{s.dtype} {tuple(s.shape)}")


def _operand_shape(q, s, dequant, name, shape):
    """An operand comes either as MXFP8 (``q``, ``s``) or as its exact bf16 dequantization: check
    which, return its shape."""
    if dequant is not None:
        if q is not None or s is not None:
            raise ValueError(f"give either {name}_q / {name}_s (MXFP8) or {name}_dequant (bf16), not both")
        if dequant.dtype != torch.bfloat16 or dequant.dim() != shape.count(",") + 1 or not dequant.is_contiguous():
            raise ValueError(f"{name}_dequant must be a contiguous bf16 {shape} tensor, got {dequant.dtype} "
                             f"{tuple(dequant.shape)}")
        return dequant.shape
    if q is None or s is None:
        raise ValueError(f"{name}_q and {name}_s are required unless {name}_dequant is given")
    return q.shape


def kperm_rowwise(x: torch.Tensor) -> torch.Tensor:
    """[T, K] -> the same values with K permuted inside each 64-wide k-tile into the weights'
    A-fragment order (the kernel's token operand order): position 16s + 8h + 2c + e holds column
    16c + 4s + 2h + e. Used for ``a_dequant``; any [T, K] tensor, K a multiple of 64."""
    t, k = x.shape
    return x.view(t, k // 64, 4, 4, 2, 2).permute(0, 1, 3, 4, 2, 5).reshape(t, k)


def dequantize_rowwise_kperm(a_q: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """Reference producer of ``a_dequant``: the reference dequantization of rowwise MXFP8 ``a``
    (plain scales) rounded once to bf16, K-permuted by :func:`kperm_rowwise` (torch ops: a
    reference, not a fast path)."""
    return kperm_rowwise(dequantize(a_q, a_s, -1, dtype=torch.bfloat16)).contiguous()


def mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets, *, swiglu=False, probs=None, h_bf16=False, h_row=False,
                         h_col=False, swizzled=False, h_dequant=False, a_dequant=None, b_dequant=None, _poison=None,
                         _ctas=None, _decode=None, _splits=None):
    """Launch the SM90 MXFP8 grouped GEMM on rowwise MXFP8 operands (plain scales).

    a_q e4m3 [T, K] with a_s uint8 [T, K/32]; b_q e4m3 [E, N, K] with b_s [E, N, K/32]; offsets
    int32 [E+1] on the device (exclusive cumsum of split sizes, ``offsets[E] == T``; not read here).
    ``a_dequant``: instead of ``a_q`` / ``a_s`` (pass None for them), a's exact bf16 values
    [T, K] (K a multiple of 128), K-permuted by :func:`kperm_rowwise`: the tokens then skip the in-kernel dequantization
    (TMA straight into WGMMA's layout); outputs are bit-identical to the MXFP8 ``a`` path.
    ``b_dequant`` (with ``a_dequant``; pass None for ``b_q`` / ``b_s``): the weights' exact bf16
    values [E, N, K], K-permuted the same way (the quantize kernel's ``row_dequant`` of b): the kernel
    then converts nothing (a bf16 x bf16 mainloop, tokens x features); outputs are bit-identical
    again. It reads twice the weight bytes: for many tokens per expert (training), not for decode.
    Returns ``out`` bf16 [T, N] (FC2: y) when ``swiglu`` is False; else a dict with ``z`` [T, N] and,
    as asked, ``h`` bf16 [T, N/2], ``h_row`` / ``h_col`` as (data, scales) of the MXFP8 ``h``
    (columnwise blocks per expert; plain or swizzled scales), ``h_dequant`` bf16 [T, N/2]: the rowwise
    MXFP8 ``h`` dequantized exactly and K-permuted, to feed FC2 as its ``a_dequant``.
    ``_poison``: tests set it to fill every output first (bf16 NaN, bytes 0xFF: values finite inputs
    never produce), so that anything not written shows up. ``_ctas`` (tests): the dense kernel's
    persistent grid in clusters, fewer than the GPU holds (each CTA then walks more tiles).
    ``_decode`` (tests): the swapped forms' geometry (an index into GEOMETRIES; False / True:
    training / decode), instead of the launcher's choice (:func:`swapped_geometry`). ``_splits``
    (tests, with ``_decode`` and ``a_dequant``): split K for every tile in this many parts (1: none)
    instead of the launcher's choice (:func:`tail_splits`: only a short last round's tiles).
    """
    if offsets.dtype != torch.int32 or offsets.dim() != 1:
        raise TypeError(f"offsets must be a 1-D int32 tensor, got {offsets.dtype} {tuple(offsets.shape)}")
    a_shape = _operand_shape(a_q, a_s, a_dequant, "a", "[T, K]")
    if b_dequant is not None and a_dequant is None:
        raise ValueError("b_dequant needs a_dequant (both operands bf16)")
    b_shape = _operand_shape(b_q, b_s, b_dequant, "b", "[E, N, K]")
    if len(a_shape) != 2 or len(b_shape) != 3 or b_shape[2] != a_shape[1]:
        raise ValueError(f"a must be [T, K] and b [E, N, K], got {tuple(a_shape)} and {tuple(b_shape)}")
    tokens, k = a_shape
    num_experts, n, _ = b_shape
    if a_dequant is None:
        _check_mx_operand(a_q, a_s, (tokens, k), "a")
    if b_dequant is None:
        _check_mx_operand(b_q, b_s, (num_experts, n, k), "b")
    if offsets.shape[0] != num_experts + 1:
        raise ValueError(f"offsets must have E+1 = {num_experts + 1} entries, got {offsets.shape[0]}")
    # 256: the decode and dense tiles' features, FC1's whole 128-column scale groups of h
    if k % TILE_K or n % 256:
        raise ValueError(f"K must be a multiple of {TILE_K} and N of 256, got K={k}, N={n}")
    if b_dequant is None and a_dequant is not None and k % (2 * TILE_K):
        raise ValueError(f"a_dequant needs K to be a multiple of {2 * TILE_K}, got K={k}")
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"at most {MAX_EXPERTS} experts, got {num_experts}")
    if probs is not None and (probs.dtype != torch.float32 or tuple(probs.shape) != (tokens,)):
        raise ValueError(f"probs must be fp32 [T={tokens}], got {probs.dtype} {tuple(probs.shape)}")
    if not swiglu and (probs is not None or h_bf16 or h_row or h_col or h_dequant):
        raise ValueError("probs and h outputs need swiglu=True")
    if h_row and h_dequant:
        raise ValueError("ask for h_row (MXFP8) or h_dequant (its bf16 dequantization), not both")
    if _splits is not None and (int(_splits) < 1 or not _decode or a_dequant is None or b_dequant is not None):
        raise ValueError(f"_splits (>= 1, got {_splits}) applies to a forced decode form (_decode) on a_dequant "
                         "tokens with MXFP8 weights")
    dev = (b_q if b_dequant is None else b_dequant).device
    operands = dict(a_q=a_q, a_s=a_s, a_dequant=a_dequant, b_q=b_q, b_s=b_s, b_dequant=b_dequant, offsets=offsets,
                    probs=probs)
    for name, t in operands.items():
        if t is not None and (t.device.type != "cuda" or t.device != dev):
            raise ValueError(f"{name} must be on the weights' CUDA device, got {t.device} (weights on {dev})")
    check_aligned(**operands)
    tiles = grouped_tiles(tokens, num_experts)
    hidden = n // 2

    def alloc(shape, dtype):
        t = torch.empty(shape, dtype=dtype, device=dev)
        return t if not _poison else t.fill_(float("nan") if dtype == torch.bfloat16 else 0xFF)

    out = alloc((tokens, n), torch.bfloat16)
    h = alloc((tokens, hidden), torch.bfloat16) if h_bf16 else None
    hq_row = hs_row = hq_col = hs_col = None
    if h_dequant:
        hq_row = alloc((tokens, hidden), torch.bfloat16)
    if h_row:
        hq_row = alloc((tokens, hidden), torch.uint8)
        hs_row = alloc((tiles * TILE_TOKENS, hidden // 32) if swizzled else (tokens, hidden // 32), torch.uint8)
    if h_col:
        hq_col = alloc((tokens, hidden), torch.uint8)
        hs_col = alloc((hidden, 4 * tiles) if swizzled else (4 * tiles, hidden), torch.uint8)
    if tokens > 0 and tiles > 0:
        decode = 0 if b_dequant is not None else (
            swapped_geometry(dev, n, k, tokens, num_experts, a_dequant is not None) if _decode is None
            else int(_decode))
        n_tiles = n // GEOMETRIES[decode][1]
        splits, whole, workspace, partials = 1, 0, None, 0
        if decode and a_dequant is not None:
            decode_tiles = n_tiles * filled_slots(tokens, num_experts)
            splits, whole = (tail_splits(sm_count(dev), decode_tiles, k // TILE_K) if _splits is None else
                             (min(int(_splits), k // TILE_K // 2), 0))
            if splits > 1:
                split_tiles = decode_tiles - whole
                counter_bytes = split_counter_bytes(split_tiles)
                workspace = split_workspace(dev, counter_bytes,
                                            split_tiles * splits * split_part_bytes(GEOMETRIES[decode][1]))
                partials = workspace.address(counter_bytes)
            else:
                whole = decode_tiles
        units = grid_rows(tokens, num_experts, decode, True, n_tiles, splits, whole)
        if b_dequant is None and units > 65535:  # units run along grid y
            raise ValueError(f"{tokens} tokens over {num_experts} experts need {units} CTA rows "
                             f"({TILE_TOKENS * GEOMETRIES[decode][0]}-token units), more than 65535")
        flags = (swiglu, probs is not None, h_bf16, h_row, h_col, swizzled, a_dequant is not None, h_dequant,
                 b_dequant is not None, decode)
        kern = front_door_kernel(("mx", n, k, flags, dev), lambda: compiled_mx_grouped_gemm_kernel(n, k, flags,
                                                                                                 target_arch(dev)))
        ctas = 0
        if b_dequant is not None:
            from .dense_grouped_gemm import dense_grid
            ctas = dense_grid(dev, n, tokens, num_experts, _ctas)
        # a, a_scale, b, b_scale, offsets, out, probs, h, hq_row, hs_row, hq_col, hs_col, partials, T, E, tiles,
        # ctas, splits, whole, stream
        launch(kern, "p" * 13 + "iiiiii" + "s", addr(a_q if a_dequant is None else a_dequant), addr(a_s),
               addr(b_q if b_dequant is None else b_dequant), addr(b_s), addr(offsets), addr(out), addr(probs),
               addr(h), addr(hq_row), addr(hs_row), addr(hq_col), addr(hs_col), partials, tokens, num_experts,
               tiles, ctas, splits, whole, stream_handle(dev))
    if not swiglu:
        return out
    f8 = lambda t: None if t is None else t.view(torch.float8_e4m3fn)  # noqa: E731
    return {"z": out, "h": h, "h_row": (f8(hq_row), hs_row) if h_row else None,
            "h_dequant": hq_row if h_dequant else None,
            "h_col": (f8(hq_col), hs_col) if h_col else None}
