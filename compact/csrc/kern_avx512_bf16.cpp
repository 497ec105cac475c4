// bf16 with AVX512_BF16's vdpbf16ps: two bf16 products per 32-bit lane added to an fp32 accumulator.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512bf16,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#define P3D_MASKED_STORES  // avx512bw: write_run_packed
#include "kernel_impl.h"

struct ArithBF16Dot : PlainLoad<uint32_t, vu> {
  typedef uint32_t word;
  typedef vf acc;
  typedef vu in;
  static constexpr bool int_acc = false;
  static inline acc mac(acc a, in x, word w) {
    return (vf)_mm512_dpbf16_ps((__m512)a, (__m512bh)x, (__m512bh)_mm512_set1_epi32((int)w));
  }
};

extern "C" void p3d_run_avx512_bf16(const P3DPlan* p) { run_plan<ArithBF16Dot>(p); }
#else
#include "plan.h"
extern "C" void p3d_run_avx512_bf16(const P3DPlan* p) { p3d_run_generic(p); }
#endif
