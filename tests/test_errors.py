"""Bad input gets a clear Python error naming the argument, before any kernel launch."""

import pytest
import torch

import cute_moe
from cute_moe import grouped_linear, grouped_mlp
from cute_moe.quant import quantize_mxfp8


def _mlp_args(t=40, e=2, k=64, h=64):
    return (torch.randn(t, k).bfloat16(), torch.randn(e, 2 * h, k).bfloat16(), torch.randn(e, k, h).bfloat16(), torch.tensor([t // 2, t - t // 2]))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][:, :32].contiguous(), *a[1:]), "w1 must be"),
        (lambda a: (a[0].int(), *a[1:]), "x must be a floating"),
        (lambda a: (a[0].t().contiguous().t(), *a[1:]), "x must be contiguous"),
        (lambda a: (a[0], a[1][:, :100].contiguous(), *a[2:]), "multiple of 64"),
        (lambda a: (a[0], a[1], a[2][:, :, :32].contiguous(), a[3]), "w2 must be"),
        (lambda a: (a[0], a[1].unsqueeze(0), *a[2:]), "w1 must be 3-D"),
        (lambda a: (*a[:3], torch.tensor([-1, 41])), "must be >= 0"),
        (lambda a: (*a[:3], torch.tensor([10, 10])), "sum to the number of tokens 40"),
        (lambda a: (*a[:3], torch.tensor([40])), "one entry per expert"),
        (lambda a: (*a[:3], torch.tensor([20.0, 20.0])), "int32 or int64|int32/int64"),
        (lambda a: (*a[:3], [[20, 20]]), "1-D"),
        (lambda a: (a[0].index_fill(0, torch.tensor([3]), float("nan")), *a[1:]), "x contains NaN or Inf"),
        (lambda a: (a[0], a[1].index_fill(0, torch.tensor([1]), float("inf")), *a[2:]), "w1 contains NaN or Inf"),
    ],
)
def test_grouped_mlp_bad_inputs(mutate, match):
    with pytest.raises((ValueError, TypeError), match=match):
        grouped_mlp(*mutate(_mlp_args()))


def test_device_mismatch():
    x, w1, w2, s = _mlp_args()
    with pytest.raises(ValueError, match="w1 must be on cpu like x"):
        grouped_mlp(x, w1.to("meta"), w2, s)
    with pytest.raises(ValueError, match="probs must be on cpu like x"):
        grouped_mlp(x, w1, w2, s, probs=torch.rand(40, device="meta"))


def test_bad_probs_and_linear():
    x, w1, w2, s = _mlp_args()
    with pytest.raises(ValueError, match="probs must be"):
        grouped_mlp(x, w1, w2, s, probs=torch.rand(39))
    with pytest.raises(ValueError, match="weight must be"):
        grouped_linear(x, torch.randn(2, 16, 32).bfloat16(), s)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        grouped_linear(x, None, s)


def test_value_checks_can_be_disabled_for_cuda_split_sizes():
    cute_moe.set_split_size_checks(False)
    try:
        # CPU split sizes are always checked: reading them costs nothing
        with pytest.raises(ValueError, match="sum"):
            grouped_mlp(*_mlp_args()[:3], torch.tensor([1, 1]))
    finally:
        cute_moe.set_split_size_checks(True)


def test_quantize_front_door_errors():
    with pytest.raises(ValueError, match="2-D"):
        quantize_mxfp8(torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="at least one"):
        quantize_mxfp8(torch.zeros(2, 32), rowwise=False)
    with pytest.raises(ValueError, match="sum"):
        quantize_mxfp8(torch.zeros(4, 32), split_sizes=torch.tensor([1, 2]))


def test_mx_grouped_gemm_argument_errors():
    """The SM90 MX GEMM's launcher rejects bad arguments before touching a device (CPU tensors)."""
    from cute_moe.kernels.quantize import quantize_mxfp8_cuda
    from cute_moe.kernels.sm90.mx_grouped_gemm import mx_grouped_gemm_sm90

    f8 = torch.float8_e4m3fn
    t, e, n, k = 5, 2, 256, 256
    a_q, a_s = torch.zeros(t, k, dtype=f8), torch.zeros(t, k // 32, dtype=torch.uint8)
    b_q, b_s = torch.zeros(e, n, k, dtype=f8), torch.zeros(e, n, k // 32, dtype=torch.uint8)
    offsets = torch.tensor([0, 2, 5], dtype=torch.int32)
    a_deq = torch.zeros(t, k, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not both"):
        mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets, a_dequant=a_deq)
    with pytest.raises(ValueError, match="a_dequant must be"):
        mx_grouped_gemm_sm90(None, None, b_q, b_s, offsets, a_dequant=a_deq.float())
    with pytest.raises(ValueError, match="required"):
        mx_grouped_gemm_sm90(a_q, None, b_q, b_s, offsets)
    k3 = 192  # a multiple of 64 but not of 128
    with pytest.raises(ValueError, match="multiple of 128"):
        b3_q, b3_s = torch.zeros(e, n, k3, dtype=f8), torch.zeros(e, n, k3 // 32, dtype=torch.uint8)
        mx_grouped_gemm_sm90(None, None, b3_q, b3_s, offsets, a_dequant=torch.zeros(t, k3, dtype=torch.bfloat16))
    b_deq = torch.zeros(e, n, k, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="b_dequant needs a_dequant"):
        mx_grouped_gemm_sm90(a_q, a_s, None, None, offsets, b_dequant=b_deq)
    with pytest.raises(ValueError, match="not both"):
        mx_grouped_gemm_sm90(None, None, b_q, b_s, offsets, a_dequant=a_deq, b_dequant=b_deq)
    with pytest.raises(ValueError, match="b_dequant must be"):
        mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=a_deq, b_dequant=b_deq.float())
    with pytest.raises(ValueError, match=r"\[E, N, K\]"):
        mx_grouped_gemm_sm90(None, None, None, None, offsets, a_dequant=a_deq, b_dequant=b_deq[:, :, :128])
    with pytest.raises(ValueError, match="required unless b_dequant"):
        mx_grouped_gemm_sm90(None, None, b_q, None, offsets, a_dequant=a_deq)
    with pytest.raises(ValueError, match="not both"):
        mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets, swiglu=True, h_row=True, h_dequant=True)
    with pytest.raises(ValueError, match="swiglu"):
        mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets, h_dequant=True)
    with pytest.raises(ValueError, match="row_dequant"):
        quantize_mxfp8_cuda(torch.zeros(4, 96, dtype=torch.bfloat16), row_dequant=True)
    with pytest.raises(ValueError, match="CUDA device"):  # well-formed, but not on a GPU
        mx_grouped_gemm_sm90(a_q, a_s, b_q, b_s, offsets)
