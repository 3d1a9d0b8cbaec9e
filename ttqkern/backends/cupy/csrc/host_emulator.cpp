// Host emulation of the CuPy backend's kernels, for CPU tests (never used on a GPU).
//
// Built with g++ (-std=c++20 -O1 -ffp-contract=off -pthread -shared -fPIC) from the same
// kernel bodies the GPU runs: each CUDA block runs on the host with one thread per warp,
// and every per-lane variable of a body is an array of 32 (HostWarp::N).  Warp shuffles
// and mma.sync.m16n8k16 act on those arrays with the PTX ISA's fragment layouts;
// __syncthreads is a std::barrier.  What this checks: index arithmetic, the packed
// layout, bit-trick dequantization, fragment bookkeeping, group flushes, epilogues,
// bounds.  What it cannot: the hardware's real fragment layout, asm constraints, memory
// ordering, timing.  Tensor-core sums are done in double here (the GPU rounds in fp32).
#include <barrier>
#include <cstdio>
#include <thread>
#include <type_traits>
#include <vector>

#include "ttq_decode.cuh"
#include "ttq_prologue.cuh"
#include "ttq_requant.cuh"

namespace ttq {

struct HostWarp {
  static constexpr int N = 32;
  int warp, nwarps, bx, by, bz;
  float* smem;
  std::barrier<>* bar;
  int lane(int li) const { return li; }
  void sync() const { bar->arrive_and_wait(); }
  template <class T>
  void shfl_xor(T (&v)[32], int m) const {
    T o[32];
    for (int i = 0; i < 32; ++i) o[i] = v[i ^ m];
    for (int i = 0; i < 32; ++i) v[i] = o[i];
  }
  template <bool BF>
  void mma(float (&d)[32][4], const u32 (&a)[32][4], const u32 (&b)[32][2]) const {
    double A[16][16], B[16][8];
    auto val = [](u32 reg, int half) {
      const u32 h = (reg >> (16 * half)) & 0xFFFFu;
      return (double)(BF ? bf16_to_f32(h) : f16_to_f32(h));
    };
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, t = lane & 3;
      for (int i = 0; i < 8; ++i) A[gid + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = val(a[lane][i >> 1], i & 1);
      for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + 8 * (i >> 1)][gid] = val(b[lane][i >> 1], i & 1);
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, t = lane & 3;
      for (int i = 0; i < 4; ++i) {
        const int row = gid + 8 * (i >> 1), col = 2 * t + (i & 1);
        double s = d[lane][i];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[lane][i] = (float)s;
      }
    }
  }
};

// Run body(warp) for every block of the grid; a block's warps run concurrently (barriers).
template <class F>
void run_grid(int gx, int gy, int gz, int threads, long long smem_bytes, F body) {
  const int nw = threads / 32;
  std::vector<float> smem((size_t)(smem_bytes / 4 + 1));
  for (int bz = 0; bz < gz; ++bz)
    for (int by = 0; by < gy; ++by)
      for (int bx = 0; bx < gx; ++bx) {
        std::barrier<> bar(nw);
        std::vector<std::thread> ts;
        for (int wi = 0; wi < nw; ++wi)
          ts.emplace_back([&, wi] {
            HostWarp w{wi, nw, bx, by, bz, smem.data(), &bar};
            body(w);
            bar.arrive_and_drop();  // an exited warp no longer holds back barriers, as on sm_70+
          });
        for (auto& t : ts) t.join();
      }
}

}  // namespace ttq

using namespace ttq;

#define TTQ_GRID int gx, int gy, int gz, int threads, long long smem

// f(std::integral_constant<int, BITS>) for the code widths the kernels are instantiated for
template <class F>
static int by_bits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
  return -1;
}

// ---- decode ---------------------------------------------------------------------------------
template <int BITS, int XM, int NT, int TG, int RT>
static void decode_inst(const DecodeArgs& a, int gx, int gy, int gz, int threads, long long smem) {
  run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Decode<BITS, XM, NT, TG, RT>::run(a, w); });
}

