"""The word layout the Triton kernels read (`ttqkern.backends.words`): exact, and a view when it can be."""

from __future__ import annotations

import pytest
import torch

from ttqkern import reference
from ttqkern.backends import words


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(
    "g,K", [(128, 4096), (128, 300), (64, 200), (32, 96), (37, 100), (48, 150), (16, 70), (200, 200)]
)
def test_word_plan_round_trips_the_codes(bits, g, K):
    N = 5
    pw = reference.quantize(torch.randn(N, K), None, bits, g, False, "float", 1.0)
    plan = words.word_plan(pw)
    assert torch.equal(words.words_to_codes(plan, N, K), pw.codes())
    assert plan.group_padded % plan.CC == 0 and plan.group_padded - g < plan.CC
    assert plan.n_chunks == pw.num_groups * plan.chunks_per_group
    aligned = words.is_word_aligned(bits, g)
    assert plan.padded == (not aligned)
    if aligned:  # the canonical bytes themselves, reinterpreted: no copy
        assert plan.planes[0].data_ptr() == pw.qweight.data_ptr()
        if bits == 3:
            assert plan.planes[1].data_ptr() == pw.qweight_hi.data_ptr()
    for t, w in zip(plan.planes, plan.words_per_chunk, strict=True):
        assert t.dtype == torch.int32 and t.shape == (N, plan.n_chunks * w)


def test_chunk_sizes_are_16_bytes_of_the_widest_plane():
    for bits, cc in ((2, 64), (3, 64), (4, 32), (8, 16)):
        assert words.chunk_codes(bits) == cc
        assert max(cc * b // 8 for b in words.PLANE_BITS[bits]) == 16
