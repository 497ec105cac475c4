#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#define P3D_MASKED_STORES  // avx512bw: write_run_packed
#define P3D_MADD16(x, w) ((vi)_mm512_madd_epi16((__m512i)(x), _mm512_set1_epi32((int)(w))))
#define P3D_MADDUBS(x, w) \
  ((vi)_mm512_madd_epi16(_mm512_maddubs_epi16((__m512i)(x), _mm512_set1_epi32((int)(w))), _mm512_set1_epi16(1)))
#define P3D_W7_NV 3
#define P3D_W7_GB 4
#define P3D_GATHER_GB 4
#define P3D_RUN p3d_run_avx512
#define P3D_PACK p3d_pack_avx512
#define P3D_PEAK p3d_peak_avx512
#include "kernel_impl.h"
#else
#include "plan.h"
extern "C" void p3d_run_avx512(const P3DPlan* p) { p3d_run_generic(p); }
extern "C" int64_t p3d_pack_avx512(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out) {
  return p3d_pack_generic(x, N, per_sample, p, out);
}
extern "C" double p3d_peak_avx512(int64_t iters) { return p3d_peak_generic(iters); }
#endif
