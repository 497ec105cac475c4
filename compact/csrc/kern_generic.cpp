// Baseline ISA of the compiler (SSE2 on x86-64, NEON on aarch64): GCC lowers the vector types itself.
#define VW 4
#define GB_MAX 4
#define NV_FOR(G) ((G) <= 2 ? 6 : (G) == 3 ? 4 : 3)
#define P3D_RUN p3d_run_generic
#define P3D_PACK p3d_pack_generic
#define P3D_PEAK p3d_peak_generic
#include "kernel_impl.h"
