// Requantization: activation scale D (act_scale) and quantize + pack into cupy_mma.
#pragma once
#include "ttq_common.cuh"

namespace ttq {

TTQ_FN float f32_nan() { return as_f32(0x7FC00000u); }

// ---- act_scale: D = clamp(c + lam mean(c), tiny, max)^alpha, c = ||x[:, k]||_p^2 ------------
// No raw power |x|^p is ever formed (docs/numerics.md, rule A1): |x|^p overflows fp32 for
// p = 100 at |x| > 2.4.  Each column keeps its running maximum a and the sum of (|x| / a)^p
// <= T; when a grows the sum is rescaled by (a_old / a_new)^p.  Every power is at most 1.
enum PMode { P_GENERIC = 0, P_ONE = 1, P_TWO = 2, P_INF = 3 };

// r^p for a ratio r in [0, 1]
TTQ_FN float pow_ratio(float r, int pmode, float p) {
  return pmode == P_ONE ? r : (pmode == P_TWO ? mul_rn(r, r) : pow_f(r, p));
}

struct ColNormArgs {
  const void* x;  // [T][K]
  float* part;    // [2][tsplit][K]: max |x| (nan sticky, inf kept) and sum (|x| / max)^p per token slice
  int T, K, t_per, tsplit, pmode;
  float p;
};

// Grid (ceil(K / 256), tsplit), block 256: thread k of block (x, y) reduces column
// k = 256 x + thread over tokens [y t_per, + t_per) in order.  Reads x once (coalesced
// along K, 2-4 B per element), writes 8 B per column and slice.
template <class XE>
struct ColNorm {
  template <class W>
  static TTQ_FN void run(const ColNormArgs& a, W& w) {
    const typename XE::T* x = static_cast<const typename XE::T*>(a.x);
    FOR_LANES(li) {
      const int k = w.bx * 256 + w.warp * 32 + w.lane(li);
      if (k >= a.K) continue;
      const int t0 = w.by * a.t_per, t1 = imin(a.T, t0 + a.t_per);
      float amax = 0.0f, sum = 0.0f;  // sum of (|x| / amax)^p while amax is finite and > 0
      for (int t = t0; t < t1; ++t) {
        const float v = abs_f(XE::load(x, (i64)t * a.K + k));
        if (is_nan(v)) {
          amax = v;  // nan sticks: every comparison with it is false from here on
        } else if (v > amax) {  // a new maximum (false once amax is nan)
          if (a.pmode != P_INF && is_finite(v)) sum = add_rn(mul_rn(sum, pow_ratio(div_rn(amax, v), a.pmode, a.p)), 1.0f);
          amax = v;  // inf: the norm is inf, the sum no longer matters
        } else if (a.pmode != P_INF && v > 0.0f && is_finite(amax)) {
          sum = add_rn(sum, pow_ratio(div_rn(v, amax), a.pmode, a.p));
        }
      }
      a.part[(i64)w.by * a.K + k] = amax;
      a.part[(i64)(a.tsplit + w.by) * a.K + k] = sum;
    }
  }
};

struct ScaleArgs {
  const float* part;
  float* D;
  int K, tsplit, pmode;
  float p, lam, alpha;
};

// Grid (1), block 1024: the mean needs every column.  Pass 1: the slices' (max, sum) pairs
// merged (sums rescaled to the column max, in order), n = a S^(1/p), c = n * n kept in D,
// and the block's fixed-order tree sum of c; pass 2: D.  Bytes: 8 tsplit + 8 per column.
struct Scale {
  static constexpr int SMEM_FLOATS = 1024;  // static shared memory: the tree reduction
  template <class W>
  static TTQ_FN void run(const ScaleArgs& a, W& w) {
    float* red = w.smem;  // [1024]
    FOR_LANES(li) {
      const int tid = w.warp * 32 + w.lane(li);
      float s = 0.0f;
      for (int k = tid; k < a.K; k += w.nwarps * 32) {
        float amax = a.part[k];
        for (int q = 1; q < a.tsplit; ++q) {
          const float o = a.part[(i64)q * a.K + k];
          amax = (is_nan(o) || o > amax) ? o : amax;  // nan sticky
        }
        float n = amax;  // p = inf; and nan / inf / 0 columns for every p
        if (a.pmode != P_INF && is_finite(amax) && amax > 0.0f) {
          float S = 0.0f;
#pragma unroll 1  // unrolled, each division's slow-path call spills the live sums (sm_80, sm_90)
          for (int q = 0; q < a.tsplit; ++q) {
            const float aq = a.part[(i64)q * a.K + k];
            if (aq > 0.0f) S = add_rn(S, mul_rn(a.part[(i64)(a.tsplit + q) * a.K + k], pow_ratio(div_rn(aq, amax), a.pmode, a.p)));
          }
          const float root = a.pmode == P_ONE ? S : (a.pmode == P_TWO ? sqrt_f(S) : pow_f(S, div_rn(1.0f, a.p)));
          n = mul_rn(amax, root);
        }
        const float c = mul_rn(n, n);
        a.D[k] = c;
        s += c;
      }
      red[tid] = s;
    }
    w.sync();
    for (int stride = w.nwarps * 16; stride >= 1; stride >>= 1) {
      FOR_LANES(li) {
        const int tid = w.warp * 32 + w.lane(li);
        if (tid < stride) red[tid] += red[tid + stride];
      }
      w.sync();
    }
    const float mean = div_rn(red[0], (float)a.K);
    FOR_LANES(li) {
      const int tid = w.warp * 32 + w.lane(li);
      for (int k = tid; k < a.K; k += w.nwarps * 32) {
        float d = 1.0f;
        if (mean != 0.0f) {  // all-zero x: D = 1 (nan mean is != 0 and stays nan)
          float base = add_rn(a.D[k], mul_rn(a.lam, mean));
          base = base < f32_tiny() ? f32_tiny() : (base > f32_max() ? f32_max() : base);
          d = pow_f(base, a.alpha);
        }
        a.D[k] = d;
      }
    }
  }
};

// ---- quantize: W * D -> groupwise codes, packed straight into cupy_mma -----------------------
struct QuantArgs {
  const void* W;   // [N][K]
  const float* D;  // [K] or null
  u32* qw;         // [NT][KC V 128 + GQ 16]: codes [KC][V][32][4], then zero codes [GQ][8][2]
  float* sc;       // [NT][G][8][4]: scales of rows (r, r + 8), then their centred offsets m0
  u32* zp;         // mins (fp32) or zeros (int32), [NT][G][8][2]; null for FORM_SYM
  int N, K, KC, G, g, UC, UG, form, has_D;
  float beta;
  FastDiv gdiv;
};

// Grid (NT, units), block 256 (8 warps).  A unit is UC whole chunks that are also UG whole
// groups (UC KCH = lcm(g, KCH), or the whole row when that is longer): block (mt, u)
// owns 16 rows x that K range, so no word and no group is shared between blocks.
// Pass 1: one warp per (row, group): W' = W * D (IEEE multiply), min / max / max|.| and
// nan / inf flags over the group (lanes stride K, shuffle tree), then lane 0 derives the
// scale and offset operation by operation as reference.quantize (IEEE division,
// round-half-even, no contraction), and from the stored values the group's zero code c
// and m0 = s c + m exactly as PackedWeight.centred (one rounding, through fp64), writes
// them in cupy_mma order and the scale and offset to shared memory (16 UG x 2 floats).  Pass 2: one thread per 32-bit word of the unit's chunks: each
// field's code from W' (second read, from L1 / L2) and its group's parameters, packed.
// Bytes per weight: one read of W (2-4 B) + D from cache, b / 8 written; 8 B per group.
template <int BITS, class WE>
struct Quantize {
  static constexpr int KCH = Lay<BITS>::KCH, V = Lay<BITS>::V, WIDTH = Lay<BITS>::WIDTH;
  static constexpr int FPW = 32 / WIDTH;  // fields per word
  static constexpr float LEVELS = (float)((1 << BITS) - 1), QPOS = (float)((1 << (BITS - 1)) - 1);
  static constexpr float HALF = (float)(1 << (BITS - 1));

