// Decode prologue: x / D as tensor-core B fragments, their tile sums, and x A^T partials.
#pragma once
#include "ttq_common.cuh"

namespace ttq {

struct PrologueArgs {
  const void* x;   // [T][K] activations (XE)
  const float* D;  // [K] or null
  const void* A;   // [R][K] low-rank factor (XE) or null
  u32* xb;         // [TP][4][KB * 16][UW] 32-bit words
  float* xs1;      // [KB * 16][TP] tile sums
  float* xs4;      // [KB * 4][TP] step sums
  float* xa;       // [NBX][TP][R] x A^T over K slices
  u32* fl;         // [TP / 16][KB] per 16 tokens and 256 codes: bit tt set when token 16 y + tt is flagged
  int T, K, TP, KB, R, KX, NBX, has_D;
};

// Grid (KB + NBX, TP / 16), block 256 threads (8 warps).  Block y owns tokens [16 y, + 16).
//
// Blocks x < KB: 256 codes of K, one thread per k.  x~ = x / D is computed in fp32 with
// an IEEE division (as the reference), rounded once to the MMA operand type (fp16; bf16;
// for fp32 activations bf16 hi + mid + lo, which is x~ exactly: 3 x 8 significant bits,
// every part a normal bf16 for |x~| >= 2^-100) and stored where lane
// (gID, t) of the decode kernel finds its B fragment: per token and lane t, the tiles
// of all K in order (the decode loop walks them with one pointer), 4 (or 8) values each.  Tokens >= T and k >= K are stored
// as 0.  Tile sums of the rounded values (fixed shuffle tree over 16 lanes) and step
// sums (4 tiles, in order) feed the decode kernel's m0 * X~ term.  Tokens whose x~ the
// operands cannot carry within the error bound (docs/numerics.md, rule Q2) are flagged per
// block (one word per 16 tokens: no atomics, nothing to clear between calls) and take the
// decode kernel's exact path: finite |x~| > 2^64 (sums of x~ (u - c) before the scale could
// overflow fp32; below, K 255 2^64 cannot), fp16 overflow (|x~| >= 65520), and values
// below the operand's normal range (bf16: 2^-126; the fp32 planes: 2^-100, where mid and
// lo stay normal).  nan and inf are not flagged: they make the outputs nan on either path.
// Bytes per k: 16 T_slice x reads (2-4 B) + 4 of D; writes 2-6 B per token + sums.
//
// Blocks x >= KB: K slice [p KX, + KX) of x A^T: warp w computes rows r = w, w + 8, ...
// of A against the 16 tokens (lanes stride K, fp32, shuffle tree), one partial per
// (slice, token, r); the decode kernel adds the NBX partials in order (deterministic,
// no atomics).  Bytes: KX (R + 16) elements per block, mostly from L2.
template <int XM, class XE>
struct Prologue {
  static constexpr int NB = XM == XM_BF16X2 ? 3 : 1;
  static constexpr int UH = 4 * NB;  // 16-bit values per lane and tile
  static constexpr int SMEM_FLOATS = 256 + 8;  // static shared memory: tile sums [16][16], flags per warp

  // x~ (finite) that the MMA operands of this mode cannot carry: see the comment above
  static TTQ_FN bool extreme(float xv) {
    const float ax = abs_f(xv);
    if (!is_finite(ax)) return false;
    if (XM == XM_F16) return ax >= 65520.0f;  // rounds to fp16 inf
    const float tiny = XM == XM_BF16 ? as_f32(0x00800000u) : as_f32(0x0D800000u);  // 2^-126, 2^-100
    return ax > as_f32(0x5F800000u) || (ax != 0.0f && ax < tiny);                   // 2^64
  }

  template <class W>
  static TTQ_FN void run(const PrologueArgs& a, W& w) {
    if (w.bx < a.KB)
      scale(a, w);
    else
      lowrank(a, w);
  }

