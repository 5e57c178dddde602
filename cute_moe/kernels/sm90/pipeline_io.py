"""Pieces of the SM90 grouped GEMM mainloops that do not depend on the operand format."""

from __future__ import annotations

import cutlass.cute as cute


@cute.jit
def load_ab_stage(ab_pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB):
    """Producer (one warp; the TMA atoms elect one thread): wait for a free stage, arm its full
    barrier with the byte count, issue both TMA loads of k-tile ``prod.count``."""
    ab_pipe.producer_acquire(prod)
    bar = ab_pipe.producer_get_barrier(prod)
    cute.copy(tma_a, tAgA[(None, prod.count)], tAsA[(None, prod.index)], tma_bar_ptr=bar)
    cute.copy(tma_b, tBgB[(None, prod.count)], tBsB[(None, prod.index)], tma_bar_ptr=bar)
    ab_pipe.producer_commit(prod)
