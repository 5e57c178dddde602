"""``nn.Module`` front ends holding each expert weight as one packed ``[E, out, in]`` parameter."""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import grouped_linear, grouped_mlp


def _init_experts_(w: torch.Tensor) -> torch.Tensor:
    # each expert's [out, in] slice gets nn.Linear's default (kaiming-uniform, a=sqrt(5)):
    # U(-1/sqrt(in), 1/sqrt(in))
    bound = 1.0 / math.sqrt(w.shape[-1])
    with torch.no_grad():
        return w.uniform_(-bound, bound)


class GroupedLinear(nn.Module):
    """E experts of ``in_features -> out_features`` without bias; ``forward(x, split_sizes)``."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, device=None, dtype=torch.bfloat16):
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_experts_(self.weight)

    def forward(self, x: torch.Tensor, split_sizes: torch.Tensor) -> torch.Tensor:
        return grouped_linear(x, self.weight, split_sizes)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


class GroupedMLP(nn.Module):
    """E SwiGLU expert MLPs ``hidden -> 2*ffn (gate/up interleaved by 32) -> ffn -> hidden``.

    ``w1`` ``[E, 2*ffn, hidden]``, ``w2`` ``[E, hidden, ffn]``; ``forward(x, split_sizes, probs=None)``.
    Load an ordinary ``[gate; up]`` checkpoint with :func:`cute_moe.interleave_gate_up`.
    """

    def __init__(self, num_experts: int, hidden_size: int, ffn_size: int, device=None, dtype=torch.bfloat16):
        super().__init__()
        if ffn_size % 32:
            raise ValueError(f"ffn_size must be a multiple of 32 (gate/up interleave), got {ffn_size}")
        self.num_experts, self.hidden_size, self.ffn_size = num_experts, hidden_size, ffn_size
        self.w1 = nn.Parameter(torch.empty(num_experts, 2 * ffn_size, hidden_size, device=device, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, ffn_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_experts_(self.w1)
        _init_experts_(self.w2)

    def forward(self, x: torch.Tensor, split_sizes: torch.Tensor, probs=None) -> torch.Tensor:
        return grouped_mlp(x, self.w1, self.w2, split_sizes, probs)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, ffn_size={self.ffn_size}"
