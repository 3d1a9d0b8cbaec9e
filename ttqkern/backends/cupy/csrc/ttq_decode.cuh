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
  const u32* xb;     // x / D as B fragments  [TP][4][KB * 16][UW] 32-bit words (prologue)
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
// Epilogue: every warp hands its fp32 partials through shared memory (floats:
// wk wr RT NT 128), the block reduces the prologue's x A^T partials (8 NT R floats),
// one barrier, then each thread finishes outputs along N: k-partials added in a fixed
// order, B[n] . (x A^T), bias, one store in the activation dtype.
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

  // per-warp state of the K loop: the group being accumulated and where the lane reads
  template <class W>
  struct Cursor {
    const u32* wq[RT];      // this lane's codes of chunk c, per row tile (advances V * 128 words per chunk)
    const u32* xq[NT];      // this lane's B fragments (token gID), per n8 tile (advances 4 UW per step)
    const float* sq[NT];    // tile (TG) or step sums of this lane's C columns 2t, 2t+1 (advances TP)
    bool xok[NT];           // token gID < T: the lane loads x / D, else its B fragments are zero
    int gidx, left, full;   // group index, tiles (TG) or steps left in it, per group
  };

  template <class W>
  static TTQ_FN void load_weights(const W& w, Cursor<W> (&cur)[W::N], int off, u32 (&wb)[RT][W::N][NWORD]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int v = 0; v < V; ++v) FOR_LANES(li) ldg128_stream(cur[li].wq[r] + off + v * 128, &wb[r][li][4 * v]);
  }

  // y += s * acc + m * X~ for group gidx (rows gID, gID + 8 of each row tile), clear the accumulators
  template <class W>
  static TTQ_FN void flush(const DecodeArgs& a, const W& w, int mt0, int gidx, float (&cacc)[RT][NT][W::N][4],
                           float (&xsum)[NT][W::N][2], float (&yacc)[RT][NT][W::N][4]) {
    if (gidx < a.G) {  // the padded tail past the last group holds zero codes and zero x
      // opaque to the optimizer, which would otherwise turn the masks back into three branches
      const u32 float_mask = opaque(a.form == FORM_FLOAT ? ~0u : 0u), int_mask = opaque(a.form == FORM_INT ? ~0u : 0u);
#pragma unroll
      for (int r = 0; r < RT; ++r) {
        const int mt = imin(mt0 + r, a.ntiles - 1);
        const i64 gb = ((i64)mt * a.G + gidx) * 8;
        FOR_LANES(li) {
          const int gid = w.lane(li) >> 2;
          u32 s2[2], z2[2];
          ldg64(reinterpret_cast<const u32*>(a.sc) + (gb + gid) * 2, s2);
          ldg64(a.zp + (gb + gid) * 2, z2);  // FORM_SYM: zp points at the scales, unused
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // offsets of w = s u + m, as format.PackedWeight.offsets
            // selected with bit masks, not branches: one code path for the three forms
            const float s = as_f32(s2[h]);
            const u32 zs = (f32_bits((float)(i32)z2[h]) & int_mask) | (f32_bits(HALF) & ~int_mask);
            const float m = as_f32((z2[h] & float_mask) | (f32_bits(mul_rn(-s, as_f32(zs))) & ~float_mask));
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int i = 2 * h + c;
                yacc[r][nt][li][i] += s * cacc[r][nt][li][i] + m * xsum[nt][li][c];
                cacc[r][nt][li][i] = 0.0f;
              }
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
    const int NKT = ((a.KC * KCH + 255) / 256) * 16;  // 16-code tiles in the prologue's buffers
    float yacc[RT][NT][W::N][4], cacc[RT][NT][W::N][4], xsum[NT][W::N][2];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        FOR_LANES(li) for (int i = 0; i < 4; ++i) yacc[r][nt][li][i] = cacc[r][nt][li][i] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) xsum[nt][li][0] = xsum[nt][li][1] = 0.0f;

    if (mt0 < a.ntiles && c_begin < c_end) {  // warp-uniform
      Cursor<W> cur[W::N];
      const int unit = TG ? 16 : 64;
      const int k0 = c_begin * KCH;
      FOR_LANES(li) {
        const int lane = w.lane(li);
#pragma unroll
        for (int r = 0; r < RT; ++r)  // rows past the last tile read a valid tile and store nothing
          cur[li].wq[r] = a.qw + ((i64)imin(mt0 + r, a.ntiles - 1) * a.KC + c_begin) * (V * 128) + lane * 4;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int tok = tok0 + nt * 8 + (lane >> 2);
          cur[li].xok[nt] = tok < a.T;
          cur[li].xq[nt] = a.xb + (((i64)tok * 4 + (lane & 3)) * NKT + k0 / 16) * UW;
          cur[li].sq[nt] = (TG ? a.xs1 + (i64)(k0 / 16) * a.TP : a.xs4 + (i64)(k0 / 64) * a.TP) + tok0 + nt * 8 +
                           2 * (lane & 3);
        }
        cur[li].gidx = k0 / a.g;  // the group the warp starts in, and what is left of it
        cur[li].left = ((cur[li].gidx + 1) * a.g - k0) / unit;
        cur[li].full = a.g / unit;
      }
      // register double buffering: the loads of chunk c + 1 are in flight while chunk c is computed
      u32 wa[RT][W::N][NWORD], wn[RT][W::N][NWORD];
      load_weights(w, cur, 0, wa);
#pragma unroll 1
      for (int c = c_begin; c < c_end; ++c) {
        if (c + 1 < c_end) load_weights(w, cur, V * 128, wn);
        chunk(a, w, mt0, cur, wa, cacc, xsum, yacc);
#pragma unroll
        for (int r = 0; r < RT; ++r) FOR_LANES(li) {
            cur[li].wq[r] += V * 128;
            for (int q = 0; q < NWORD; ++q) wa[r][li][q] = wn[r][li][q];
          }
      }
      if (cur[0].left != cur[0].full) flush(a, w, mt0, cur[0].gidx, cacc, xsum, yacc);  // group cut by the slice end
    }
    epilogue(a, w, warp_r, warp_k, tok0, yacc);
  }

  template <class W>
  static TTQ_FN void chunk(const DecodeArgs& a, const W& w, int mt0, Cursor<W> (&cur)[W::N],
                           const u32 (&wb)[RT][W::N][NWORD], float (&cacc)[RT][NT][W::N][4],
                           float (&xsum)[NT][W::N][2], float (&yacc)[RT][NT][W::N][4]) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
      u32 bfr[NT][4][NB][W::N][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        FOR_LANES(li) {
          u32 buf[4 * UW];
#pragma unroll
          for (int q = 0; q < UW; ++q) {
            if (cur[li].xok[nt])
              ldg128(cur[li].xq[nt] + 4 * q, buf + 4 * q);
            else
              buf[4 * q] = buf[4 * q + 1] = buf[4 * q + 2] = buf[4 * q + 3] = 0u;
          }
          cur[li].xq[nt] += 4 * UW;
#pragma unroll
          for (int jj = 0; jj < 4; ++jj)
#pragma unroll
            for (int pl = 0; pl < NB; ++pl) {
              bfr[nt][jj][pl][li][0] = buf[jj * UW + 2 * pl];
              bfr[nt][jj][pl][li][1] = buf[jj * UW + 2 * pl + 1];
            }
          if (!TG) add_sums(a, cur[li], xsum[nt][li], nt);
        }
      }
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        if (TG) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) add_sums(a, cur[li], xsum[nt][li], nt);
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
        if (TG) step_group(a, w, mt0, cur, cacc, xsum, yacc);
      }
      if (!TG) step_group(a, w, mt0, cur, cacc, xsum, yacc);
    }
  }

  // X~ of the next tile (TG) or step for this lane's C columns 2t, 2t + 1
  template <class C>
  static TTQ_FN void add_sums(const DecodeArgs& a, C& cur, float (&xs)[2], int nt) {
    u32 x2[2];
    ldg64(reinterpret_cast<const u32*>(cur.sq[nt]), x2);
    cur.sq[nt] += a.TP;
    xs[0] += as_f32(x2[0]);
    xs[1] += as_f32(x2[1]);
  }

  // one unit (tile or step) of the current group done: flush when the group is complete
  template <class W>
  static TTQ_FN void step_group(const DecodeArgs& a, const W& w, int mt0, Cursor<W> (&cur)[W::N],
                                float (&cacc)[RT][NT][W::N][4], float (&xsum)[NT][W::N][2],
                                float (&yacc)[RT][NT][W::N][4]) {
    if (--cur[0].left == 0) {  // every lane holds the same group state: warp-uniform
      flush(a, w, mt0, cur[0].gidx, cacc, xsum, yacc);
      FOR_LANES(li) {
        cur[li].gidx += 1;
        cur[li].left = cur[li].full;
      }
    } else {
      FOR_LANES(li) cur[li].left = cur[0].left;
    }
  }

  // The block's partials go through shared memory ([wk][wr][RT][NT][4][32] floats, then
  // the block's x A^T [TS][R]); after one barrier every thread finishes outputs (row
  // fastest, so the stores of a warp are contiguous): the k-partials added in order,
  // B[n] . (x A^T), bias, rounded to the activation dtype.
  template <class W>
  static TTQ_FN void epilogue(const DecodeArgs& a, W& w, int warp_r, int warp_k, int tok0,
                              const float (&yacc)[RT][NT][W::N][4]) {
    float* red = w.smem;
    float* xas = w.smem + a.wk * a.wr * RT * NT * 128;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        FOR_LANES(li) for (int i = 0; i < 4; ++i) red[((((warp_k * a.wr + warp_r) * RT + r) * NT + nt) * 4 + i) * 32 +
                                                      w.lane(li)] = yacc[r][nt][li][i];
    const int nthreads = w.nwarps * 32;
    if (a.has_lr) {  // x A^T of this block's tokens: the prologue's K-slice partials, in order
      FOR_LANES(li) {
        for (int idx = w.warp * 32 + w.lane(li); idx < TS * a.R; idx += nthreads) {
          const int tt = idx / a.R, rr = idx - tt * a.R, gt = tok0 + tt;
          float s = 0.0f;
          if (gt < a.TP)
#pragma unroll 1
            for (int p = 0; p < a.NBX; ++p) s += a.xa[((i64)p * a.TP + gt) * a.R + rr];
          xas[idx] = s;
        }
      }
    }
    w.sync();
    const int rows = a.wr * RT * 16, n0 = w.bx * rows;
    const typename E::T* Bn = static_cast<const typename E::T*>(a.lrB);
    FOR_LANES(li) {
      for (int idx = w.warp * 32 + w.lane(li); idx < TS * rows; idx += nthreads) {
        const int tt = idx / rows, nl = idx - tt * rows;  // token, row within the block
        const int n = n0 + nl, tok = tok0 + tt;
        if (n >= a.N || tok >= a.T) continue;
        // the fragment slot that holds (row nl, token tt): see the decode loop's C fragments
        const int wr = nl / (16 * RT), r = (nl / 16) % RT, gid = nl & 7, ih = (nl >> 3) & 1;
        const int nt = tt >> 3, t = (tt & 7) >> 1, i = 2 * ih + (tt & 1), lane = 4 * gid + t;
        float v = 0.0f;
#pragma unroll 1
        for (int k = 0; k < a.wk; ++k) v += red[((((k * a.wr + wr) * RT + r) * NT + nt) * 4 + i) * 32 + lane];
        if (a.has_lr)
#pragma unroll 4
          for (int rr = 0; rr < a.R; ++rr) v += xas[tt * a.R + rr] * E::load(Bn, (i64)n * a.R + rr);
        if (a.has_bias) v += E::load(static_cast<const typename E::T*>(a.bias), n);
        E::store(static_cast<typename E::T*>(a.y), (i64)tok * a.N + n, v);
      }
    }
  }
};

}  // namespace ttq