  static TTQ_FN float wval(const QuantArgs& a, const typename WE::T* W, int n, int k) {
    const float v = WE::load(W, (i64)n * a.K + k);
    return a.has_D ? mul_rn(v, a.D[k]) : v;
  }

  template <class W>
  static TTQ_FN void run(const QuantArgs& a, W& w) {
    const typename WE::T* Wt = static_cast<const typename WE::T*>(a.W);
    float* prm = w.smem;  // [16][UG][2]: scale used for the codes, offset (mn or z)
    const int mt = w.bx, u = w.by;
    const int j0 = u * a.UG, ng = imin(a.UG, a.G - j0);
    for (int pidx = w.warp; pidx < 16 * ng; pidx += w.nwarps) {
      const int r = pidx / ng, jl = pidx - r * ng, j = j0 + jl, n = mt * 16 + r;
      float mn[W::N], mx[W::N], am[W::N];
      u32 bad[W::N];  // bit 0: a nan, bit 1: a non-finite value
      FOR_LANES(li) {
        mn[li] = f32_inf(), mx[li] = -f32_inf(), am[li] = 0.0f, bad[li] = 0;
        if (n < a.N) {
          const int k1 = imin(a.K, (j + 1) * a.g);
          for (int k = j * a.g + w.lane(li); k < k1; k += 32) {
            const float v = wval(a, Wt, n, k), av = abs_f(v);
            if (v < mn[li]) mn[li] = v;  // nan compares false: tracked in bad instead
            if (v > mx[li]) mx[li] = v;
            if (av > am[li]) am[li] = av;
            bad[li] |= (is_nan(v) ? 1u : 0u) | (is_finite(v) ? 0u : 2u);
          }
        }
      }
      for (int m = 16; m >= 1; m >>= 1) {
        float o1[W::N], o2[W::N], o3[W::N];
        u32 o4[W::N];
        FOR_LANES(li) o1[li] = mn[li], o2[li] = mx[li], o3[li] = am[li], o4[li] = bad[li];
        w.shfl_xor(o1, m);
        w.shfl_xor(o2, m);
        w.shfl_xor(o3, m);
        w.shfl_xor(o4, m);
        FOR_LANES(li) {
          mn[li] = o1[li] < mn[li] ? o1[li] : mn[li];
          mx[li] = o2[li] > mx[li] ? o2[li] : mx[li];
          am[li] = o3[li] > am[li] ? o3[li] : am[li];
          bad[li] |= o4[li];
        }
      }
      FOR_LANES(li) {
        if (w.lane(li) != 0) continue;
        const i64 at = (((i64)mt * a.G + j) * 8 + (r & 7)) * 2 + (r >> 3);
        const i64 rec = (((i64)mt * a.G + j) * 8 + (r & 7)) * 4 + (r >> 3);
        if (j == a.G - 1)  // the zero-code bytes past the last group are 0, as layout.from_canonical pads
          for (int jp = a.G; jp < 4 * ((a.G + 3) >> 2); ++jp) centre_byte(a, mt, r, jp) = 0;
        if (n >= a.N) {  // padding rows: zero, as layout.from_canonical pads
          a.sc[rec] = a.sc[rec + 2] = 0.0f;
          centre_byte(a, mt, r, j) = 0;
          if (a.form != FORM_SYM) a.zp[at] = 0u;
          continue;
        }
        float lo = mn[li], hi = mx[li], amax = am[li];
        if (bad[li] & 1u) lo = hi = amax = f32_nan();  // torch.amin / amax propagate nan
        float s, zf = 0.0f;
        i32 zi = 0;
        if (a.form == FORM_SYM) {
          const float ab = mul_rn(amax, a.beta);
          s = ab > 0.0f ? div_rn(ab, QPOS) : 1.0f;
        } else {
          const float centre = div_rn(add_rn(hi, lo), 2.0f);
          const float half = mul_rn(div_rn(sub_rn(hi, lo), 2.0f), a.beta);
          lo = sub_rn(centre, half);
          hi = add_rn(centre, half);
          s = div_rn(sub_rn(hi, lo), LEVELS);
          if (a.form == FORM_FLOAT) {
            s = s > 0.0f ? s : 1.0f;
            zf = lo;
            a.zp[at] = f32_bits(lo);
          } else {
            s = s > 0.0f ? s : (lo != 0.0f ? abs_f(lo) : 1.0f);
            zf = rint_f(div_rn(-lo, s));
            // torch: nan_to_num(z).to(int32); out of range gives INT32_MIN as on x86
            if (!is_nan(zf)) zi = (zf >= 2147483648.0f || zf < -2147483648.0f) ? (i32)0x80000000u : (i32)zf;
            a.zp[at] = (u32)zi;
          }
        }
        const float s_out = (bad[li] & 2u) ? f32_nan() : s;  // a non-finite group never gives a finite output
        // the zero code and its value, from the stored s and offset (format.PackedWeight.centred)
        u32 c = (u32)HALF;
        double m0 = 0.0;
        if (a.form == FORM_FLOAT) {
          const bool ok = is_finite(s_out) && s_out != 0.0f && is_finite(lo);
          float q = ok ? rint_f(div_rn(-lo, s_out)) : 0.0f;
          q = q < 0.0f ? 0.0f : (q > LEVELS ? LEVELS : q);
          c = (u32)q;
          m0 = (double)lo + (double)s_out * (double)c;  // exact in fp64, rounded once below
        } else if (a.form == FORM_INT) {
          c = (u32)(zi < 0 ? 0 : (zi > (i32)LEVELS ? (i32)LEVELS : zi));
          m0 = (double)s_out * ((double)c - (double)zi);
        }
        a.sc[rec] = s_out;
        a.sc[rec + 2] = (float)m0;
        centre_byte(a, mt, r, j) = (u8)c;
        prm[(r * a.UG + jl) * 2] = s;
        prm[(r * a.UG + jl) * 2 + 1] = zf;
      }
    }
    w.sync();
    const int c0 = u * a.UC, c1 = imin(a.KC, c0 + a.UC);
    for (int c = c0; c < c1; ++c) {
      FOR_LANES(li) {
        for (int idx = w.warp * 32 + w.lane(li); idx < V * 128; idx += w.nwarps * 32) {
          const int v = idx >> 7, ln = (idx >> 2) & 31, wd = idx & 3;
          u32 word = 0;
          if (BITS == 3 && v == 2) {  // hi plane: bit 2 of the codes of lo words 2 wd, 2 wd + 1
            for (int q = 0; q < 2; ++q)
              for (int f = 0; f < 16; ++f) {
                int jt, e, r, kk;
                field_pos<3>((2 * wd + q) >> 2, (2 * wd + q) & 3, f, jt, e);
                element_rc(ln, jt, e, r, kk);
                word |= ((code(a, Wt, prm, mt, u, r, c * KCH + kk) >> 2) & 1u) << hi_bit_pos(q, f);
              }
          } else {
            for (int f = 0; f < FPW; ++f) {
              int jt, e, r, kk;
              field_pos<BITS>(v, wd, f, jt, e);
              element_rc(ln, jt, e, r, kk);
              word |= (code(a, Wt, prm, mt, u, r, c * KCH + kk) & ((1u << WIDTH) - 1)) << (f * WIDTH);
            }
          }
          a.qw[tile_stride(a.KC, V, a.G) * mt + ((i64)c * V + v) * 128 + ln * 4 + wd] = word;
        }
      }
    }
  }

