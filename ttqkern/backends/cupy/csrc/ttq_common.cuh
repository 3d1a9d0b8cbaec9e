// Shared building blocks of the CuPy backend's CUDA kernels.
//
// Every kernel body in this folder is a template over a *warp* type W:
//   - DevWarp (N = 1): the real thing, compiled by NVRTC / nvcc; a thread holds one lane.
//   - HostWarp (N = 32, host_emulator.cpp): the same body compiled by g++ runs one warp
//     per host thread with every per-lane variable an array of 32, so CPU tests execute
//     the kernels' index arithmetic, bit tricks and MMA fragment bookkeeping exactly.
// Per-lane variables therefore carry a lane dimension [W::N] just before their fragment
// dimension, and lane-local code sits in FOR_LANES(li) loops (a single iteration on the
// GPU).  Warp collectives (mma, shuffles) and block barriers are members of W.
//
// No headers are included on the device side: NVRTC compiles these sources as they are.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define TTQ_DEVICE 1
#define TTQ_FN __device__ __forceinline__
#else
#include <cmath>
#include <cstring>
#define TTQ_FN inline
#endif

namespace ttq {

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

#define FOR_LANES(li) for (int li = 0; li < W::N; ++li)

// quantization forms (ttqkern.quant.Form): w = s * u + m with m per group; every kernel
// computes it centred, w = s * (u - c) + m0 (docs/numerics.md, rule Q1)
enum Form { FORM_FLOAT = 0, FORM_INT = 1, FORM_SYM = 2 };
// activation modes of the MMA kernels: B operand (x / D) and A operand (codes) types
enum XMode { XM_F16 = 0, XM_BF16 = 1, XM_BF16X2 = 2 };


// ---- scalar bit casts and IEEE arithmetic that the compiler may not contract ----------
TTQ_FN float as_f32(u32 b) {
#ifdef TTQ_DEVICE
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, 4);
  return f;
#endif
}
TTQ_FN u32 f32_bits(float f) {
#ifdef TTQ_DEVICE
  return __float_as_uint(f);
#else
  u32 b;
  std::memcpy(&b, &f, 4);
  return b;
#endif
}
#ifdef TTQ_DEVICE
TTQ_FN float add_rn(float a, float b) { return __fadd_rn(a, b); }
TTQ_FN float sub_rn(float a, float b) { return __fsub_rn(a, b); }
TTQ_FN float mul_rn(float a, float b) { return __fmul_rn(a, b); }
TTQ_FN float div_rn(float a, float b) { return __fdiv_rn(a, b); }
TTQ_FN float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
TTQ_FN float rint_f(float a) { return rintf(a); }
TTQ_FN float abs_f(float a) { return fabsf(a); }
TTQ_FN float pow_f(float a, float b) { return powf(a, b); }
TTQ_FN float sqrt_f(float a) { return sqrtf(a); }
TTQ_FN u32 umulhi(u32 a, u32 b) { return __umulhi(a, b); }
TTQ_FN u32 byte_perm(u32 a, u32 b, u32 s) { return __byte_perm(a, b, s); }
TTQ_FN u32 rotr(u32 x, int s) { return __funnelshift_r(x, x, s); }
#else
// host: plain IEEE fp32 (built with -ffp-contract=off, no fast-math)
TTQ_FN float add_rn(float a, float b) { return a + b; }
TTQ_FN float sub_rn(float a, float b) { return a - b; }
TTQ_FN float mul_rn(float a, float b) { return a * b; }
TTQ_FN float div_rn(float a, float b) { return a / b; }
TTQ_FN float fma_rn(float a, float b, float c) { return std::fma(a, b, c); }
TTQ_FN float rint_f(float a) { return std::rint(a); }
TTQ_FN float abs_f(float a) { return std::fabs(a); }
TTQ_FN float pow_f(float a, float b) { return std::pow(a, b); }
TTQ_FN float sqrt_f(float a) { return std::sqrt(a); }
TTQ_FN u32 umulhi(u32 a, u32 b) { return (u32)(((u64)a * b) >> 32); }
TTQ_FN u32 byte_perm(u32 a, u32 b, u32 s) {  // PTX prmt default mode
  u8 bytes[8];
  for (int i = 0; i < 4; ++i) bytes[i] = (u8)(a >> (8 * i)), bytes[4 + i] = (u8)(b >> (8 * i));
  u32 r = 0;
  for (int i = 0; i < 4; ++i) r |= (u32)bytes[(s >> (4 * i)) & 7] << (8 * i);
  return r;
}
TTQ_FN u32 rotr(u32 x, int s) { return (s & 31) ? (x >> (s & 31)) | (x << (32 - (s & 31))) : x; }
#endif
TTQ_FN int imin(int a, int b) { return a < b ? a : b; }
// the value itself, through an asm the compiler cannot see into (keeps selects as selects)
TTQ_FN u32 opaque(u32 x) {
#ifdef TTQ_DEVICE
  asm("mov.b32 %0, %0;" : "+r"(x));
#endif
  return x;
}
// fp32 constants by their bits (NVRTC has no __builtin_huge_valf)
TTQ_FN float f32_inf() { return as_f32(0x7F800000u); }
TTQ_FN float f32_tiny() { return as_f32(0x00800000u); }  // smallest normal
TTQ_FN float f32_max() { return as_f32(0x7F7FFFFFu); }
TTQ_FN bool is_nan(float a) { return a != a; }
TTQ_FN bool is_finite(float a) { return abs_f(a) < f32_inf(); }

