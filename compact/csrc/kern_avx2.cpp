#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#define VW 8
#define GB_MAX 4
#define NV_FOR(G) ((G) <= 2 ? 6 : (G) == 3 ? 4 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm256_set1_ps
#define P3D_MADD16(x, w) ((vi)_mm256_madd_epi16((__m256i)(x), _mm256_set1_epi32((int)(w))))
#define P3D_MADDUBS(x, w) \
  ((vi)_mm256_madd_epi16(_mm256_maddubs_epi16((__m256i)(x), _mm256_set1_epi32((int)(w))), _mm256_set1_epi16(1)))
#define P3D_AVX2_UNPACKS  // interleave4
// int8 register blocks that fit 16 registers with their temporaries (docs/bench/history.md)
#define P3D_W7_NV 2
#define P3D_W7_GB 4
#define P3D_GATHER_GB 2
#define P3D_RUN p3d_run_avx2
#define P3D_PACK p3d_pack_avx2
#define P3D_PEAK p3d_peak_avx2
#include "kernel_impl.h"
#else
#include "plan.h"
extern "C" void p3d_run_avx2(const P3DPlan* p) { p3d_run_generic(p); }
extern "C" int64_t p3d_pack_avx2(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out) {
  return p3d_pack_generic(x, N, per_sample, p, out);
}
extern "C" double p3d_peak_avx2(int64_t iters) { return p3d_peak_generic(iters); }
#endif
