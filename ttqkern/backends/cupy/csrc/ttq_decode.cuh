// Decode qmatmul (T = 1..16 tokens per block): y = (x / D) Wq'^T + (x A^T) B^T + bias.
#pragma once
#include "ttq_common.cuh"

namespace ttq {

template <int XM>
struct XIO;
template <>
struct XIO<XM_F16> {
  typedef F16 E;
};
template <>
struct XIO<XM_BF16> {
  typedef BF16 E;
};
template <>
struct XIO<XM_BF16X2> {
  typedef F32 E;
};

struct DecodeArgs {
  const u32* qw;     // cupy_mma codes  [NT][KC][V][32][4] int32
  const float* sc;   // scales          [NT][G][8][2] fp32
  const u32* zp;     // mins (fp32 bits) / zeros (int32) [NT][G][8][2]; unused for FORM_SYM
  const u32* xb;     // x / D as B fragments  [KB][TP][4][16][UW] 32-bit words (prologue)
  const float* xs1;  // per 16-code tile sums of those values [KB * 16][TP]
  const float* xs4;  // per 64-code step sums                 [KB * 4][TP]
  const float* xa;   // x A^T partial sums over K slices      [NBX][TP][R]
  const void* lrB;   // B [N][R] in the activation dtype
  const void* bias;  // bias [N] in the activation dtype
  void* y;           // out [T][N] in the activation dtype
  int N, ntiles, KC, G, g, T, TP, R, NBX, form, has_lr, has_bias, wr, wk, cps;
};

// Grid (ceil(ntiles / (wr * RT)), 1, ceil(T / (8 NT))), block 32 * wr * wk threads.
// Warp (warp_r, warp_k) of block x owns row tiles [(x wr + warp_r) RT, + RT) (16 rows
// each) and chunks [warp_k cps, + cps) of K; block z owns tokens [z 8 NT, + 8 NT).
//
// Packed layout read: cupy_mma (layout.py).  Per row tile and chunk of KCH codes, each
// lane issues V 128-bit loads (LDG.E.128, no L1 allocation) that bring exactly its A
// fragment codes of KCH / 16 tensor-core tiles; a warp's load is 512 contiguous bytes.
// Loads of chunk c + 1 are issued before the tiles of chunk c are computed (register
// double buffering: 2 RT V 512 B in flight per warp).
//
// Per 64 codes of K (a step): the B fragments of x / D (8 or 16 B per lane and tile,
// loaded once per warp and reused by its RT row tiles; lanes of tokens >= T load
// nothing), then per tile and row tile one codes_to_afrag (LOP3 + HFMA2 per code pair)
// and one mma.sync.m16n8k16 per 8 tokens (two for fp32 activations: x / D = hi + lo in
// bf16).  Group boundaries (every g codes; per tile when g % 64 != 0, TG) flush the
// fp32 tile accumulators: y += s * acc + m * X~, with X~ the prologue's per-tile sums
// of the same rounded x / D, so no shuffle and no per-group reduction in the loop.
//
// Epilogue: warps with warp_k > 0 hand their fp32 partials through shared memory
// (floats: (wk - 1) wr RT NT 128), the block reduces the prologue's x A^T partials
// (8 NT R floats), one barrier, then warp_k == 0 adds the partials in a fixed order,
// B[n] . (x A^T) and bias, and stores y in the activation dtype.
//
// Bytes moved per output row: K b / 8 of codes + 8 G of scales and offsets (once), and
// 2 R + 2 of B and bias; x / D is read from L2 once per warp and step; y: 2 T.
template <int BITS, int XM, int NT, int TG, int RT>
struct Decode {
  static constexpr int KCH = Lay<BITS>::KCH, V = Lay<BITS>::V, NWORD = 4 * V, STEPS = KCH / 64;
  static constexpr bool BF = XM != XM_F16;
  static constexpr int NB = XM == XM_BF16X2 ? 2 : 1;  // B planes: x / D, or its bf16 hi and lo parts
  static constexpr int UW = 2 * NB;                   // 32-bit words of x / D per lane and tile
  static constexpr int TS = 8 * NT;                   // tokens per block
  static constexpr float HALF = (float)(1 << (BITS - 1));
  typedef typename XIO<XM>::E E;

  template <class W>
  static TTQ_FN void load_weights(const DecodeArgs& a, const W& w, int mt0, int c, u32 (&wb)[RT][W::N][NWORD]) {
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const int mt = imin(mt0 + r, a.ntiles - 1);  // warps past the last tile load a valid one, store nothing
      const u32* base = a.qw + ((i64)mt * a.KC + c) * (V * 128);
#pragma unroll
      for (int v = 0; v < V; ++v) FOR_LANES(li) ldg128_stream(base + v * 128 + w.lane(li) * 4, &wb[r][li][4 * v]);
    }
  }