// q = n / d for 32-bit unsigned n and a run-time divisor d >= 1, by a multiply:
// l = ceil(log2 d), m = floor(2^32 (2^l - d) / d) + 1 (host, fastdiv_make).
struct FastDiv {
  u32 d, m, l;
};
TTQ_FN u32 fastdiv(u32 n, FastDiv f) { return (u32)(((u64)umulhi(f.m, n) + n) >> f.l); }

// ---- fp16 / bf16 bits ---------------------------------------------------------------------
TTQ_FN u32 pack2(u32 lo, u32 hi) { return (lo & 0xFFFFu) | (hi << 16); }
TTQ_FN float bf16_to_f32(u32 h) { return as_f32((h & 0xFFFFu) << 16); }
#ifdef TTQ_DEVICE
TTQ_FN u32 f32_to_f16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
TTQ_FN float f16_to_f32(u32 h) {
  float f;
  unsigned short s = (unsigned short)h;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
  return f;
}
TTQ_FN u32 f32_to_bf16(float f) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
// (lo, hi) fp32 -> bfloat162 bits, round to nearest even (one F2FP on sm_80+)
TTQ_FN u32 f32x2_to_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
TTQ_FN u32 hfma2_f16(u32 a, u32 b, u32 c) {
  u32 d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
TTQ_FN u32 hfma2_bf16(u32 a, u32 b, u32 c) {
  u32 d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
#else
// round-to-nearest-even fp32 -> fp16 bits (subnormals, overflow to inf, nan kept)
inline u32 f32_to_f16(float f) {
  u32 x = f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return sign | 0x7E00u | ((ax >> 13) & 0x3FFu);  // nan, quiet
  if (ax >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520: rounds to inf
  if (ax < 0x38800000u) {  // below 2^-14: subnormal fp16 (or zero)
    double v = (double)as_f32(ax) * 16777216.0;  // in units of 2^-24, exact
    double r = std::nearbyint(v);  // current rounding mode: nearest even
    return sign | (u32)r;
  }
  u32 mant = ax & 0x7FFFFFu, exp = (ax >> 23) - 112;  // rebias 127 -> 15
  u32 h = (exp << 10) | (mant >> 13), rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) ++h;  // carries into the exponent correctly
  return sign | h;
}
inline float f16_to_f32(u32 h) {
  u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FFu;
  if (e == 0) return (sign ? -1.0f : 1.0f) * (float)m * 5.9604644775390625e-08f;  // m * 2^-24
  if (e == 31) return as_f32(sign | 0x7F800000u | (m << 13));
  return as_f32(sign | ((e + 112) << 23) | (m << 13));
}
inline u32 f32_to_bf16(float f) {
  u32 x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (x >> 16) | 0x40u;  // nan stays nan
  return (x + 0x7FFFu + ((x >> 16) & 1)) >> 16;
}
inline u32 f32x2_to_bf16x2(float lo, float hi) { return pack2(f32_to_bf16(lo), f32_to_bf16(hi)); }
// fused multiply-add on each half, rounded once: the product and sum of fp16 values are
// exact in double, so rounding the double result to fp16 is the correctly rounded fma
inline u32 hfma2_f16(u32 a, u32 b, u32 c) {
  u32 r = 0;
  for (int i = 0; i < 2; ++i) {
    double v = (double)f16_to_f32(a >> (16 * i)) * f16_to_f32(b >> (16 * i)) + f16_to_f32(c >> (16 * i));
    r |= (f32_to_f16((float)v) & 0xFFFFu) << (16 * i);  // v is exact, (float) is too for fp16 ranges
  }
  return r;
}
inline u32 hfma2_bf16(u32 a, u32 b, u32 c) {  // exact for the small integers the dequantizer makes
  u32 r = 0;
  for (int i = 0; i < 2; ++i) {
    double v = (double)bf16_to_f32(a >> (16 * i)) * bf16_to_f32(b >> (16 * i)) + bf16_to_f32(c >> (16 * i));
    r |= (f32_to_bf16((float)v) & 0xFFFFu) << (16 * i);
  }
  return r;
}
#endif

// ---- the cupy_mma packed layout (mirrors ttqkern/backends/cupy/layout.py) -----------------
// Per row tile of 16 rows and chunk of KCH codes of K, each lane holds V vectors of 4
// 32-bit words; a warp's vector is 512 contiguous bytes (one 128-bit load per lane).
template <int BITS>
struct Lay;
template <>
struct Lay<8> {
  static constexpr int KCH = 64, V = 2, WIDTH = 8;
};
template <>
struct Lay<4> {
  static constexpr int KCH = 64, V = 1, WIDTH = 4;
};
template <>
struct Lay<2> {
  static constexpr int KCH = 128, V = 1, WIDTH = 2;
};
template <>
struct Lay<3> {
  static constexpr int KCH = 256, V = 3, WIDTH = 2;  // lo plane 2 bits in vectors 0, 1; hi in 2
};

// A row tile's int32 words in qweight: its codes (KC V 128), then its groups' zero codes
// ([GQ][8][2] words, byte j % 4 of word [j / 4][r][h] for row r + 8 h, group j)
TTQ_FN int centre_words(int G) { return ((G + 3) >> 2) * 16; }
TTQ_FN i64 tile_stride(int KC, int V, int G) { return (i64)KC * V * 128 + centre_words(G); }
// the zero code of group j in the word that holds it (masked: any stored byte gives a code)
template <int BITS>
TTQ_FN u32 centre_of(u32 word, int j) {
  return (word >> (8 * (j & 3))) & ((1u << BITS) - 1);
}

// (tile j, fragment element e) of field f of word w of vector v (3 bits: lo plane)
template <int BITS>
TTQ_FN void field_pos(int v, int w, int f, int& j, int& e) {
  if (BITS == 8) {
    j = 2 * v + (w >> 1);
    e = 4 * (w & 1) + f;
  } else if (BITS == 4) {
    j = w;
    e = 2 * (f & 3) + (f >> 2);
  } else {
    const int i = 4 * v + w;
    j = 2 * i + ((f >> 2) & 1);
    e = 2 * (f & 3) + (f >> 3);
  }
}
// rotation lining up the hi bits of (lo word parity q, field group gamma) with the lo fields:
// {0, 1, 8, 9}[2 q + gamma]
TTQ_FN int hi_shift(int i) { return (i & 1) + 8 * (i >> 1); }
// bit of hi word m holding bit 2 of field f of lo word 2m + q (3 bits)
TTQ_FN int hi_bit_pos(int q, int f) {
  const int target = 2 * (f & 3) + 2 + 16 * (f >> 3);
  return (target + hi_shift(2 * q + ((f >> 2) & 1))) & 31;
}
// row in tile and K offset in chunk of element e of tile j held by a lane (PTX m16n8k16 A)
TTQ_FN void element_rc(int lane, int j, int e, int& r, int& kk) {
  const int gid = lane >> 2, t = lane & 3;
  r = gid + 8 * ((e >> 1) & 1);
  kk = 16 * j + 2 * t + (e & 1) + 8 * (e >> 2);
}

// (a & mask) | c in one LOP3: ptxas splits the C expression into two LOP3s when both
// constants are immediates; keeping c in a register fuses them
template <u32 MASK>
TTQ_FN u32 and_or(u32 a, u32 c) {
#ifdef TTQ_DEVICE
  u32 d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "r"(c));
  return d;
#else
  return (a & MASK) | c;
#endif
}

// ---- codes -> MMA A fragments by bit tricks ----------------------------------------------
// The magic constant's exponent makes the mantissa's low bits an integer: fp16 0x6400 is
// 1024 (ulp 1 up to 2047), bf16 0x4300 is 128 (ulp 1 up to 255).  OR-ing a code field
// into it (one LOP3 for two codes) gives 1024 + u * 4^p; one HFMA2 by (4^-p, -1024 4^-p - c)
// returns u - c, the code centred on its group's zero code c (docs/numerics.md, rule Q1):
// an integer in [-255, 255], exact in fp16 and bf16, and the bias is exact too (c is a
// small integer in the bias's mantissa).  No I2F, no shuffle, and centring costs the
// inner loop nothing: only the bias operands change, once per group.  wv: the lane's
// words of one chunk (4 V), j: tile within the chunk (a constant after unrolling), bz:
// the bias operands of the lane's two rows (make_bias), a: 4 registers (a0 a1) (a2 a3)
// (a4 a5) (a6 a7) of the m16n8k16 A fragment (registers 0 and 2 hold row gID, 1 and 3
// row gID + 8).
#define TTQ_F16(x) ((u32)(x) * 0x10001u)

// bias operands per lane and row tile: 2 (4 and 8 bits), 4 (2 and 3 bits: one per field position)
template <int BITS>
struct Centre {
  static constexpr int NB = (BITS == 2 || BITS == 3) ? 4 : 2;
};

// The HFMA2 bias operands for zero codes c0 (row gID) and c1 (row gID + 8), c0, c1 <= 2^BITS - 1.
// fp16 -(1024 4^-p + c) = bits (0xE400, 0xDC00, 0xD400, 0xCC00)[p] + c 4^p (c 4^p stays in the
// mantissa); bf16 -(128 4^-p + c) = (0xC300, 0xC200, 0xC100)[p] + c 4^p.  8-bit bf16 goes
// through fp32: 2^23 + c.
template <int BITS, bool BF>
TTQ_FN void make_bias(u32 c0, u32 c1, u32 (&bz)[Centre<BITS>::NB]) {
  if (BITS == 8 && BF) {
    bz[0] = 0x4B000000u | c0;
    bz[1] = 0x4B000000u | c1;
  } else if (BITS == 8 || BITS == 4) {
    const u32 base = BF ? TTQ_F16(0xC300) : TTQ_F16(0xE400);
    bz[0] = base + c0 * 0x10001u;
    // 4-bit fp16: the odd nibbles sit at 1024 + 16 u, undone by (1/16, -64 - c)
    bz[1] = (BITS == 4 && !BF) ? TTQ_F16(0xD400) + c1 * (0x10001u << 4) : base + c1 * 0x10001u;
  } else {
    const u32 BI[4] = {BF ? TTQ_F16(0xC300) : TTQ_F16(0xE400), BF ? TTQ_F16(0xC200) : TTQ_F16(0xDC00),
                       BF ? TTQ_F16(0xC100) : TTQ_F16(0xD400), TTQ_F16(0xCC00)};
#pragma unroll
    for (int P = 0; P < 4; ++P) {  // field position P is register P: row P & 1 (bf16 shifts P = 3 to 0)
      const int Q = (BF && P == 3) ? 0 : P;
      bz[P % Centre<BITS>::NB] = BI[Q] + ((P & 1) ? c1 : c0) * (0x10001u << (2 * Q));
    }
  }
}

// Codes of fields (P, P + 8) of a 2-bit word as a half2 / bfloat162 pair: the fields sit at
// bits 2P and 2P + 16, so "magic | field" is magic + c 4^P (3 bits: bit 2 of the code comes
// from the rotated hi word at 2P + 2).  fp16 holds 1024 + 7 4^P for P <= 3; bf16 holds
// 128 + 7 4^P only for P <= 2, so bf16 shifts P = 3 down first.
template <int BITS, bool BF, int P>
TTQ_FN u32 pair2(u32 ls, u32 hs, u32 magic, const u32 (&sc)[4], u32 bias) {
  constexpr int S = (BF && P == 3) ? 6 : 0;  // bits shifted out first
  constexpr int Q = P - S / 2;               // field position after the shift
  u32 v = and_or<0x00030003u << (2 * Q)>(ls >> S, magic);
  if (BITS == 3) v = and_or<0x00040004u << (2 * Q)>(hs >> S, v);
  return BF ? hfma2_bf16(v, sc[Q], bias) : hfma2_f16(v, sc[Q], bias);
}

template <int BITS, bool BF>
TTQ_FN void codes_to_afrag(const u32* wv, int j, const u32 (&bz)[Centre<BITS>::NB], u32 (&a)[4]) {
  const u32 MAGIC = BF ? 0x43004300u : 0x64006400u;
  // scales of the HFMA2 that undoes "magic + c * 4^p" for p = 0..3
  const u32 SC[4] = {BF ? TTQ_F16(0x3F80) : TTQ_F16(0x3C00), BF ? TTQ_F16(0x3E80) : TTQ_F16(0x3400),
                     BF ? TTQ_F16(0x3D80) : TTQ_F16(0x2C00), BF ? TTQ_F16(0x3C80) : TTQ_F16(0x2400)};
  if (BITS == 4) {
    const u32 w = wv[j];
    if (!BF) {  // nibbles (0,4) and (2,6) at 1024 + c, (1,5) and (3,7) at 1024 + 16 c
      const u32 w8 = w >> 8;
      a[0] = hfma2_f16(and_or<0x000F000Fu>(w, MAGIC), SC[0], bz[0]);
      a[1] = hfma2_f16(and_or<0x00F000F0u>(w, MAGIC), SC[2], bz[1]);
      a[2] = hfma2_f16(and_or<0x000F000Fu>(w8, MAGIC), SC[0], bz[0]);
      a[3] = hfma2_f16(and_or<0x00F000F0u>(w8, MAGIC), SC[2], bz[1]);
    } else {  // bf16 has room for 128 + c only: shift each pair down
#pragma unroll
      for (int p = 0; p < 4; ++p) a[p] = hfma2_bf16(and_or<0x000F000Fu>(w >> (4 * p), MAGIC), SC[0], bz[p & 1]);
    }
  } else if (BITS == 8) {
    const u32 w0 = wv[2 * j], w1 = wv[2 * j + 1];
    if (!BF) {  // bytes into the low mantissa of 1024: [b, 0x64, b', 0x64]
      a[0] = hfma2_f16(byte_perm(w0, 0x64646464u, 0x4140u), SC[0], bz[0]);
      a[1] = hfma2_f16(byte_perm(w0, 0x64646464u, 0x4342u), SC[0], bz[1]);
      a[2] = hfma2_f16(byte_perm(w1, 0x64646464u, 0x4140u), SC[0], bz[0]);
      a[3] = hfma2_f16(byte_perm(w1, 0x64646464u, 0x4342u), SC[0], bz[1]);
    } else {  // 8-bit codes overflow bf16's 128 + c: go through fp32 (2^23 + u) - (2^23 + c), exact
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const u32 w = p < 2 ? w0 : w1;
        const int b = 2 * (p & 1);
        const float cb = as_f32(bz[p & 1]);
        const float lo = as_f32(byte_perm(w, 0x4B000000u, 0x7540u | b)) - cb;
        const float hi = as_f32(byte_perm(w, 0x4B000000u, 0x7540u | (b + 1))) - cb;
        a[p] = f32x2_to_bf16x2(lo, hi);
      }
    }
  } else {  // 2-bit fields; 3 bits: the hi plane's bit merged in above each lo field
    const u32 lw = wv[j >> 1];
    const u32 ls = (j & 1) ? lw >> 8 : lw;  // second field group of the word
    u32 hs = 0;
    if (BITS == 3) hs = rotr(wv[8 + (j >> 2)], hi_shift(2 * ((j >> 1) & 1) + (j & 1)));
    a[0] = pair2<BITS, BF, 0>(ls, hs, MAGIC, SC, bz[0]);
    a[1] = pair2<BITS, BF, 1>(ls, hs, MAGIC, SC, bz[1 % Centre<BITS>::NB]);
    a[2] = pair2<BITS, BF, 2>(ls, hs, MAGIC, SC, bz[2 % Centre<BITS>::NB]);
    a[3] = pair2<BITS, BF, 3>(ls, hs, MAGIC, SC, bz[3 % Centre<BITS>::NB]);
  }
}

