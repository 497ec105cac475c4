#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#define P3D_RUN p3d_run_avx512
#include "kernel_impl.h"
#else
#include "plan.h"
extern "C" void p3d_run_avx512(const P3DPlan* p) { p3d_run_generic(p); }
#endif