template <int BITS, int XM, int NT, int TG>
static int decode_rt(int rt, const DecodeArgs& a, TTQ_GRID) {
  switch (rt) {
    case 1: return decode_inst<BITS, XM, NT, TG, 1>(a, gx, gy, gz, threads, smem), 0;
    case 2: return decode_inst<BITS, XM, NT, TG, 2>(a, gx, gy, gz, threads, smem), 0;
  }
  return -1;
}
template <int BITS, int XM>
static int decode_nt(int nt, int tg, int rt, const DecodeArgs& a, TTQ_GRID) {
  if (XM == XM_BF16X2 && nt != 1) return -1;  // fp32 activations: 8 tokens per block (host.decode_setup)
  if (nt == 1) return tg ? decode_rt<BITS, XM, 1, 1>(rt, a, gx, gy, gz, threads, smem)
                         : decode_rt<BITS, XM, 1, 0>(rt, a, gx, gy, gz, threads, smem);
  if (nt == 2) return tg ? decode_rt<BITS, XM, 2, 1>(rt, a, gx, gy, gz, threads, smem)
                         : decode_rt<BITS, XM, 2, 0>(rt, a, gx, gy, gz, threads, smem);
  return -1;
}
template <int BITS>
static int decode_xm(int xm, int nt, int tg, int rt, const DecodeArgs& a, TTQ_GRID) {
  switch (xm) {
    case XM_F16: return decode_nt<BITS, XM_F16>(nt, tg, rt, a, gx, gy, gz, threads, smem);
    case XM_BF16: return decode_nt<BITS, XM_BF16>(nt, tg, rt, a, gx, gy, gz, threads, smem);
    case XM_BF16X2: return decode_nt<BITS, XM_BF16X2>(nt, tg, rt, a, gx, gy, gz, threads, smem);
  }
  return -1;
}

extern "C" int ttq_emu_decode(int bits, int xm, int nt, int tg, int rt, TTQ_GRID, const unsigned* qw, const float* sc,
                              const unsigned* xb, const float* xs1, const float* xs4, const float* xa,
                              const unsigned* fl, const void* x, const float* D, const void* lrB, const void* bias,
                              void* y, int N, int ntiles, int KC, int G, int g, int T, int TP, int K, int KB, int R,
                              int NBX, int has_D, int has_lr, int has_bias, int wr, int wk, int cps) {
  const DecodeArgs a{qw, sc, xb, xs1, xs4, xa, fl, x, D, lrB, bias, y, N, ntiles, KC, G, g, T, TP, K, KB, R,
                     NBX, has_D, has_lr, has_bias, wr, wk, cps};
  return by_bits(bits, [&](auto B) { return decode_xm<B.value>(xm, nt, tg, rt, a, gx, gy, gz, threads, smem); });
}

// ---- prologue -------------------------------------------------------------------------------
template <int XM, class XE>
static void prologue_inst(const PrologueArgs& a, TTQ_GRID) {
  run_grid(gx, gy, gz, threads, smem + 4 * Prologue<XM, XE>::SMEM_FLOATS, [&](HostWarp& w) { Prologue<XM, XE>::run(a, w); });
}

// xe: element type of x and A (0 fp16, 1 bf16, 2 fp32); xm follows from it
extern "C" int ttq_emu_prologue(int xm, int xe, TTQ_GRID, const void* x, const float* D, const void* A, unsigned* xb,
                                float* xs1, float* xs4, float* xa, unsigned* fl, int T, int K, int TP, int KB, int R,
                                int KX, int NBX, int has_D) {
  const PrologueArgs a{x, D, A, xb, xs1, xs4, xa, fl, T, K, TP, KB, R, KX, NBX, has_D};
  if (xm == XM_F16 && xe == 0) return prologue_inst<XM_F16, F16>(a, gx, gy, gz, threads, smem), 0;
  if (xm == XM_BF16 && xe == 1) return prologue_inst<XM_BF16, BF16>(a, gx, gy, gz, threads, smem), 0;
  if (xm == XM_BF16X2 && xe == 2) return prologue_inst<XM_BF16X2, F32>(a, gx, gy, gz, threads, smem), 0;
  return -1;
}

// ---- act_scale ------------------------------------------------------------------------------
extern "C" int ttq_emu_colnorm(int xe, TTQ_GRID, const void* x, float* part, int T, int K, int t_per, int tsplit,
                               int pmode, float p) {
  const ColNormArgs a{x, part, T, K, t_per, tsplit, pmode, p};
  if (xe == 0) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { ColNorm<F16>::run(a, w); }), 0;
  if (xe == 1) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { ColNorm<BF16>::run(a, w); }), 0;
  if (xe == 2) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { ColNorm<F32>::run(a, w); }), 0;
  return -1;
}