  // y += s * acc + m * X~ for group gidx, then clear the group accumulators
  template <class W>
  static TTQ_FN void flush(const DecodeArgs& a, const W& w, int mt0, int gidx, float (&cacc)[RT][NT][W::N][4],
                           float (&xsum)[NT][W::N][2], float (&yacc)[RT][NT][W::N][4]) {
    if (gidx < a.G) {  // the padded tail past the last group holds zero codes and zero x
#pragma unroll
      for (int r = 0; r < RT; ++r) {
        const int mt = imin(mt0 + r, a.ntiles - 1);
        const i64 gb = ((i64)mt * a.G + gidx) * 8;
        FOR_LANES(li) {
          const int gid = w.lane(li) >> 2;
          u32 s2[2], z2[2] = {0, 0};
          ldg64(reinterpret_cast<const u32*>(a.sc) + (gb + gid) * 2, s2);
          if (a.form != FORM_SYM) ldg64(a.zp + (gb + gid) * 2, z2);
          float s[2], m[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            s[h] = as_f32(s2[h]);
            // offsets of w = s u + m as format.PackedWeight.offsets computes them
            m[h] = a.form == FORM_FLOAT ? as_f32(z2[h])
                   : a.form == FORM_INT ? mul_rn(-s[h], (float)(i32)z2[h])
                                        : mul_rn(-s[h], HALF);
          }
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              yacc[r][nt][li][i] += s[i >> 1] * cacc[r][nt][li][i] + m[i >> 1] * xsum[nt][li][i & 1];
              cacc[r][nt][li][i] = 0.0f;
            }
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) xsum[nt][li][0] = xsum[nt][li][1] = 0.0f;
  }

  template <class W>
  static TTQ_FN void run(const DecodeArgs& a, W& w) {
    const int warp_r = w.warp % a.wr, warp_k = w.warp / a.wr;
    const int mt0 = (w.bx * a.wr + warp_r) * RT;
    const int c_begin = warp_k * a.cps, c_end = imin(a.KC, c_begin + a.cps);
    const int tok0 = w.bz * TS;
    float yacc[RT][NT][W::N][4], cacc[RT][NT][W::N][4], xsum[NT][W::N][2];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        FOR_LANES(li) for (int i = 0; i < 4; ++i) yacc[r][nt][li][i] = cacc[r][nt][li][i] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) xsum[nt][li][0] = xsum[nt][li][1] = 0.0f;

    if (mt0 < a.ntiles && c_begin < c_end) {  // warp-uniform
      // the group the warp starts in, and how many tiles (TG) or steps are left in it
      const int unit = TG ? 16 : 64;
      const int k0 = c_begin * KCH;
      int gidx = k0 / a.g;
      int left = ((gidx + 1) * a.g - k0) / unit;
      const int full = a.g / unit;

      u32 wa[RT][W::N][NWORD], wn[RT][W::N][NWORD];
      load_weights(a, w, mt0, c_begin, wa);
      for (int c = c_begin; c < c_end; c += 2) {
        if (c + 1 < c_end) load_weights(a, w, mt0, c + 1, wn);
        chunk(a, w, mt0, c, tok0, wa, cacc, xsum, yacc, gidx, left, full);
        if (c + 1 < c_end) {
          if (c + 2 < c_end) load_weights(a, w, mt0, c + 2, wa);
          chunk(a, w, mt0, c + 1, tok0, wn, cacc, xsum, yacc, gidx, left, full);
        }
      }
      if (left != full) flush(a, w, mt0, gidx, cacc, xsum, yacc);  // a group cut by the end of the slice
    }
    epilogue(a, w, warp_r, warp_k, mt0, tok0, yacc);
  }

