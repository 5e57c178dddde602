"""The FC1 epilogue's SiLU (``activation.silu_exact``) on every bf16 value, bit for bit against
torch's fp32 ``silu`` (the reference SwiGLU's math), on the GPU."""

import cutlass
import cutlass.cute as cute
import pytest
import torch
from cutlass import Float32, Int32, Uint32

from cute_moe.kernels.common.activation import silu_exact
from cute_moe.kernels.compile import gmem_ptr, stream_arg, target_arch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]

WORDS = 4  # bf16 pairs per thread, as the epilogue passes them (8 values: one row chunk)
THREADS = 128


class _SiluProbe:
    """Each thread: WORDS bf16 pairs in, 2 * WORDS fp32 silu values out."""

    @cute.jit
    def __call__(self, src: cute.Pointer, dst: cute.Pointer, blocks: Int32, stream):
        self.kernel(src, dst).launch(grid=[blocks, 1, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, src: cute.Pointer, dst: cute.Pointer):
        tidx, _, _ = cute.arch.thread_idx()
        bid, _, _ = cute.arch.block_idx()
        w0 = (bid * THREADS + tidx) * WORDS
        s = cute.make_tensor(src, cute.make_layout(1 << 30))
        d = cute.make_tensor(dst, cute.make_layout(1 << 30))
        vals = silu_exact([Uint32(s[w0 + i]) for i in range(WORDS)])
        for j in cutlass.range_constexpr(2 * WORDS):
            d[2 * w0 + j] = vals[j]


def _run(words: torch.Tensor) -> torch.Tensor:
    out = torch.full((2 * words.numel(),), float("nan"), device=words.device)
    args = (gmem_ptr(Uint32, words), gmem_ptr(Float32, out), Int32(words.numel() // (THREADS * WORDS)))
    kern = cute.compile[cute.GPUArch(target_arch(words.device))](_SiluProbe(), *args, stream_arg())
    kern(*args, stream_arg(torch.cuda.current_stream()))
    return out


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "shuffled"])
def test_silu_every_bf16_value_bit_exact(shuffle):
    bits = torch.arange(1 << 16, dtype=torch.int32)
    if shuffle:  # slow-path values (zeros, tiny, huge, inf, NaN) mixed into groups of ordinary ones
        bits = bits[torch.randperm(bits.numel(), generator=torch.Generator().manual_seed(0))]
    x = bits.to(torch.int16).view(torch.bfloat16).cuda()
    got = _run(x.view(torch.int32))
    want = torch.nn.functional.silu(x.float())
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    mismatch = (got.view(torch.int32) != want.view(torch.int32)) & ~nan
    assert not mismatch.any(), f"{int(mismatch.sum())} values differ, e.g. x={x[mismatch][:4].tolist()}"