extern "C" int ttq_emu_scale(TTQ_GRID, const float* part, float* D, int K, int tsplit, int pmode, float p, float lam,
                  float alpha) {
  const ScaleArgs a{part, D, K, tsplit, pmode, p, lam, alpha};
  run_grid(gx, gy, gz, threads, smem + 4 * Scale::SMEM_FLOATS, [&](HostWarp& w) { Scale::run(a, w); });
  return 0;
}

// ---- quantize / dequantize ------------------------------------------------------------------
template <int BITS>
static int quantize_we(int we, const QuantArgs& a, TTQ_GRID) {
  if (we == 0) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Quantize<BITS, F16>::run(a, w); }), 0;
  if (we == 1) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Quantize<BITS, BF16>::run(a, w); }), 0;
  if (we == 2) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Quantize<BITS, F32>::run(a, w); }), 0;
  return -1;
}

extern "C" int ttq_emu_quantize(int bits, int we, TTQ_GRID, const void* W, const float* D, unsigned* qw, float* sc, unsigned* zp,
                     int N, int K, int KC, int G, int g, int UC, int UG, int form, int has_D, float beta, unsigned gd,
                     unsigned gm, unsigned gl) {
  const QuantArgs a{W, D, qw, sc, zp, N, K, KC, G, g, UC, UG, form, has_D, beta, {gd, gm, gl}};
  return by_bits(bits, [&](auto B) { return quantize_we<B.value>(we, a, gx, gy, gz, threads, smem); });
}

template <int BITS>
static int dequant_oe(int oe, const DequantArgs& a, TTQ_GRID) {
  smem += 4 * Dequant<BITS, F32>::SMEM_FLOATS;  // the kernel's static shared memory
  if (oe == 0) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Dequant<BITS, F16>::run(a, w); }), 0;
  if (oe == 1) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Dequant<BITS, BF16>::run(a, w); }), 0;
  if (oe == 2) return run_grid(gx, gy, gz, threads, smem, [&](HostWarp& w) { Dequant<BITS, F32>::run(a, w); }), 0;
  return -1;
}

extern "C" int ttq_emu_dequant(int bits, int oe, TTQ_GRID, const unsigned* qw, const float* sc, void* out, int N, int K,
                               int KC, int G, unsigned gd, unsigned gm, unsigned gl) {
  const DequantArgs a{qw, sc, out, N, K, KC, G, {gd, gm, gl}};
  return by_bits(bits, [&](auto B) { return dequant_oe<B.value>(oe, a, gx, gy, gz, threads, smem); });
}

// ---- unit checks of the building blocks -----------------------------------------------------
// A fragment of tile j from a lane's chunk words, through the bit tricks, centred on the zero
// codes c0 (row gID) and c1 (row gID + 8): 4 registers
extern "C" int ttq_emu_afrag(int bits, int bf, const unsigned* words, int j, unsigned c0, unsigned c1, unsigned* out) {
  u32 a[4];
#define AF(B)                                        \
  if (bits == B) {                                   \
    u32 bz[Centre<B>::NB];                           \
    if (bf) {                                        \
      make_bias<B, true>(c0, c1, bz);                \
      codes_to_afrag<B, true>(words, j, bz, a);      \
    } else {                                         \
      make_bias<B, false>(c0, c1, bz);               \
      codes_to_afrag<B, false>(words, j, bz, a);     \
    }                                                \
    for (int i = 0; i < 4; ++i) out[i] = a[i];       \
    return 0;                                        \
  }
  AF(2) AF(3) AF(4) AF(8)
#undef AF
  return -1;
}

extern "C" unsigned ttq_emu_fastdiv(unsigned n, unsigned d, unsigned m, unsigned l) { return fastdiv(n, FastDiv{d, m, l}); }
extern "C" unsigned ttq_emu_f32_to_f16(float f) { return f32_to_f16(f); }
extern "C" float ttq_emu_f16_to_f32(unsigned h) { return f16_to_f32(h); }
extern "C" unsigned ttq_emu_f32_to_bf16(float f) { return f32_to_bf16(f); }