  template <class W>
  static TTQ_FN void chunk(const DecodeArgs& a, const W& w, int mt0, int c, int tok0, const u32 (&wb)[RT][W::N][NWORD],
                           float (&cacc)[RT][NT][W::N][4], float (&xsum)[NT][W::N][2],
                           float (&yacc)[RT][NT][W::N][4], int& gidx, int& left, int full) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      const int kstep = c * STEPS + s;  // index of this 64-code step along K
      const int kb = kstep >> 2, jb = (kstep & 3) * 4;
      u32 bfr[NT][4][NB][W::N][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        FOR_LANES(li) {
          const int lane = w.lane(li), tok = tok0 + nt * 8 + (lane >> 2);
          u32 buf[4 * UW];
          if (tok < a.T) {
            const u32* p = a.xb + ((((i64)kb * a.TP + tok) * 4 + (lane & 3)) * 16 + jb) * UW;
#pragma unroll
            for (int q = 0; q < UW; ++q) ldg128(p + 4 * q, buf + 4 * q);
          } else {
#pragma unroll
            for (int q = 0; q < 4 * UW; ++q) buf[q] = 0u;
          }
#pragma unroll
          for (int jj = 0; jj < 4; ++jj)
#pragma unroll
            for (int pl = 0; pl < NB; ++pl) {
              bfr[nt][jj][pl][li][0] = buf[jj * UW + 2 * pl];
              bfr[nt][jj][pl][li][1] = buf[jj * UW + 2 * pl + 1];
            }
          if (!TG) {
            u32 x2[2];
            ldg64(reinterpret_cast<const u32*>(a.xs4) + (i64)kstep * a.TP + tok0 + nt * 8 + 2 * (lane & 3), x2);
            xsum[nt][li][0] += as_f32(x2[0]);
            xsum[nt][li][1] += as_f32(x2[1]);
          }
        }
      }
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        if (TG) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) {
              u32 x2[2];
              const int tokc = tok0 + nt * 8 + 2 * (w.lane(li) & 3);
              ldg64(reinterpret_cast<const u32*>(a.xs1) + ((i64)kstep * 4 + jj) * a.TP + tokc, x2);
              xsum[nt][li][0] += as_f32(x2[0]);
              xsum[nt][li][1] += as_f32(x2[1]);
            }
        }
#pragma unroll
        for (int r = 0; r < RT; ++r) {
          u32 af[W::N][4];
          FOR_LANES(li) codes_to_afrag<BITS, BF>(wb[r][li], 4 * s + jj, af[li]);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int pl = 0; pl < NB; ++pl) w.template mma<BF>(cacc[r][nt], af, bfr[nt][jj][pl]);
        }
        if (TG && --left == 0) {
          flush(a, w, mt0, gidx, cacc, xsum, yacc);
          ++gidx;
          left = full;
        }
      }
      if (!TG && --left == 0) {
        flush(a, w, mt0, gidx, cacc, xsum, yacc);
        ++gidx;
        left = full;
      }
    }
  }

  template <class W>
  static TTQ_FN void epilogue(const DecodeArgs& a, W& w, int warp_r, int warp_k, int mt0, int tok0,
                              const float (&yacc)[RT][NT][W::N][4]) {
    float* red = w.smem;                                     // [wk - 1][wr][RT][NT][4][32]
    float* xas = w.smem + (a.wk - 1) * a.wr * RT * NT * 128;  // [TS][R]
    if (warp_k > 0) {
#pragma unroll
      for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          FOR_LANES(li) for (int i = 0; i < 4; ++i) red[(((((warp_k - 1) * a.wr + warp_r) * RT + r) * NT + nt) * 4 + i) * 32 +
                                                        w.lane(li)] = yacc[r][nt][li][i];
    }
    if (a.has_lr) {  // x A^T of this block's tokens: sum the prologue's K-slice partials in order
      FOR_LANES(li) {
        for (int idx = w.warp * 32 + w.lane(li); idx < TS * a.R; idx += w.nwarps * 32) {
          const int tt = idx / a.R, rr = idx - tt * a.R, gt = tok0 + tt;
          float s = 0.0f;
          if (gt < a.TP)
            for (int p = 0; p < a.NBX; ++p) s += a.xa[((i64)p * a.TP + gt) * a.R + rr];
          xas[idx] = s;
        }
      }
    }
    w.sync();
    if (warp_k != 0) return;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        FOR_LANES(li) {
          const int lane = w.lane(li);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int n = (mt0 + r) * 16 + (lane >> 2) + 8 * (i >> 1);
            const int tok = tok0 + nt * 8 + 2 * (lane & 3) + (i & 1);
            float v = yacc[r][nt][li][i];
            for (int k2 = 0; k2 < a.wk - 1; ++k2)
              v += red[((((k2 * a.wr + warp_r) * RT + r) * NT + nt) * 4 + i) * 32 + lane];
            if (n < a.N && tok < a.T) {
              if (a.has_lr) {
                const typename E::T* Bn = static_cast<const typename E::T*>(a.lrB);
                for (int rr = 0; rr < a.R; ++rr) v += xas[(tok - tok0) * a.R + rr] * E::load(Bn, (i64)n * a.R + rr);
              }
              if (a.has_bias) v += E::load(static_cast<const typename E::T*>(a.bias), n);
              E::store(static_cast<typename E::T*>(a.y), (i64)tok * a.N + n, v);
            }
          }
        }
  }
};

}  // namespace ttq