  // the byte of the zero code of row 16 mt + r, group j (layout.py: 4 groups per word, little-endian)
  static TTQ_FN u8& centre_byte(const QuantArgs& a, int mt, int r, int j) {
    u32* words = a.qw + tile_stride(a.KC, V, a.G) * mt + (i64)a.KC * V * 128;
    return reinterpret_cast<u8*>(words + ((j >> 2) * 8 + (r & 7)) * 2 + (r >> 3))[j & 3];
  }

  // the stored (unsigned) code of row 16 mt + r, column k: the reference's expressions
  static TTQ_FN u32 code(const QuantArgs& a, const typename WE::T* Wt, const float* prm, int mt, int u, int r, int k) {
    const int n = mt * 16 + r;
    if (n >= a.N || k >= a.K) return 0u;
    const float v = wval(a, Wt, n, k);
    const int jl = (int)fastdiv((u32)k, a.gdiv) - u * a.UG;
    const float s = prm[(r * a.UG + jl) * 2], zf = prm[(r * a.UG + jl) * 2 + 1];
    float q;
    if (a.form == FORM_SYM) {
      q = rint_f(div_rn(v, s));
      q = q < -QPOS ? -QPOS : (q > QPOS ? QPOS : q);
    } else {
      q = a.form == FORM_FLOAT ? rint_f(div_rn(sub_rn(v, zf), s)) : add_rn(rint_f(div_rn(v, s)), zf);
      q = q < 0.0f ? 0.0f : (q > LEVELS ? LEVELS : q);
    }
    if (is_nan(q)) q = 0.0f;  // torch.nan_to_num
    return a.form == FORM_SYM ? (u32)(i32)(q + HALF) : (u32)q;
  }
};

// ---- dequantize cupy_mma -> dense [N][K] (prefill through cuBLAS, odd group sizes) ---------
struct DequantArgs {
  const u32* qw;    // codes, then zero codes (layout.py)
  const float* sc;  // [NT][G][8][4]: s, then m0
  void* out;        // [N][K]
  int N, K, KC, G;
  FastDiv gdiv;
};

// Grid (NT, KC), block 128: one row tile x one chunk.  Phase 1: each thread unpacks one
// word (per vector) into shared memory (16 x KCH codes, bytes); phase 2: each thread
// writes outputs along K (coalesced): w = s (u - c) + m0 in fp32 (u - c exact, then two
// roundings: bit for bit format.dequantize, docs/numerics.md rule Q1), stored in the
// output dtype.  Bytes per weight: b / 8 read, 2-4 written; group records from cache.
template <int BITS, class OE>
struct Dequant {
  static constexpr int KCH = Lay<BITS>::KCH, V = Lay<BITS>::V, WIDTH = Lay<BITS>::WIDTH, FPW = 32 / WIDTH;
  static constexpr int SMEM_FLOATS = 16 * 256 / 4;  // static shared memory: 16 x KCH code bytes

