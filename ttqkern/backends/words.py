"""The word layout the Triton kernels read: canonical planes as 32-bit words, in chunks (torch only).

The GPU kernels read a packed weight as int32 words, 16 bytes per thread and
load, and handle it in *chunks*: ``CC`` consecutive codes of one group, i.e.
``CC * b / 32`` words of each plane (4 words for the widest plane).  A chunk
never straddles a group, so one scale and one offset serve all of its codes.

For the usual formats the canonical layout (`ttqkern.format`) already is this
layout: when ``CC`` divides the group size, row ``n`` of a plane is the int32
view of its canonical bytes, with no copy (``view_words``).  Other group sizes
(e.g. g = 37 or 48) are re-packed with every group padded by zero codes to a
multiple of ``CC`` (``padded_words``); the padding is exact and reversible
(``words_to_codes``).  This module imports only torch, so any machine can build
and check the layout.

Per bit width b (planes: b = 3 is a 2-bit ``lo`` and a 1-bit ``hi`` plane):

    b  planes (bits)  CC (codes per chunk)  words per chunk per plane
    2  (2,)           64                    4
    3  (2, 1)         64                    4, 2
    4  (4,)           32                    4
    8  (8,)           16                    4
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format import PackedWeight, pack_bits, unpack_bits

PLANE_BITS = {2: (2,), 3: (2, 1), 4: (4,), 8: (8,)}
CHUNK_CODES = {2: 64, 3: 64, 4: 32, 8: 16}


@dataclass(frozen=True)
class WordPlan:
    """How a `PackedWeight` is read as words.

    planes:  int32 ``[N, n_chunks * words_per_chunk[p]]`` per plane (canonical view or padded copy)
    bits:    bits per code of each plane; ``words_per_chunk[p] = CC * bits[p] / 32``
    CC:      codes per chunk; ``group_padded`` = codes per group as stored (a multiple of CC)
    chunks_per_group: ``group_padded // CC``; ``n_chunks`` = chunks per row (``G * chunks_per_group``)
    padded:  True when the planes are a padded copy rather than a view of the canonical bytes
    """

    planes: tuple[torch.Tensor, ...]
    bits: tuple[int, ...]
    words_per_chunk: tuple[int, ...]
    CC: int
    group_size: int
    group_padded: int
    chunks_per_group: int
    n_chunks: int
    padded: bool


def chunk_codes(bits: int) -> int:
    """Codes per chunk for a bit width: 16 bytes of the widest plane."""
    return CHUNK_CODES[bits]


def is_word_aligned(bits: int, group_size: int) -> bool:
    """Can the canonical bytes be read as words in chunks without a copy?"""
    return group_size % CHUNK_CODES[bits] == 0


def _plane_tensors(pw: PackedWeight) -> tuple[torch.Tensor, ...]:
    return (pw.qweight, pw.qweight_hi) if pw.bits == 3 else (pw.qweight,)


def view_words(pw: PackedWeight) -> WordPlan:
    """The canonical planes of ``pw`` as int32 words (no copy); needs `is_word_aligned`."""
    assert is_word_aligned(pw.bits, pw.group_size), "canonical bytes are not chunk aligned"
    planes = tuple(t.contiguous().view(torch.int32) for t in _plane_tensors(pw))
    return _plan(pw, planes, pw.group_size, False)


def _plan(pw: PackedWeight, planes, gp: int, padded: bool) -> WordPlan:
    CC = CHUNK_CODES[pw.bits]
    bits = PLANE_BITS[pw.bits]
    cpg = gp // CC
    n_chunks = pw.num_groups * cpg
    wpc = tuple(CC * b // 32 for b in bits)
    for t, w in zip(planes, wpc, strict=True):
        assert t.dtype == torch.int32 and tuple(t.shape) == (pw.N, n_chunks * w), (t.shape, n_chunks, w)
    return WordPlan(planes, bits, wpc, CC, pw.group_size, gp, cpg, n_chunks, padded)


def padded_words(pw: PackedWeight) -> WordPlan:
    """Copy of ``pw``'s codes with every group padded by zero codes to a multiple of CC, as words."""
    CC = CHUNK_CODES[pw.bits]
    g, G = pw.group_size, pw.num_groups
    gp = -(-g // CC) * CC
    N = pw.N
    planes = []
    for t, b in zip(_plane_tensors(pw), PLANE_BITS[pw.bits], strict=True):
        u = unpack_bits(t, b, G * g).view(N, G, g)
        u = torch.nn.functional.pad(u, (0, gp - g)).reshape(N, G * gp)
        planes.append(pack_bits(u, b).contiguous().view(torch.int32))
    return _plan(pw, tuple(planes), gp, True)


def word_plan(pw: PackedWeight) -> WordPlan:
    """`view_words` when the canonical bytes are chunk aligned, else `padded_words`."""
    return view_words(pw) if is_word_aligned(pw.bits, pw.group_size) else padded_words(pw)


def words_to_codes(plan: WordPlan, N: int, K: int) -> torch.Tensor:
    """Inverse of the layout: uint8 stored codes ``[N, K]`` (for tests and checks)."""
    G = plan.n_chunks // plan.chunks_per_group
    g, gp = plan.group_size, plan.group_padded
    u = None
    shift = 0
    for t, b in zip(plan.planes, plan.bits, strict=True):
        raw = t.contiguous().view(torch.uint8)
        codes = unpack_bits(raw, b, G * gp).view(N, G, gp)[:, :, :g].reshape(N, G * g)[:, :K]
        u = codes if u is None else u | (codes << shift)
        shift += b
    return u