// the value of half h of a fragment register (an fp16 / bf16 pair) as fp32
template <bool BF>
TTQ_FN float half_value(u32 reg, int h) {
  const u32 b = (reg >> (16 * h)) & 0xFFFFu;
  return BF ? bf16_to_f32(b) : f16_to_f32(b);
}

// ---- one element of a code field from the packed words (dequantize / emulation) --------
template <int BITS>
TTQ_FN u32 field_bits(u32 word, int f) {
  return (word >> (f * Lay<BITS>::WIDTH)) & ((1u << Lay<BITS>::WIDTH) - 1);
}

// ---- loads -------------------------------------------------------------------------------
// 128-bit read-only load that does not allocate in L1 (streamed weights)
TTQ_FN void ldg128_stream(const u32* p, u32* r) {
#ifdef TTQ_DEVICE
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "l"(p));
#else
  for (int i = 0; i < 4; ++i) r[i] = p[i];
#endif
}
// 128-bit read-only load through L1 (x~, reused by every warp of a block)
TTQ_FN void ldg128(const u32* p, u32* r) {
#ifdef TTQ_DEVICE
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
#else
  for (int i = 0; i < 4; ++i) r[i] = p[i];
#endif
}
TTQ_FN void ldg64(const u32* p, u32* r) {
#ifdef TTQ_DEVICE
  asm("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "l"(p));
#else
  r[0] = p[0];
  r[1] = p[1];
#endif
}

// element types of activations / outputs: fp16 and bf16 as their 16-bit patterns
struct F16 {
  typedef u16 T;
  static TTQ_FN float load(const T* p, i64 i) { return f16_to_f32(p[i]); }
  static TTQ_FN void store(T* p, i64 i, float v) { p[i] = (T)f32_to_f16(v); }
};
struct BF16 {
  typedef u16 T;
  static TTQ_FN float load(const T* p, i64 i) { return bf16_to_f32(p[i]); }
  static TTQ_FN void store(T* p, i64 i, float v) { p[i] = (T)f32_to_bf16(v); }
};
struct F32 {
  typedef float T;
  static TTQ_FN float load(const T* p, i64 i) { return p[i]; }
  static TTQ_FN void store(T* p, i64 i, float v) { p[i] = v; }
};

// ---- the device warp ---------------------------------------------------------------------
#ifdef TTQ_DEVICE
struct DevWarp {
  static constexpr int N = 1;
  int warp, nwarps, bx, by, bz;
  float* smem;
  TTQ_FN DevWarp(float* s)
      : warp((int)(threadIdx.x >> 5)),
        nwarps((int)(blockDim.x >> 5)),
        bx((int)blockIdx.x),
        by((int)blockIdx.y),
        bz((int)blockIdx.z),
        smem(s) {}
  TTQ_FN int lane(int) const { return (int)(threadIdx.x & 31); }
  TTQ_FN void sync() const { __syncthreads(); }
  TTQ_FN void shfl_xor(float (&v)[1], int m) const { v[0] = __shfl_xor_sync(0xFFFFFFFFu, v[0], m); }
  TTQ_FN void shfl_xor(u32 (&v)[1], int m) const { v[0] = __shfl_xor_sync(0xFFFFFFFFu, v[0], m); }
  // d += a * b on the tensor cores: m16n8k16, fp32 accumulators
  template <bool BF>
  TTQ_FN void mma(float (&d)[1][4], const u32 (&a)[1][4], const u32 (&b)[1][2]) const {
    if (BF)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};"
          : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3])
          : "r"(a[0][0]), "r"(a[0][1]), "r"(a[0][2]), "r"(a[0][3]), "r"(b[0][0]), "r"(b[0][1]));
    else
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};"
          : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3])
          : "r"(a[0][0]), "r"(a[0][1]), "r"(a[0][2]), "r"(a[0][3]), "r"(b[0][0]), "r"(b[0][1]));
  }
};
#endif

}  // namespace ttq
