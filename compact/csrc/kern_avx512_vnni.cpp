// int8 with AVX512_VNNI's vpdpbusd: four uint8 x int8 products per 32-bit lane added to an int32 accumulator.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vnni,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#define P3D_MASKED_STORES  // avx512bw: write_run_packed
#include "kernel_impl.h"

struct ArithI8Dot : PlainLoad<uint32_t, vu> {
  typedef uint32_t word;
  typedef vi acc;
  typedef vu in;
  static constexpr bool int_acc = true;
  static inline acc mac(acc a, in x, word w) {
    return (vi)_mm512_dpbusd_epi32((__m512i)a, (__m512i)x, _mm512_set1_epi32((int)w));
  }
};

// The four rows of a pair interleaved as they are loaded (interleave4): 64 positions in four permuted vectors.
struct ArithI8GatherDot {
  typedef uint8_t elem;
  typedef uint32_t word;
  typedef vi acc;
  typedef vi in;
  static constexpr int offs = 4, nv = 4, gb_max = 4;  // 4 filters x 4 vectors of sums + 12 for the rows
  static constexpr bool int_acc = true, permuted = true, tiles = false;
  template <int NV, bool PF>
  static inline void load(const uint8_t* in, const int64_t* off, int q, int64_t pf, vi* x) {
    static_assert(NV == 4, "64 positions per block");
    interleave4(in, off, q, PF ? pf : 0, (__m512i*)x);
  }
  static inline acc mac(acc a, in x, word w) {
    return (vi)_mm512_dpbusd_epi32((__m512i)a, (__m512i)x, _mm512_set1_epi32((int)w));
  }
};

extern "C" void p3d_run_avx512_vnni(const P3DPlan* p) {
  if (p->precision == P3D_INT8_GATHER)
    run_plan<ArithI8GatherDot>(p);
  else
    run_plan<ArithI8Dot>(p);
}
#else
#include "plan.h"
extern "C" void p3d_run_avx512_vnni(const P3DPlan* p) { p3d_run_generic(p); }
#endif
