"""python -m cute_moe.demo — train a small MoE MLP in MXFP8 and watch the loss fall.

Tokens go through a learned top-2 router, are sorted by expert, run through ``GroupedMLP`` under
``autocast(MXFP8BlockScaling())`` (forward and backward in MXFP8), and are combined back. The
target is a fixed random teacher network, so the loss has somewhere to go. On a CPU this runs the
reference path; on a CUDA GPU (sm90+) the CuTe DSL kernels. The path and its reason are printed.
"""

from __future__ import annotations

import argparse
import time

import torch

import cute_moe
from cute_moe import GroupedMLP, MXFP8BlockScaling, autocast


class MoE(torch.nn.Module):
    def __init__(self, experts, hidden, ffn, topk, device, dtype):
        super().__init__()
        self.topk = topk
        self.router = torch.nn.Linear(hidden, experts, bias=False, device=device, dtype=torch.float32)
        self.experts = GroupedMLP(experts, hidden, ffn, device=device, dtype=dtype)

    def forward(self, x):
        e = self.experts.num_experts
        scores = torch.softmax(self.router(x.float()), dim=-1)
        probs, idx = scores.topk(self.topk, dim=-1)
        probs = probs / probs.sum(-1, keepdim=True)
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)  # tokens sorted by expert
        token_of = order // self.topk
        split_sizes = torch.bincount(flat_idx, minlength=e)
        y_sorted = self.experts(x[token_of], split_sizes, probs.reshape(-1)[order])
        return torch.zeros_like(x).index_add_(0, token_of, y_sorted.to(x.dtype)), split_sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    big = dev.type == "cuda"
    experts, hidden, ffn, tokens = (8, 512, 512, 4096) if big else (4, 256, 256, 512)
    dtype = torch.bfloat16
    model = MoE(experts, hidden, ffn, topk=2, device=dev, dtype=dtype)
    teacher = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x_probe = torch.randn(tokens, hidden, device=dev, dtype=dtype)
    with autocast(recipe=MXFP8BlockScaling()):
        print(f"cute_moe demo on {dev} ({torch.cuda.get_device_name(dev) if big else 'CPU'}): "
              f"{experts} experts, hidden {hidden}, ffn {ffn}, {tokens} tokens, top-2, bf16 + MXFP8")
        print("path:", cute_moe.explain(x_probe, model.experts))
        first = last = None
        t0 = time.perf_counter()
        for step in range(args.steps):
            x = torch.randn(tokens, hidden, device=dev, dtype=dtype)
            with torch.no_grad():
                target = teacher(x.float())
            y, split_sizes = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
            last = loss.item()
            if step % 5 == 0 or step == args.steps - 1:
                print(f"step {step:3d}  loss {last:.5f}  tokens/expert {split_sizes.tolist()}")
        dt = time.perf_counter() - t0
    print(f"loss {first:.5f} -> {last:.5f} ({'falling' if last < first else 'NOT falling'}) in {dt:.1f} s")
    return first, last


if __name__ == "__main__":
    main()
