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
  const u32* qw;     // cupy_mma qweight [NT][KC V 128 + GQ 16] int32: codes, then zero codes
  const float* sc;   // scales and centred offsets [NT][G][8][4]: s of rows gID, gID + 8, then their m0
  const u32* xb;     // x / D as B fragments  [TP][4][KB * 16][UW] 32-bit words (prologue)
  const float* xs1;  // per 16-code tile sums of those values [KB * 16][TP]
  const float* xs4;  // per 64-code step sums                 [KB * 4][TP]
  const float* xa;   // x A^T partial sums over K slices      [NBX][TP][R]
  const u32* fl;     // tokens the MMA path cannot carry, per 16-token slice and 256 codes [TP / 16][KB]
  const void* x;     // x [T][K] and D [K] (or null): read only by the exact path of flagged tokens
  const float* D;
  const void* lrB;   // B [N][R] in the activation dtype
  const void* bias;  // bias [N] in the activation dtype
  void* y;           // out [T][N] in the activation dtype
  int N, ntiles, KC, G, g, T, TP, K, KB, R, NBX, has_D, has_lr, has_bias, wr, wk, cps;
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
// Per 64 codes of K (a step): the B fragments of x / D (8, 16 or 24 B per lane and tile,
// loaded once per warp and reused by its RT row tiles; lanes of tokens >= T load
// nothing), then per tile and row tile one codes_to_afrag (LOP3 + HFMA2 per code pair,
// giving the centred codes u - c) and one mma.sync.m16n8k16 per 8 tokens (three for fp32
// activations: x / D = hi + mid + lo in bf16, exactly).  Group boundaries (every g codes;
// per tile when g % 64 != 0, TG) flush the fp32 tile accumulators: y += s * acc + m0 * X~
// (docs/numerics.md, rule Q1: acc sums x~ (u - c), m0 = s c + m is the value of the zero
// code, X~ the prologue's per-tile sums of the same rounded x / D), and load the next
// group's zero codes into the HFMA2 bias operands: no shuffle and no per-group reduction
// in the loop, and the same instructions for every quantization form.
//
// Tokens whose x / D the MMA operands cannot carry (flagged by the prologue: huge values
// whose sums of x~ (u - c) could overflow, values below the operands' normal range, fp16
// overflow; rule Q2) send the warp down the exact path instead: w = s (u - c) + m0 in
// fp32, times x / D recomputed in fp32, FMA-accumulated (slow, rare).  The flags are read
// once per warp before the loop, while its first weight loads are in flight.
//
// Epilogue: every warp hands its fp32 partials through shared memory (floats:
// wk wr RT NT 128), the block reduces the prologue's x A^T partials (8 NT R floats),
// one barrier, then each thread finishes outputs along N: k-partials added in a fixed
// order, B[n] . (x A^T), bias, one store in the activation dtype.
//
// Bytes moved per output row: K b / 8 of codes + 9 G of scales, offsets and zero codes
// (once), and 2 R + 2 of B and bias; x / D is read from L2 once per warp and step; y: 2 T.
template <int BITS, int XM, int NT, int TG, int RT>
struct Decode {
  static constexpr int KCH = Lay<BITS>::KCH, V = Lay<BITS>::V, NWORD = 4 * V, STEPS = KCH / 64;
  static constexpr bool BF = XM != XM_F16;
  static constexpr int NB = XM == XM_BF16X2 ? 3 : 1;  // B planes: x / D, or its bf16 hi, mid and lo parts
  static constexpr int UW = 2 * NB;                   // 32-bit words of x / D per lane and tile
  static constexpr int TS = 8 * NT;                   // tokens per block
  static constexpr int NBZ = Centre<BITS>::NB;        // HFMA2 bias operands per lane and row tile
  // blocks of 256 threads that must fit an SM (__launch_bounds__): 3 (at most 80 registers, 24
  // warps per SM, to keep bytes in flight) where that compiles without spills on sm_80 - sm_90:
  // up to two 16 x 8 tiles per warp and iteration, except 8-bit codes with two (8 words per
  // row tile) and 3-bit codes with 16 tokens; fp32 activations (three B planes) one row tile,
  // not 3-bit.  Else 1 (the compiler's choice, at most 127 registers: config.rt_cap)
  static constexpr bool FITS_80 = XM == XM_BF16X2 ? (RT == 1 && BITS != 3)
                                                  : ((RT * NT == 1 || (RT * NT == 2 && BITS != 8)) && !(BITS == 3 && NT == 2));
  static constexpr int MIN_BLOCKS = FITS_80 ? 3 : 1;
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

