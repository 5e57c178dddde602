"""The benchmark shapes, in one place (issue 3; REFERENCE §7), and the benchmarks' JSON results file."""

import json

import torch

SHAPES = {  # training: name -> (experts, tokens per expert, K, H)
    "dsv3_ep8": (32, 1024, 7168, 2048),
    "qwen3_30b": (128, 256, 2048, 768),
    "mixtral_like": (8, 4096, 4096, 14336),
    "qwen3_30b_zipf": (128, 256, 2048, 768),
}
DECODE = {"flash": (256, 4096, 2048), "pro": (384, 7168, 3072)}  # decode (seed 004): experts, K, H
DECODE_BATCHES = (1, 16, 64, 128)
TOPK = 6


def split_sizes(name, e, tpe):
    """Tokens per expert: uniform, or Zipf-like with the last eighth of the experts empty."""
    if not name.endswith("zipf"):
        return torch.full((e,), tpe, dtype=torch.int64)
    w = 1.0 / torch.arange(1, e + 1, dtype=torch.float64) ** 1.1
    sizes = torch.floor(w / w.sum() * e * tpe).to(torch.int64)
    sizes[-e // 8 :] = 0  # some experts empty
    sizes[0] += e * tpe - int(sizes.sum())
    return sizes


def write_results(path, rows, **fields):
    """A benchmark's JSON results: the GPU's name, ``fields`` (anchors such as the copy bandwidth),
    the table's ``rows``. No file when ``path`` is None (no ``--json``)."""
    if path:
        with open(path, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), **fields, rows=rows), f, indent=1)
