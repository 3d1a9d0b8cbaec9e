// Requantization and dequantization kernels (see ttq_requant.cuh):
// ttq_colnorm<XE>, ttq_scale, ttq_quantize<BITS, WE>, ttq_dequant<BITS, OE>.
#include "ttq_requant.cuh"

template <class XE>
__global__ void __launch_bounds__(256) ttq_colnorm(const void* x, float* part, int T, int K, int t_per, int tsplit,
                                                   int pmode, float p) {
  const ttq::ColNormArgs a{x, part, T, K, t_per, tsplit, pmode, p};
  ttq::DevWarp w(nullptr);
  ttq::ColNorm<XE>::run(a, w);
}

__global__ void __launch_bounds__(1024) ttq_scale(const float* part, float* D, int K, int tsplit, int pmode, float p,
                                                  float lam, float alpha) {
  __shared__ float ttq_smem[ttq::Scale::SMEM_FLOATS];
  const ttq::ScaleArgs a{part, D, K, tsplit, pmode, p, lam, alpha};
  ttq::DevWarp w(ttq_smem);
  ttq::Scale::run(a, w);
}

template <int BITS, class WE>
__global__ void __launch_bounds__(256) ttq_quantize(const void* W, const float* D, unsigned* qw, float* sc,
                                                    unsigned* zp, int N, int K, int KC, int G, int g, int UC, int UG,
                                                    int form, int has_D, float beta, unsigned gd, unsigned gm,
                                                    unsigned gl) {
  extern __shared__ float ttq_smem[];
  const ttq::QuantArgs a{W, D, qw, sc, zp, N, K, KC, G, g, UC, UG, form, has_D, beta, {gd, gm, gl}};
  ttq::DevWarp w(ttq_smem);
  ttq::Quantize<BITS, WE>::run(a, w);
}

template <int BITS, class OE>
__global__ void __launch_bounds__(128) ttq_dequant(const unsigned* qw, const float* sc, void* out, int N, int K, int KC,
                                                   int G, unsigned gd, unsigned gm, unsigned gl) {
  __shared__ float ttq_smem[ttq::Dequant<BITS, OE>::SMEM_FLOATS];
  const ttq::DequantArgs a{qw, sc, out, N, K, KC, G, {gd, gm, gl}};
  ttq::DevWarp w(ttq_smem);
  ttq::Dequant<BITS, OE>::run(a, w);
}
