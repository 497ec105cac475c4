// int8 with AVX512_VNNI's vpdpbusd: four uint8 x int8 products per 32-bit lane added to an int32 accumulator.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512vnni,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#include "kernel_impl.h"

struct ArithI8Dot {
  typedef uint32_t word;
  typedef vi acc;
  typedef vu in;
  static constexpr bool int_acc = true;
  static inline acc mac(acc a, in x, word w) {
    return (vi)_mm512_dpbusd_epi32((__m512i)a, (__m512i)x, _mm512_set1_epi32((int)w));
  }
};

extern "C" void p3d_run_avx512_vnni(const P3DPlan* p) { run_plan<ArithI8Dot>(p); }
#else
#include "plan.h"
extern "C" void p3d_run_avx512_vnni(const P3DPlan* p) { p3d_run_generic(p); }
#endif
