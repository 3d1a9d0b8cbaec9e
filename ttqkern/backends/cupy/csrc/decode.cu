// Decode GEMV / skinny GEMM kernels (see ttq_decode.cuh for the grid mapping, the packed
// layout read, shared memory and bytes moved).  Instantiated by name expression
// ttq_decode<BITS, XM, NT, TG, RT> (NVRTC) or explicitly (tests/cupy_compile.py).
#include "ttq_decode.cuh"

template <int BITS, int XM, int NT, int TG, int RT>
__global__ void __launch_bounds__(256, (ttq::Decode<BITS, XM, NT, TG, RT>::MIN_BLOCKS))
    ttq_decode(const unsigned* qw, const float* sc, const unsigned* xb, const float* xs1, const float* xs4,
               const float* xa, const unsigned* fl, const void* x, const float* D, const void* lrB, const void* bias,
               void* y, int N, int ntiles, int KC, int G, int g, int T, int TP, int K, int KB, int R, int NBX, int has_D,
               int has_lr, int has_bias, int wr, int wk, int cps) {
  extern __shared__ float ttq_smem[];
  const ttq::DecodeArgs a{qw, sc, xb, xs1, xs4, xa, fl, x, D, lrB, bias, y, N, ntiles, KC, G, g, T, TP, K, KB, R,
                          NBX, has_D, has_lr, has_bias, wr, wk, cps};
  ttq::DevWarp w(ttq_smem);
  ttq::Decode<BITS, XM, NT, TG, RT>::run(a, w);
}
