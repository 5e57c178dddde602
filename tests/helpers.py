"""Shared test helpers: random MoE problems and the error measures every path is held to."""

import torch

from cute_moe.reference import grouped_linear_reference, grouped_mlp_reference


def random_sizes(num_experts, mean, gen=None, device="cpu"):
    """Split sizes with zeros, ones and odd counts (not multiples of 32)."""
    sizes = torch.randint(0, 2 * mean + 1, (num_experts,), generator=gen)
    sizes[0] = 0
    if num_experts > 2:
        sizes[1] = 1
        sizes[2] = 33
    return sizes.to(device)


def mlp_problem(e, t_mean, k, h, device="cpu", dtype=torch.bfloat16, probs=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = random_sizes(e, t_mean, gen)
    t = int(sizes.sum())
    x = torch.randn(t, k, generator=gen).to(device, dtype)
    w1 = (torch.randn(e, 2 * h, k, generator=gen) / k**0.5).to(device, dtype)
    w2 = (torch.randn(e, k, h, generator=gen) / h**0.5).to(device, dtype)
    p = torch.rand(t, generator=gen).to(device, torch.float32) if probs else None
    dy = torch.randn(t, k, generator=gen).to(device, dtype)
    return sizes.to(device), x, w1, w2, p, dy


def run_mlp(fn, x, w1, w2, sizes, p, dy):
    """Forward + backward; returns [y, dx, dw1, dw2, dp] (dp None without probs)."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w2)]
    pl = None if p is None else p.detach().clone().requires_grad_()
    y = fn(*leaves, sizes, pl)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad for t in leaves] + [None if pl is None else pl.grad]


def oracle_mlp(x, w1, w2, sizes, p, dy, mx=True, act_dtype=torch.bfloat16):
    """fp64 autograd of the dequantized math (activations rounded to ``act_dtype`` where stored)."""
    f = lambda a, b, c, s, q: grouped_mlp_reference(a, b, c, s, q, mx=mx, dtype=torch.float64, act_dtype=act_dtype)  # noqa: E731
    return run_mlp(f, *(t.detach().cpu().double() for t in (x, w1, w2)), sizes.cpu(), None if p is None else p.detach().cpu().double(), dy.cpu().double())


def oracle_linear(x, w, sizes, dy, mx=True):
    xl, wl = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
    y = grouped_linear_reference(xl, wl, sizes.cpu(), mx=mx, dtype=torch.float64)
    y.backward(dy.cpu().double())
    return [y.detach(), xl.grad, wl.grad]


def rel_err(a, b):
    """Normwise relative error ||a - b|| / ||b|| in fp64 (0 when both are empty or zero)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    denom = b.norm()
    return 0.0 if denom == 0 and a.norm() == 0 else float((a - b).norm() / denom)
