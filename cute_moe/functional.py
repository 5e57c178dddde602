"""Autograd API: ``grouped_linear`` and ``grouped_mlp`` (REFERENCE §4).

Every path runs the same formulas below; what differs is the *numerics backend* (``ops``): how an
operand is quantized / dequantized and how a grouped GEMM is computed.

- ``_RefOps``: exact reference on any device: reference quantization, per-expert matmuls in fp32
  (or fp64 for the test oracle). One host read of the split sizes (a sync on CUDA).
- ``_CudaOps``: CUDA, sm90+: CuTe DSL quantize kernels, exact dequantization to bf16 on the device,
  ``torch._grouped_mm`` (fp32 accumulate). No host syncs besides the optional input checks.
- ``_FusedSm90Ops``: ``_CudaOps`` whose MLP forward runs the SM90 CuTe DSL MXFP8 kernels (FC1 +
  SwiGLU + MXFP8 h, then FC2): the same numerics; weights dequantized on chip, token operands handed
  over as their exact bf16 dequantization by the pass that quantizes them.

Which one a call gets is :func:`cute_moe.dispatch.decide`'s choice. What is stored for backward:
MXFP8 columnwise copies of ``x`` and ``h`` (1 byte/element + scales) and ``z`` in the activation
dtype; weights are re-quantized in backward (columnwise) from the parameters.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import dispatch
from .quant import quantize
from .quant.api import check_split_sizes_arg, exclusive_offsets, quantize_checked, split_size_checks_enabled
from .quant.mxfp8 import MXFP8Tensor, dequantize_device
from .quant.weight_cache import cached_weight
from .recipe import get_recipe


def mx_grouped_gemm_sm90(*args, **kwargs):
    # imported on first use: the DSL is slow to import and absent from CPU-only paths
    from .kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90 as launch

    return launch(*args, **kwargs)


GLU_BLOCK = 32


# --- numerics backends ---------------------------------------------------------------------------

class _RefOps:
    def __init__(self, mx: bool, dtype: torch.dtype = torch.float32, act_dtype: Optional[torch.dtype] = None):
        self.mx, self.dtype, self.act_dtype = mx, dtype, act_dtype

    def grouping(self, split_sizes, tokens):
        return [int(n) for n in split_sizes.tolist()]

    def round_act(self, t):
        """Round to the activation storage dtype (bf16 for bf16 inputs), keep computing in dtype."""
        return t if self.act_dtype is None else t.to(self.act_dtype).to(self.dtype)

    def quant(self, t, sizes, row=True, col=False):
        if not self.mx:
            t = t.to(self.dtype)
            return (t if row else None), (t if col else None)
        sz = torch.tensor(sizes)
        return (quantize(t, -1) if row else None), (quantize(t, 0, sz) if col else None)

    def deq(self, h):
        return h.dequantize(self.dtype) if isinstance(h, MXFP8Tensor) else h.to(self.dtype)

    def weight(self, w, colwise=False):
        """Dequantized Q_row(W) (blocks along K), or Q_col(W) (blocks along N, per expert)."""
        if not self.mx:
            return w.to(self.dtype)
        if colwise:
            return quantize(w.transpose(1, 2).contiguous(), -1).dequantize(self.dtype).transpose(1, 2)
        return quantize(w, -1).dequantize(self.dtype)

    def gmm(self, a, w, sizes):
        """y[t] = a[t] @ w[e(t)].T ; w [E, N, K]."""
        out = a.new_zeros(a.shape[0], w.shape[1])
        off = 0
        for e, n in enumerate(sizes):
            out[off : off + n] = a[off : off + n] @ w[e].t()
            off += n
        return out

    def gmm_dgrad(self, a, w, sizes):
        """y[t] = a[t] @ w[e(t)] ; w [E, N, K], a [T, N]."""
        return self.gmm(a, w.transpose(1, 2), sizes)

    def gmm_wgrad(self, a, b, sizes):
        """out[e] = a_e.T @ b_e (zero for experts without tokens)."""
        out = a.new_zeros(len(sizes), a.shape[1], b.shape[1])
        off = 0
        for e, n in enumerate(sizes):
            out[e] = a[off : off + n].t() @ b[off : off + n]
            off += n
        return out


class _CudaOps:
    dtype = torch.float32

    def __init__(self, mx: bool, cache: bool = False):
        self.mx, self.cache = mx, cache

    def _cached(self, w, kind, make):
        """``make()``, or the weight cache's copy of it (forward weight operands, ``cache`` on)."""
        return cached_weight(w, kind, make) if self.cache else make()

    def grouping(self, split_sizes, tokens):
        """(sizes, offsets [E+1]) once per call; torch._grouped_mm takes the end offsets[1:]."""
        sizes = split_sizes.to(torch.int32)
        return sizes, exclusive_offsets(sizes)

    def round_act(self, t):
        return t.to(torch.bfloat16)

    def quant(self, t, sizes, row=True, col=False):
        t = t.to(torch.bfloat16).contiguous()
        if not self.mx:
            return (t if row else None), (t if col else None)
        grouped = col  # only the columnwise blocks depend on the grouping
        return quantize_checked(t, row, col, sizes[0] if grouped else None, sizes[1] if grouped else None)

    def deq(self, h):
        return dequantize_device(h, torch.bfloat16) if isinstance(h, MXFP8Tensor) else h.to(torch.bfloat16)

    def weight(self, w, colwise=False):
        e, n, k = w.shape
        if not self.mx:
            return w.to(torch.bfloat16)
        if colwise:
            # blocks along N inside each expert: one grouped columnwise pass over [E*N, K]
            # (with N % 32 == 0 the dense grouping is the same, without split sizes)
            sizes = offsets = None
            if n % 32:
                sizes = torch.full((e,), n, dtype=torch.int32, device=w.device)
                offsets = exclusive_offsets(sizes)
            _, col = quantize_checked(w.to(torch.bfloat16).reshape(e * n, k).contiguous(), False, True, sizes, offsets)
            return dequantize_device(col, torch.bfloat16).view(e, n, k)
        # (the bf16 copy of a non-bf16 weight is made inside, on a cache miss only)
        return self._cached(w, "row_bf16",
                            lambda: dequantize_device(self._weight_row_mx(w), torch.bfloat16).view(e, n, k))

    @staticmethod
    def _weight_row_mx(w, row_dequant=False):
        """Q_row(W) of [E, N, K] as one rowwise MXFP8Tensor over [E*N, K] (blocks along K); with
        ``row_dequant`` its exact bf16 dequantization [E*N, K], K-permuted for the SM90 GEMM."""
        e, n, k = w.shape
        row, _ = quantize_checked(w.to(torch.bfloat16).reshape(e * n, k).contiguous(), True, False, None, None,
                                  row_dequant=row_dequant)
        return row

    def gmm(self, a, w, sizes):
        return torch._grouped_mm(a.to(torch.bfloat16), w.transpose(1, 2), offs=sizes[1][1:])

    def gmm_dgrad(self, a, w, sizes):
        return torch._grouped_mm(a.to(torch.bfloat16), w, offs=sizes[1][1:])

    def gmm_wgrad(self, a, b, sizes):
        return torch._grouped_mm(a.to(torch.bfloat16).t(), b.to(torch.bfloat16), offs=sizes[1][1:])


