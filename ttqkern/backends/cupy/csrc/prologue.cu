// Decode prologue kernel (see ttq_prologue.cuh): ttq_prologue<XM, XE>.
#include "ttq_prologue.cuh"

template <int XM, class XE>
__global__ void __launch_bounds__(256) ttq_prologue(const void* x, const float* D, const void* A, unsigned* xb,
                                                    float* xs1, float* xs4, float* xa, unsigned* fl, int T, int K,
                                                    int TP, int KB, int R, int KX, int NBX, int has_D) {
  __shared__ float ttq_smem[ttq::Prologue<XM, XE>::SMEM_FLOATS];
  const ttq::PrologueArgs a{x, D, A, xb, xs1, xs4, xa, fl, T, K, TP, KB, R, KX, NBX, has_D};
  ttq::DevWarp w(ttq_smem);
  ttq::Prologue<XM, XE>::run(a, w);
}
