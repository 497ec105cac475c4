// int8 and bf16 on AMX tiles (TDPBSUD: int8 weights x uint8 inputs into int32; TDPBF16PS: bf16 pairs into fp32).
//
// A piece (G <= 8 filters sharing np kept pairs, plan.h) is a small matrix product per block of 16 positions:
// C[G x 16 positions] += W[G x pairs] . X[pairs x 16 positions], each pair one 32-bit word of 4 int8 / 2 bf16 lanes.
// W is the tile-layout copy of the weights (plan.h weights_t: per task 8 rows of np + 16 words, zero-padded), read
// straight into a tile, 16 rows at a time: the task's and the next task's, which it computes along when that one
// reads the same pairs (task_twin: dense convs), as a tile product costs the same for 8 rows as for 16. X's rows
// are a pair's words at 16 consecutive positions, 64 contiguous bytes, but the rows of one piece lie at unrelated
// offsets, so each K-step of 16 pairs is first copied to a 64-byte-strided stage (the gathered int8 plan
// interleaves its four byte rows on the way, as the VNNI kernel does). Four C tiles cover 64
// positions; their sums go into the unit's accumulator rows, where the register kernels keep theirs.
// (AMX intrinsics: GCC 11, clang 12; an older compiler builds the stubs at the end and the tiles are never used)
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#pragma GCC target("avx512f,avx512bw,avx512vnni,avx512bf16,amx-tile,amx-int8,amx-bf16,fma")
#define VW 16
#define GB_MAX 8
#define NV_FOR(G) ((G) <= 4 ? 6 : 3)
#include <immintrin.h>
#define P3D_BCAST _mm512_set1_ps
#define P3D_MASKED_STORES  // avx512bw: write_run_packed, interleave4
#include "kernel_impl.h"

namespace {

struct TileConfig {  // LDTILECFG's 64-byte operand, palette 1
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

enum { KSTEP = 16 };  // pairs (words) per K-step: one 64-byte tile row

template <bool B, class T, class F> struct pick { typedef T type; };
template <class T, class F> struct pick<false, T, F> { typedef F type; };

// tmm0..3: C of positions q + 16v (16 rows of 16 sums), tmm4: W (16 rows of 16 words), tmm5, tmm6: X stages
// (KSTEP rows of 16 positions' words): all seven 16 rows of 64 bytes.
void configure_tiles() {
  TileConfig c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 7; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  _tile_loadconfig(&c);
}

template <bool GATHER, bool BF16>
struct ArithTiles {
  typedef typename pick<GATHER, uint8_t, uint32_t>::type elem;
  typedef uint32_t word;
  static constexpr bool int_acc = !BF16, permuted = GATHER, tiles = true;
  static constexpr int offs = GATHER ? 4 : 1;

  static void thread_begin() { configure_tiles(); }
  static void thread_end() { _tile_release(); }

  // pair p's words at positions q..q+63 in four vectors (permuted for the gathered plan, see interleave4)
  static inline void load(const elem* in, const int64_t* off, int64_t p, int q, __m512i* x) {
    if constexpr (GATHER) {
      interleave4(in, off + 4 * p, q, 0, x);
    } else {
      const elem* ip = in + off[p] + q;
      for (int v = 0; v < 4; ++v) x[v] = _mm512_loadu_si512(ip + 16 * v);
    }
  }

  // The stage of K-step s+1 is written before step s is multiplied: a tile load that follows the stores of its
  // data too closely waits for them (no store forwarding into tiles).
  // rows2, G2: the twin's rows (G2 = 0: none; W's rows 8..15 are then whatever follows the task's, unused)
  static void piece(const P3DPlan* P, int t, int64_t p0, int64_t p1, const elem* in, float* const* rows, int G,
                    float* const* rows2, int G2, int qlim) {
    alignas(64) uint8_t stages[2][4][KSTEP][64];
    alignas(64) int32_t sums[4][16][16];
    const int64_t ps = P->task_pstart[t], ld = P->task_pstart[t + 1] - ps + KSTEP;
    const uint32_t* wt = (const uint32_t*)P->weights_t + P->task_tstart[t] - ps;
    const int nk = (int)((p1 - p0 + KSTEP - 1) / KSTEP), steps = nk * ((qlim + 63) / 64);
    // (a unit's tile is 3 x 64 positions: the last block of 64 stays inside it)
    auto stage = [&](int s) {
      const int64_t k0 = p0 + (int64_t)(s % nk) * KSTEP;
      const int q = 64 * (s / nk), n = p1 - k0 < KSTEP ? (int)(p1 - k0) : KSTEP;
      uint8_t(*st)[KSTEP][64] = stages[s & 1];
      for (int j = 0; j < n; ++j) {
        __m512i x[4];
        load(in, P->pair_off, k0 + j, q, x);
        for (int v = 0; v < 4; ++v) _mm512_store_si512(st[v][j], x[v]);
      }
      for (int j = n; j < KSTEP; ++j)  // rows past the piece: zero inputs (their weights are another piece's)
        for (int v = 0; v < 4; ++v) _mm512_store_si512(st[v][j], _mm512_setzero_si512());
    };
    stage(0);
    for (int s = 0; s < steps; ++s) {
      if (s + 1 < steps) stage(s + 1);
      const int kq = s % nk;
      if (kq == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      uint8_t(*st)[KSTEP][64] = stages[s & 1];
      _tile_loadd(4, wt + p0 + (int64_t)kq * KSTEP, ld * 4);
      // (the tile intrinsics take their tile numbers as literals: a macro, not a template)
#define P3D_PRODUCT(C, X, stage)  \
  do {                            \
    _tile_loadd(X, stage, 64);    \
    if constexpr (BF16)           \
      _tile_dpbf16ps(C, 4, X);    \
    else                          \
      _tile_dpbsud(C, 4, X);      \
  } while (0)
      P3D_PRODUCT(0, 5, st[0]);
      P3D_PRODUCT(1, 6, st[1]);
      P3D_PRODUCT(2, 5, st[2]);
      P3D_PRODUCT(3, 6, st[3]);
#undef P3D_PRODUCT
      if (kq < nk - 1) continue;
      const int q = 64 * (s / nk);
      _tile_stored(0, sums[0], 64);
      _tile_stored(1, sums[1], 64);
      _tile_stored(2, sums[2], 64);
      _tile_stored(3, sums[3], 64);
      for (int g = 0; g < G + G2; ++g)
        for (int v = 0; v < 4; ++v) {
          float* r = (g < G ? rows[g] : rows2[g - G]) + q + 16 * v;
          const __m512i x = _mm512_load_si512(sums[v][g < G ? g : 8 + g - G]);
          if constexpr (BF16)
            _mm512_storeu_ps(r, _mm512_add_ps(_mm512_loadu_ps(r), _mm512_castsi512_ps(x)));
          else
            _mm512_storeu_si512(r, _mm512_add_epi32(_mm512_loadu_si512(r), x));
        }
    }
  }
};

}  // namespace

extern "C" int p3d_amx_built(void) { return 1; }

extern "C" void p3d_run_amx(const P3DPlan* p) {
  switch (p->precision) {
    case P3D_BF16: run_plan<ArithTiles<false, true>>(p); break;
    case P3D_INT8: run_plan<ArithTiles<false, false>>(p); break;
    default: run_plan<ArithTiles<true, false>>(p); break;  // P3D_INT8_GATHER
  }
}
#else
#include "plan.h"
extern "C" int p3d_amx_built(void) { return 0; }
extern "C" void p3d_run_amx(const P3DPlan* p) { p3d_run_generic(p); }
#endif