class _FusedSm90Ops(_CudaOps):
    """``_CudaOps`` with the SM90 fused forward: FC1 + SwiGLU + MXFP8 ``h`` in one CuTe DSL kernel,
    FC2 in another; the numerics are the unfused path's. Weights reach the GEMMs either as MXFP8,
    dequantized in registers (few tokens per expert: the weight stream is the cost, and e4m3 halves
    it), or, from DENSE_MIN_TOKENS_PER_EXPERT tokens per expert on average, as their exact bf16
    dequantization written by the weight quantize pass (``row_dequant``): the GEMM then converts
    nothing, which beats the in-register conversion once each weight tile serves several token
    tiles (bench/RESULTS.md, session 7). Token operands (``x``, ``h``) are quantized to MXFP8 and
    handed over as their exact bf16 dequantization, written by the quantize pass itself (x: the
    quantize kernel; h: FC1's epilogue) in the K order the GEMM reads: they skip the in-kernel
    dequantization, which is most of the mainloop's work (bench/RESULTS.md). The columnwise MXFP8
    copies for the weight gradients come from the same passes. Backward is ``_CudaOps``'."""

    fused_forward = True
    # measured crossover (H100, bench_fused): 256 tokens per expert (qwen3) runs faster swapped,
    # 1024 (dsv3) and 4096 (mixtral) dense, weight pass included
    DENSE_MIN_TOKENS_PER_EXPERT = 512

    def __init__(self, cache: bool = False):
        super().__init__(mx=True, cache=cache)

    def _weight_mx(self, w):
        """Q_row(W) as (e4m3 [E, N, K], plain scales [E, N, K/32])."""
        e, n, k = w.shape
        row = self._weight_row_mx(w)
        return row.data.view(e, n, k), row.scale.view(e, n, k // 32)

    @classmethod
    def dense_weights(cls, tokens: int, experts: int) -> bool:
        """Whether the GEMMs take the weights as exact bf16 (dense mainloop) for this many tokens."""
        return tokens >= cls.DENSE_MIN_TOKENS_PER_EXPERT * experts

    def _weights(self, w, tokens):
        """kwargs for the GEMM's weight operand: MXFP8 (b_q, b_s), or b_dequant when dense."""
        e, n, k = w.shape
        if self.dense_weights(tokens, e):
            b_dequant = self._cached(w, "row_dequant_kperm",
                                     lambda: self._weight_row_mx(w, row_dequant=True).view(e, n, k))
            return dict(b_q=None, b_s=None, b_dequant=b_dequant)
        wq, ws = self._cached(w, "row_mx", lambda: self._weight_mx(w))
        return dict(b_q=wq, b_s=ws)

    def quant_fc1_input(self, x, sizes, want_col):
        """(dequantized Q_row(x), K-permuted bf16; MXFP8 columnwise x or None) in one pass: ``quant``
        with the rowwise output as FC1's ``a_dequant``."""
        x16 = x.to(torch.bfloat16).contiguous()
        return quantize_checked(x16, True, want_col, sizes[0] if want_col else None, sizes[1] if want_col else None,
                                row_dequant=True)

    def fc1_swiglu(self, x_deq, w1, probs, sizes, want_h_col):
        """(bf16 z, dequantized Q_row(h) K-permuted for FC2, MXFP8 columnwise h or None)."""
        p = None if probs is None else probs.to(torch.float32).contiguous()
        out = mx_grouped_gemm_sm90(None, None, offsets=sizes[1], swiglu=True, probs=p, h_dequant=True,
                                   h_col=want_h_col, a_dequant=x_deq, **self._weights(w1, x_deq.shape[0]))
        h_col = MXFP8Tensor(out["h_col"][0], 0, scale=out["h_col"][1], split_sizes=sizes[0]) if want_h_col else None
        return out["z"], out["h_dequant"], h_col

    def fc2(self, h_deq, w2, sizes):
        return mx_grouped_gemm_sm90(None, None, offsets=sizes[1], a_dequant=h_deq, **self._weights(w2, h_deq.shape[0]))


def _ops_for(decision: dispatch.Decision, act_dtype: torch.dtype):
    if decision.path == dispatch.FUSED_SM90:
        return _FusedSm90Ops(_cache_weights())
    if decision.path in (dispatch.BF16, dispatch.MXFP8_UNFUSED):
        return _CudaOps(decision.mxfp8, decision.mxfp8 and _cache_weights())
    if decision.path == dispatch.REFERENCE:
        # fp32 math; stored activations (z, h, dz) rounded to the input dtype like a kernel would
        return _RefOps(decision.mxfp8, torch.float32, act_dtype)
    raise NotImplementedError(f"path {decision.path} has no implementation in this build")


def _cache_weights() -> bool:
    """Whether the recipe in force keeps quantized weights between calls (``cache_weights``)."""
    recipe = get_recipe()
    return recipe is not None and recipe.cache_weights


# --- SwiGLU with gate/up interleaved in 32-wide blocks (REFERENCE §3) -----------------------------

def _split_gate_up(z):
    t, h2 = z.shape
    v = z.view(t, h2 // (2 * GLU_BLOCK), 2, GLU_BLOCK)
    return v[:, :, 0, :].reshape(t, h2 // 2), v[:, :, 1, :].reshape(t, h2 // 2)


def swiglu(z: torch.Tensor, probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``h_j = p * silu(g_j) * u_j`` with g the first of each 32-pair of ``z``'s columns."""
    g, u = _split_gate_up(z)
    h = torch.nn.functional.silu(g) * u
    return h if probs is None else h * probs.unsqueeze(1).to(h.dtype)


def dswiglu(dh, z, probs=None):
    """Gradients of :func:`swiglu`: (dz interleaved like z, dprobs or None)."""
    g, u = _split_gate_up(z)
    sig = torch.sigmoid(g)
    silu = g * sig
    p = 1.0 if probs is None else probs.unsqueeze(1).to(g.dtype)
    du = dh * p * silu
    dg = dh * p * u * sig * (1 + g * (1 - sig))
    blocks = (z.shape[0], z.shape[1] // (2 * GLU_BLOCK), GLU_BLOCK)
    dz = torch.stack([dg.reshape(blocks), du.reshape(blocks)], dim=2).reshape(z.shape)
    dp = None if probs is None else (dh * silu * u).sum(dim=1)
    return dz, dp


# --- autograd functions --------------------------------------------------------------------------

def _linear_forward(ops, x, weight, sizes, want_x_col):
    """(y, MXFP8 columnwise x or None): the forward of the autograd function and of no-grad calls."""
    x_row, x_col = ops.quant(x, sizes, row=True, col=want_x_col)
    return ops.gmm(ops.deq(x_row), ops.weight(weight), sizes), x_col


def _mlp_forward(ops, x, w1, w2, probs, sizes, want_x_col, want_h_col):
    """(y, z, columnwise x or None, columnwise h or None): the forward of the autograd function and
    of no-grad calls (which want no columnwise copies: those are for the weight gradients)."""
    if getattr(ops, "fused_forward", False):
        x_deq, x_col = ops.quant_fc1_input(x, sizes, want_x_col)
        z, h_deq, h_col = ops.fc1_swiglu(x_deq, w1, probs, sizes, want_h_col)
        return ops.fc2(h_deq, w2, sizes), z, x_col, h_col
    x_row, x_col = ops.quant(x, sizes, row=True, col=want_x_col)
    z = ops.round_act(ops.gmm(ops.deq(x_row), ops.weight(w1), sizes).to(ops.dtype))
    h = ops.round_act(swiglu(z.to(ops.dtype), probs))  # SwiGLU in fp32 from the stored z
    h_row, h_col = ops.quant(h, sizes, row=True, col=want_h_col)
    return ops.gmm(ops.deq(h_row), ops.weight(w2), sizes), z, x_col, h_col


def _records_grad(*tensors) -> bool:
    """Whether autograd records this call (else it runs without the autograd function's bookkeeping)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _GroupedLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, split_sizes, ops):
        sizes = ops.grouping(split_sizes, x.shape[0])
        y, x_col = _linear_forward(ops, x, weight, sizes, weight.requires_grad)
        ctx.ops, ctx.sizes, ctx.x_col = ops, sizes, x_col
        ctx.save_for_backward(weight)
        ctx.x_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        ops, sizes = ctx.ops, ctx.sizes
        dy_row, dy_col = ops.quant(dy, sizes, row=ctx.needs_input_grad[0], col=ctx.needs_input_grad[1])
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = ops.gmm_dgrad(ops.deq(dy_row), ops.weight(weight, colwise=True), sizes).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = ops.gmm_wgrad(ops.deq(dy_col), ops.deq(ctx.x_col), sizes).to(weight.dtype)
        return dx, dw, None, None


class _GroupedMLPFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2, probs, split_sizes, ops):
        sizes = ops.grouping(split_sizes, x.shape[0])
        y, z, x_col, h_col = _mlp_forward(ops, x, w1, w2, probs, sizes, w1.requires_grad, w2.requires_grad)
        ctx.ops, ctx.sizes, ctx.x_col, ctx.h_col, ctx.x_dtype = ops, sizes, x_col, h_col, x.dtype
        ctx.save_for_backward(w1, w2, probs, z)  # z as stored: bf16 on CUDA, rounded like bf16 on the reference path
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        w1, w2, probs, z = ctx.saved_tensors
        ops, sizes = ctx.ops, ctx.sizes
        need_x, need_w1, need_w2, need_p = ctx.needs_input_grad[:4]
        dy_row, dy_col = ops.quant(dy, sizes, row=True, col=need_w2)
        dh = ops.gmm_dgrad(ops.deq(dy_row), ops.weight(w2, colwise=True), sizes).to(ops.dtype)
        dz, dp = dswiglu(dh, z.to(ops.dtype), probs)
        dz = ops.round_act(dz)
        dz_row, dz_col = ops.quant(dz, sizes, row=need_x, col=need_w1)
        dx = ops.gmm_dgrad(ops.deq(dz_row), ops.weight(w1, colwise=True), sizes).to(ctx.x_dtype) if need_x else None
        dw1 = ops.gmm_wgrad(ops.deq(dz_col), ops.deq(ctx.x_col), sizes).to(w1.dtype) if need_w1 else None
        dw2 = ops.gmm_wgrad(ops.deq(dy_col), ops.deq(ctx.h_col), sizes).to(w2.dtype) if need_w2 else None
        dp = dp.to(probs.dtype) if (need_p and dp is not None) else None
        return dx, dw1, dw2, dp, None, None


# --- public API ----------------------------------------------------------------------------------

def _check_tensor(t, name, dims, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be a floating tensor (bf16/fp16/fp32/fp64), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like x, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_finite(weights=(), **tensors):
    """A device reduction and one sync per tensor: part of the optional value checks. ``weights``
    ((name, tensor) pairs): checked once per weight version when the recipe caches weights."""
    if not split_size_checks_enabled():
        return
    memo = _cache_weights()
    for name, t, once_per_version in [(*nt, False) for nt in tensors.items()] + [(*nt, memo) for nt in weights]:
        if t is None or not t.numel():
            continue
        finite = lambda t=t: bool(torch.isfinite(t).all())  # noqa: E731
        if not (cached_weight(t, "finite", finite) if once_per_version else finite()):
            raise ValueError(f"{name} contains NaN or Inf")


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, split_sizes: torch.Tensor) -> torch.Tensor:
    """``y[t] = x[t] @ weight[e(t)].T`` for tokens sorted by expert.

    x ``[T, K]``, weight ``[E, N, K]``, split_sizes ``[E]`` integer (tokens per expert, >= 0, sum T).
    Under ``autocast(MXFP8BlockScaling())`` the operands are MXFP8 as REFERENCE §4 says.
    """
    _check_tensor(x, "x", 2)
    _check_tensor(weight, "weight", 3, x.device)
    if weight.shape[2] != x.shape[1]:
        raise ValueError(f"weight must be [E, N, K={x.shape[1]}] to match x [T, K], got {tuple(weight.shape)}")
    split_sizes = check_split_sizes_arg(split_sizes, x.shape[0], x.device, weight.shape[0])
    _check_finite(weights=(("weight", weight),), x=x)
    decision = dispatch.decide(x.device, x.dtype, x.shape[1], weight.shape[1])
    ops = _ops_for(decision, x.dtype)
    if not _records_grad(x, weight):
        return _linear_forward(ops, x, weight, ops.grouping(split_sizes, x.shape[0]), False)[0].to(x.dtype)
    return _GroupedLinearFn.apply(x, weight, split_sizes, ops)


def grouped_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    split_sizes: torch.Tensor,
    probs: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MoE expert MLP: FC1 (``w1`` ``[E, 2H, K]``, gate/up interleaved in 32-row blocks) ->
    ``h = probs * silu(gate) * up`` -> FC2 (``w2`` ``[E, K, H]``). x ``[T, K]`` sorted by expert,
    split_sizes ``[E]``, probs ``[T]`` (router weights, optional; gets a gradient)."""
    _check_tensor(x, "x", 2)
    _check_tensor(w1, "w1", 3, x.device)
    _check_tensor(w2, "w2", 3, x.device)
    e, h2, k = w1.shape
    if k != x.shape[1]:
        raise ValueError(f"w1 must be [E, 2H, K={x.shape[1]}] to match x [T, K], got {tuple(w1.shape)}")
    if h2 % (2 * GLU_BLOCK):
        raise ValueError(f"w1's 2H must be a multiple of {2 * GLU_BLOCK} (gate/up interleaved in 32-row blocks), got {h2}")
    if tuple(w2.shape) != (e, k, h2 // 2):
        raise ValueError(f"w2 must be [E={e}, K={k}, H={h2 // 2}], got {tuple(w2.shape)}")
    if probs is not None:
        _check_tensor(probs, "probs", 1, x.device)
        if probs.shape[0] != x.shape[0]:
            raise ValueError(f"probs must be [T={x.shape[0]}], got {tuple(probs.shape)}")
    split_sizes = check_split_sizes_arg(split_sizes, x.shape[0], x.device, e)
    _check_finite(weights=(("w1", w1), ("w2", w2)), x=x, probs=probs)
    decision = dispatch.decide(x.device, x.dtype, k, k, hidden=h2 // 2)
    ops = _ops_for(decision, x.dtype)
    if not _records_grad(x, w1, w2, probs):  # inference, decode: no autograd bookkeeping, no columnwise copies
        return _mlp_forward(ops, x, w1, w2, probs, ops.grouping(split_sizes, x.shape[0]), False, False)[0].to(x.dtype)
    return _GroupedMLPFn.apply(x, w1, w2, probs, split_sizes, ops)


def last_decision(x: torch.Tensor, w1: torch.Tensor, w2: Optional[torch.Tensor] = None) -> dispatch.Decision:
    """The :class:`~cute_moe.dispatch.Decision` a call with these tensors makes right now."""
    if w2 is None:
        return dispatch.decide(x.device, x.dtype, x.shape[1], w1.shape[1])
    return dispatch.decide(x.device, x.dtype, x.shape[1], x.shape[1], hidden=w1.shape[1] // 2)