  template <class W>
  static TTQ_FN void run(const DequantArgs& a, W& w) {
    u8* codes = reinterpret_cast<u8*>(w.smem);  // [16][KCH]
    const int mt = w.bx, c = w.by, nthreads = w.nwarps * 32;
    const u32* tile = a.qw + tile_stride(a.KC, V, a.G) * mt;
    const u32* base = tile + (i64)c * (V * 128);
    const int VL = BITS == 3 ? 2 : V;
    FOR_LANES(li) {
      for (int idx = w.warp * 32 + w.lane(li); idx < VL * 128; idx += nthreads) {
        const int v = idx >> 7, ln = (idx >> 2) & 31, wd = idx & 3;
        const u32 word = base[idx];
        for (int f = 0; f < FPW; ++f) {
          int jt, e, r, kk;
          field_pos<BITS>(v, wd, f, jt, e);
          element_rc(ln, jt, e, r, kk);
          codes[r * KCH + kk] = (u8)field_bits<BITS>(word, f);
        }
      }
    }
    if (BITS == 3) {
      w.sync();
      FOR_LANES(li) {
        for (int idx = w.warp * 32 + w.lane(li); idx < 128; idx += nthreads) {
          const int ln = idx >> 2, wd = idx & 3;
          const u32 word = base[2 * 128 + idx];
          for (int q = 0; q < 2; ++q)
            for (int f = 0; f < 16; ++f) {
              int jt, e, r, kk;
              field_pos<3>((2 * wd + q) >> 2, (2 * wd + q) & 3, f, jt, e);
              element_rc(ln, jt, e, r, kk);
              codes[r * KCH + kk] |= (u8)(((word >> hi_bit_pos(q, f)) & 1u) << 2);
            }
        }
      }
    }
    w.sync();
    FOR_LANES(li) {
      for (int idx = w.warp * 32 + w.lane(li); idx < 16 * KCH; idx += nthreads) {
        const int r = idx / KCH, kk = idx - r * KCH, n = mt * 16 + r, k = c * KCH + kk;
        if (n >= a.N || k >= a.K) continue;
        const int j = (int)fastdiv((u32)k, a.gdiv);
        const i64 rec = (((i64)mt * a.G + j) * 8 + (r & 7)) * 4 + (r >> 3);
        const u32 cw = tile[(i64)a.KC * V * 128 + ((j >> 2) * 8 + (r & 7)) * 2 + (r >> 3)];
        const float u = (float)((i32)codes[idx] - (i32)centre_of<BITS>(cw, j));  // exact
        OE::store(static_cast<typename OE::T*>(a.out), (i64)n * a.K + k, add_rn(mul_rn(u, a.sc[rec]), a.sc[rec + 2]));
      }
    }
  }
};

}  // namespace ttq