  template <class W>
  static TTQ_FN void scale(const PrologueArgs& a, W& w) {
    float* tsum = w.smem;  // [16 tokens][16 tiles]
    const typename XE::T* x = static_cast<const typename XE::T*>(a.x);
    u16* xb16 = reinterpret_cast<u16*>(a.xb);
    const int kb = w.bx;
    u32 flags[W::N];  // bit tt: this thread's x~ of token tt is extreme
    FOR_LANES(li) flags[li] = 0u;
    for (int tt = 0; tt < 16; ++tt) {
      const int tok = w.by * 16 + tt;
      float v[W::N];
      FOR_LANES(li) {
        const int kk = w.warp * 32 + w.lane(li), k = kb * 256 + kk;
        const int jb = kk >> 4, kt = kk & 15, t4 = (kt & 7) >> 1, slot = (kt & 1) + 2 * (kt >> 3);
        float xv = 0.0f;
        if (tok < a.T && k < a.K) {
          xv = XE::load(x, (i64)tok * a.K + k);
          if (a.has_D) xv = div_rn(xv, a.D[k]);
        }
        if (extreme(xv)) flags[li] |= 1u << tt;
        u16* dst = xb16 + (((i64)tok * 4 + t4) * (a.KB * 16) + kb * 16 + jb) * UH + slot;
        if (XM == XM_F16) {
          const u32 h = f32_to_f16(xv);
          dst[0] = (u16)h;
          v[li] = f16_to_f32(h);
        } else if (XM == XM_BF16) {
          const u32 h = f32_to_bf16(xv);
          dst[0] = (u16)h;
          v[li] = bf16_to_f32(h);
        } else {  // hi + mid + lo: each remainder is exact in fp32, and lo holds the last 8 bits
          const u32 hi = f32_to_bf16(xv);
          const float r1 = xv - bf16_to_f32(hi);
          const u32 mid = f32_to_bf16(r1);
          const float r2 = r1 - bf16_to_f32(mid);
          const u32 lo = f32_to_bf16(r2);
          dst[0] = (u16)hi;
          dst[4] = (u16)mid;
          dst[8] = (u16)lo;
          v[li] = (bf16_to_f32(hi) + bf16_to_f32(mid)) + bf16_to_f32(lo);
        }
      }
      for (int m = 8; m >= 1; m >>= 1) {  // sum over the 16 lanes of a tile
        float o[W::N];
        FOR_LANES(li) o[li] = v[li];
        w.shfl_xor(o, m);
        FOR_LANES(li) v[li] += o[li];
      }
      FOR_LANES(li) {
        const int kk = w.warp * 32 + w.lane(li);
        if ((kk & 15) == 0) {
          a.xs1[((i64)kb * 16 + (kk >> 4)) * a.TP + tok] = v[li];
          tsum[tt * 16 + (kk >> 4)] = v[li];
        }
      }
    }
    for (int m = 16; m >= 1; m >>= 1) {  // the block's flags: OR over the warp, then over the warps
      u32 o[W::N];
      FOR_LANES(li) o[li] = flags[li];
      w.shfl_xor(o, m);
      FOR_LANES(li) flags[li] |= o[li];
    }
    u32* wflags = reinterpret_cast<u32*>(tsum + 256);
    FOR_LANES(li) if (w.lane(li) == 0) wflags[w.warp] = flags[li];
    w.sync();
    FOR_LANES(li) {
      const int tid = w.warp * 32 + w.lane(li);
      if (tid == 0) {
        u32 f = 0u;
        for (int q = 0; q < w.nwarps; ++q) f |= wflags[q];
        a.fl[(i64)w.by * a.KB + kb] = f;
      }
      if (tid < 64) {
        const int tt = tid >> 2, q = tid & 3;
        const float* ts = tsum + tt * 16 + 4 * q;
        a.xs4[((i64)kb * 4 + q) * a.TP + w.by * 16 + tt] = ((ts[0] + ts[1]) + ts[2]) + ts[3];
      }
    }
  }

  template <class W>
  static TTQ_FN void lowrank(const PrologueArgs& a, W& w) {
    const typename XE::T* x = static_cast<const typename XE::T*>(a.x);
    const typename XE::T* A = static_cast<const typename XE::T*>(a.A);
    const int p = w.bx - a.KB;
    const int k_lo = p * a.KX, k_hi = imin(a.K, k_lo + a.KX);
    for (int r = w.warp; r < a.R; r += w.nwarps) {
      float acc[16][W::N];
      for (int tt = 0; tt < 16; ++tt) FOR_LANES(li) acc[tt][li] = 0.0f;
      FOR_LANES(li) {
        for (int k = k_lo + w.lane(li); k < k_hi; k += 32) {
          const float av = XE::load(A, (i64)r * a.K + k);
          for (int tt = 0; tt < 16; ++tt) {
            const int tok = w.by * 16 + tt;
            if (tok < a.T) acc[tt][li] += XE::load(x, (i64)tok * a.K + k) * av;
          }
        }
      }
      for (int tt = 0; tt < 16; ++tt) {
        for (int m = 16; m >= 1; m >>= 1) {
          float o[W::N];
          FOR_LANES(li) o[li] = acc[tt][li];
          w.shfl_xor(o, m);
          FOR_LANES(li) acc[tt][li] += o[li];
        }
        FOR_LANES(li) if (w.lane(li) == 0) a.xa[((i64)p * a.TP + w.by * 16 + tt) * a.R + r] = acc[tt][li];
      }
    }
  }
};

}  // namespace ttq