  static TTQ_FN const u32* tile_words(const DecodeArgs& a, int mt) { return a.qw + (i64)mt * tile_stride(a.KC, V, a.G); }

  template <class W>
  static TTQ_FN void load_weights(const W& w, Cursor<W> (&cur)[W::N], int off, u32 (&wb)[RT][W::N][NWORD]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int v = 0; v < V; ++v) FOR_LANES(li) ldg128_stream(cur[li].wq[r] + off + v * 128, &wb[r][li][4 * v]);
  }

  // the zero codes of group gidx for the lane's rows gID, gID + 8 of row tile mt
  template <class W>
  static TTQ_FN void zero_codes(const DecodeArgs& a, const W& w, int li, int mt, int gidx, u32& c0, u32& c1) {
    u32 cw[2];
    // 32-bit offset arithmetic (host.check_weight: qweight has fewer than 2^31 words): the
    // 64-bit tile base would keep two more registers live through the K loop
    const u32 code_words = (u32)(a.KC * V * 128);
    const u32 off = (u32)mt * (code_words + (u32)centre_words(a.G)) + code_words + (u32)(((gidx >> 2) * 8 + (w.lane(li) >> 2)) * 2);
    ldg64(a.qw + off, cw);
    c0 = centre_of<BITS>(cw[0], gidx);
    c1 = centre_of<BITS>(cw[1], gidx);
  }

  // the HFMA2 bias operands of group gidx (clamped: the padded tail past the last group holds zero x)
  template <class W>
  static TTQ_FN void centres(const DecodeArgs& a, const W& w, int mt0, int gidx, u32 (&bz)[RT][W::N][NBZ]) {
    const int gi = imin(gidx, a.G - 1);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const int mt = imin(mt0 + r, a.ntiles - 1);
      FOR_LANES(li) {
        u32 c0, c1;
        zero_codes(a, w, li, mt, gi, c0, c1);
        make_bias<BITS, BF>(c0, c1, bz[r][li]);
      }
    }
  }

  // y += s * acc + m0 * X~ for group gidx (rows gID, gID + 8 of each row tile), clear the accumulators
  template <class W>
  static TTQ_FN void flush(const DecodeArgs& a, const W& w, int mt0, int gidx, float (&cacc)[RT][NT][W::N][4],
                           float (&xsum)[NT][W::N][2], float (&yacc)[RT][NT][W::N][4]) {
    if (gidx < a.G) {  // the padded tail past the last group holds zero codes and zero x
#pragma unroll
      for (int r = 0; r < RT; ++r) {
        const int mt = imin(mt0 + r, a.ntiles - 1);
        FOR_LANES(li) {
          u32 rec[4];  // s, s', m0, m0' of rows gID, gID + 8: one 128-bit load
          ldg128(reinterpret_cast<const u32*>(a.sc) + (((i64)mt * a.G + gidx) * 8 + (w.lane(li) >> 2)) * 4, rec);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float s = as_f32(rec[h]), m0 = as_f32(rec[2 + h]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int i = 2 * h + c;
                yacc[r][nt][li][i] += s * cacc[r][nt][li][i] + m0 * xsum[nt][li][c];
                cacc[r][nt][li][i] = 0.0f;
              }
          }
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) FOR_LANES(li) xsum[nt][li][0] = xsum[nt][li][1] = 0.0f;
  }

  // Any token of this block flagged by the prologue in the 256-code blocks of the warp's
  // K slice [c_begin, c_end)?  Warp-uniform (an OR over the lanes).
  template <class W>
  static TTQ_FN bool flagged(const DecodeArgs& a, const W& w, int c_begin, int c_end, int tok0) {
    const int kb0 = (c_begin * KCH) >> 8, kb1 = (c_end * KCH + 255) >> 8;
    u32 f[W::N];
    FOR_LANES(li) {
      f[li] = 0u;
      for (int kb = kb0 + w.lane(li); kb < kb1; kb += 32) f[li] |= a.fl[(i64)(tok0 >> 4) * a.KB + kb];
    }
    for (int m = 16; m >= 1; m >>= 1) {
      u32 o[W::N];
      FOR_LANES(li) o[li] = f[li];
      w.shfl_xor(o, m);
      FOR_LANES(li) f[li] |= o[li];
    }
    const u32 mine = TS == 16 ? 0xFFFFu : (0xFFu << (tok0 & 15));
    return (f[0] & mine) != 0u;
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

    bool stored = false;                      // the exact path wrote this warp's partials
    if (mt0 < a.ntiles && c_begin < c_end) {  // warp-uniform
      Cursor<W> cur[W::N];
      const int unit = TG ? 16 : 64;
      const int k0 = c_begin * KCH;
      FOR_LANES(li) {
        const int lane = w.lane(li);
#pragma unroll
        for (int r = 0; r < RT; ++r)  // rows past the last tile read a valid tile and store nothing
          cur[li].wq[r] = tile_words(a, imin(mt0 + r, a.ntiles - 1)) + (i64)c_begin * (V * 128) + lane * 4;
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
      if (flagged(a, w, c_begin, c_end, tok0)) {
        exact(a, w, warp_r, warp_k, mt0, c_begin, c_end, tok0);  // its partials go straight to shared memory
        stored = true;
      } else {
        u32 bz[RT][W::N][NBZ];
        centres(a, w, mt0, cur[0].gidx, bz);
#pragma unroll 1
        for (int c = c_begin; c < c_end; ++c) {
          if (c + 1 < c_end) load_weights(w, cur, V * 128, wn);
          chunk(a, w, mt0, cur, wa, bz, cacc, xsum, yacc);
#pragma unroll
          for (int r = 0; r < RT; ++r) FOR_LANES(li) {
              cur[li].wq[r] += V * 128;
              for (int q = 0; q < NWORD; ++q) wa[r][li][q] = wn[r][li][q];
            }
        }
        if (cur[0].left != cur[0].full) flush(a, w, mt0, cur[0].gidx, cacc, xsum, yacc);  // group cut by the slice end
      }
    }
    if (!stored) FOR_LANES(li) store_partials(a, w, warp_r, warp_k, li, yacc);
    epilogue(a, w, tok0);
  }

  template <class W>
  static TTQ_FN void chunk(const DecodeArgs& a, const W& w, int mt0, Cursor<W> (&cur)[W::N],
                           const u32 (&wb)[RT][W::N][NWORD], u32 (&bz)[RT][W::N][NBZ], float (&cacc)[RT][NT][W::N][4],
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
          FOR_LANES(li) codes_to_afrag<BITS, BF>(wb[r][li], 4 * s + jj, bz[r][li], af[li]);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int pl = 0; pl < NB; ++pl) w.template mma<BF>(cacc[r][nt], af, bfr[nt][jj][pl]);
        }
        if (TG) step_group(a, w, mt0, cur, bz, cacc, xsum, yacc);
      }
      if (!TG) step_group(a, w, mt0, cur, bz, cacc, xsum, yacc);
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
                                u32 (&bz)[RT][W::N][NBZ], float (&cacc)[RT][NT][W::N][4], float (&xsum)[NT][W::N][2],
                                float (&yacc)[RT][NT][W::N][4]) {
    if (--cur[0].left == 0) {  // every lane holds the same group state: warp-uniform
      flush(a, w, mt0, cur[0].gidx, cacc, xsum, yacc);
      FOR_LANES(li) {
        cur[li].gidx += 1;
        cur[li].left = cur[li].full;
      }
      centres(a, w, mt0, cur[0].gidx, bz);
    } else {
      FOR_LANES(li) cur[li].left = cur[0].left;
    }
  }

  // The exact path (flagged tokens): the warp's partial sums over its K slice in plain fp32,
  // w = s (u - c) + m0 (the codes from the same bit tricks) times x / D recomputed with an
  // IEEE division, one FMA each; the 4 lanes of a quad hold disjoint k and are summed with
  // two shuffles, then each lane writes its C-fragment slots (rows gID, gID + 8, tokens
  // 2t, 2t + 1) straight to the epilogue's shared memory (the K loop's accumulators are not
  // live here, so this path adds no registers to the kernel).  One token at a time: slow,
  // and only for inputs at the edges of fp32.
  template <class W>
  static TTQ_FN void exact(const DecodeArgs& a, const W& w, int warp_r, int warp_k, int mt0, int c_begin, int c_end,
                           int tok0) {
    const typename E::T* x = static_cast<const typename E::T*>(a.x);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const int mt = imin(mt0 + r, a.ntiles - 1);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll 1
        for (int tc = 0; tc < 8; ++tc) {
          const int tok = tok0 + nt * 8 + tc;
          float acc[W::N][2];
          FOR_LANES(li) acc[li][0] = acc[li][1] = 0.0f;
#pragma unroll 1
          for (int c = c_begin; c < c_end && tok < a.T; ++c) {  // tokens >= T: zero partials (warp-uniform)
#pragma unroll 1
            for (int j = 0; j < KCH / 16; ++j) {
              const int kt = c * KCH + 16 * j;
              if (kt >= a.K) break;  // the padded tail: zero x
              const int gidx = kt / a.g;  // g % 16 == 0: a tile lies in one group
              FOR_LANES(li) {
                const int lane = w.lane(li), t = lane & 3;
                u32 wv[NWORD], rec[4], c0, c1, bzl[NBZ], af[4];
                for (int v = 0; v < V; ++v) ldg128(tile_words(a, mt) + ((i64)c * V + v) * 128 + lane * 4, wv + 4 * v);
                ldg128(reinterpret_cast<const u32*>(a.sc) + (((i64)mt * a.G + gidx) * 8 + (lane >> 2)) * 4, rec);
                zero_codes(a, w, li, mt, gidx, c0, c1);
                make_bias<BITS, BF>(c0, c1, bzl);
                codes_to_afrag<BITS, BF>(wv, j, bzl, af);  // u - c of the lane's 8 elements
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                  const int h = (e >> 1) & 1, k = kt + 2 * t + (e & 1) + 8 * (e >> 2);
                  if (k >= a.K) continue;
                  float xv = E::load(x, (i64)tok * a.K + k);
                  if (a.has_D) xv = div_rn(xv, a.D[k]);
                  const float wt = add_rn(mul_rn(as_f32(rec[h]), half_value<BF>(af[e >> 1], e & 1)), as_f32(rec[2 + h]));
                  acc[li][h] = fma_rn(xv, wt, acc[li][h]);
                }
              }
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h)
            for (int m = 1; m <= 2; m <<= 1) {
              float o[W::N];
              FOR_LANES(li) o[li] = acc[li][h];
              w.shfl_xor(o, m);
              FOR_LANES(li) acc[li][h] += o[li];
            }
          FOR_LANES(li) {
            if (((w.lane(li) & 3) != (tc >> 1))) continue;  // C columns 2t, 2t + 1 are this lane's
#pragma unroll
            for (int h = 0; h < 2; ++h)  // C-fragment slot i = 2 h + column
              w.smem[partial_index(a, warp_r, warp_k, r, nt, 2 * h + (tc & 1)) + w.lane(li)] = acc[li][h];
          }
        }
      }
    }
  }

  // The block's partials go through shared memory ([wk][wr][RT][NT][4][32] floats, then
  // the block's x A^T [TS][R]); after one barrier every thread finishes outputs (row
  // fastest, so the stores of a warp are contiguous): the k-partials added in order,
  // B[n] . (x A^T), bias, rounded to the activation dtype.
  // where C-fragment slot i of row tile r, token tile nt of warp (warp_r, warp_k) starts (+ lane)
  static TTQ_FN int partial_index(const DecodeArgs& a, int warp_r, int warp_k, int r, int nt, int i) {
    return ((((warp_k * a.wr + warp_r) * RT + r) * NT + nt) * 4 + i) * 32;
  }

  template <class W>
  static TTQ_FN void store_partials(const DecodeArgs& a, const W& w, int warp_r, int warp_k, int li,
                                    const float (&yacc)[RT][NT][W::N][4]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) w.smem[partial_index(a, warp_r, warp_k, r, nt, i) + w.lane(li)] = yacc[r][nt][li][i];
  }

  template <class W>
  static TTQ_FN void epilogue(const DecodeArgs& a, W& w, int tok0) {
    float* red = w.smem;
    float* xas = w.smem + a.wk * a.wr * RT * NT * 128;
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
