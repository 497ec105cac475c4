// Direct sparse convolution over kernel-group patterns. Included by one translation unit per ISA, which
// defines VW (floats per vector), NV_FOR(G) (vectors of positions per register block), GB_MAX (filters per
// register pass) and P3D_RUN (the entry point name) after selecting its target with #pragma GCC target.
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));

static inline vf bcast(float s) {
#ifdef P3D_BCAST
  return (vf)P3D_BCAST(s);
#else
  vf r;
  for (int i = 0; i < VW; ++i) r[i] = s;
  return r;
#endif
}

// GB filters x NV vectors of positions held in registers; one load per vector and one broadcast per weight
// for every kept (channel, tap) pair.
template <int GB, int NV, bool PF>
static inline void block(const float* __restrict in, const int64_t* __restrict off, const float* __restrict w,
                         int wstride, int64_t np, float* const* rows, int q0, int qlim, int64_t pf) {
  for (int q = q0; q < qlim; q += NV * VW) {
    vf acc[GB][NV];
    for (int g = 0; g < GB; ++g)
      for (int v = 0; v < NV; ++v) acc[g][v] = *(const vfu*)(rows[g] + q + v * VW);
    const float* wp = w;
    for (int64_t p = 0; p < np; ++p, wp += wstride) {
      const float* ip = in + off[p] + q;
      if (PF)  // this row for the thread's next tile (P3DPlan.prefetch), every cache line of it
        for (int v = 0; v < NV * VW; v += 16) __builtin_prefetch(ip + pf + v, 0, 3);
      vf x[NV];
      for (int v = 0; v < NV; ++v) x[v] = *(const vfu*)(ip + v * VW);
      for (int g = 0; g < GB; ++g) {
        vf wv = bcast(wp[g]);
        for (int v = 0; v < NV; ++v) acc[g][v] += wv * x[v];
      }
    }
    for (int g = 0; g < GB; ++g)
      for (int v = 0; v < NV; ++v) *(vfu*)(rows[g] + q + v * VW) = acc[g][v];
  }
}

template <int GB, bool PF>
static inline void run_blocks(const float* in, const int64_t* off, const float* w, int wstride, int64_t np,
                              float* const* rows, int qlim, int64_t pf) {
  constexpr int NV = NV_FOR(GB), NVH = (NV + 1) / 2;
  // a last block with at most half its positions left runs as a half-width block (a tile's short end)
  const int full = qlim / (NV * VW) * (NV * VW);
  const int upto = qlim - full > NVH * VW ? qlim : full;
  block<GB, NV, PF>(in, off, w, wstride, np, rows, 0, upto, pf);
  if (upto < qlim) block<GB, NVH, PF>(in, off, w, wstride, np, rows, upto, qlim, pf);
}

template <int GB>
static inline void run_group(const float* in, const int64_t* off, const float* w, int wstride, int64_t np,
                             float* const* rows, int qlim, int64_t pf) {
  if (pf)
    run_blocks<GB, true>(in, off, w, wstride, np, rows, qlim, pf);
  else
    run_blocks<GB, false>(in, off, w, wstride, np, rows, qlim, 0);
}

// One piece: np pairs shared by G filters, run in register passes of at most GB_MAX filters.
static void run_piece(const float* in, const int64_t* off, const float* w, int G, int64_t np, float* const* rows,
                      int qlim, int64_t pf) {
  for (int g0 = 0; g0 < G; g0 += GB_MAX) {
    int gb = G - g0 < GB_MAX ? G - g0 : GB_MAX;
    switch (gb) {
      case 1: run_group<1>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 2: run_group<2>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 3: run_group<3>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 4: run_group<4>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
#if GB_MAX > 4
      case 5: run_group<5>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 6: run_group<6>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 7: run_group<7>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 8: run_group<8>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
#endif
      default: break;
    }
  }
}

// d[i] = relu?(src[i] + b (+ d[i])): one contiguous run of outputs, a loop the compiler vectorizes.
template <bool ACC, bool RELU>
static inline void write_run(float* __restrict d, const float* __restrict src, float b, int n) {
  for (int i = 0; i < n; ++i) {
    float v = src[i] + b;
    if (ACC) v += d[i];
    d[i] = RELU ? (v > 0.f ? v : 0.f) : v;
  }
}

// Bias, ReLU and the store of one finished accumulator row (output channel m) of one tile.
static void write_row(const P3DPlan* P, const float* a, int m, int64_t n, int64_t tile, int64_t ntile, int qlim) {
  const int64_t qbase = tile * P3D_TILE, qn = qlim;
  const float b = P->bias ? P->bias[m] : 0.f;
  float* chan = P->out + n * P->out_sample_stride + (int64_t)m * P->out_chan_stride;
  float* dst = chan + P->out_shift + qbase;
  if (P->runs) {  // straight into the output's own layout, run by run
    for (int s = P->tile_runs[tile]; s < P->tile_runs[tile + 1]; ++s) {
      const int32_t* R = P->runs + 3 * (int64_t)s;
      const float* src = a + (R[0] - qbase);
      float* d = chan + R[2];
      if (P->accumulate)
        P->relu ? write_run<true, true>(d, src, b, R[1]) : write_run<true, false>(d, src, b, R[1]);
      else
        P->relu ? write_run<false, true>(d, src, b, R[1]) : write_run<false, false>(d, src, b, R[1]);
    }
  } else if (P->valid) {
    const float* vm = P->valid + qbase;
    if (P->relu) {
      for (int64_t q = 0; q < qn; ++q) { float v = a[q] + b; dst[q] = (v > 0.f ? v : 0.f) * vm[q]; }
    } else {
      for (int64_t q = 0; q < qn; ++q) dst[q] = (a[q] + b) * vm[q];
    }
  } else if (P->relu) {
    for (int64_t q = 0; q < qn; ++q) { float v = a[q] + b; dst[q] = v > 0.f ? v : 0.f; }
  } else {
    for (int64_t q = 0; q < qn; ++q) dst[q] = a[q] + b;
  }
  if (P->zero_rest) {
    if (tile == 0) memset(chan, 0, sizeof(float) * P->out_shift);
    if (tile == ntile - 1) {
      const int64_t e = P->out_shift + P->Q;
      if (P->out_chan_len > e) memset(chan + e, 0, sizeof(float) * (P->out_chan_len - e));
    }
  }
}

// Estimated cost of each chunk's work on one full tile: multiply-adds, plus a fixed cost per piece (accumulator
// loads and stores) and per row (its output write).
static double chunk_cost(const P3DPlan* P, int c) {
  double w = 8.0 * (P->chunk_fstart[c + 1] - P->chunk_fstart[c]);
  for (int i = P->chunk_pcstart[c]; i < P->chunk_pcstart[c + 1]; ++i)
    w += (double)(P->piece_range[2 * i + 1] - P->piece_range[2 * i]) * P->task_G[P->piece_task[i]] + 16.0;
  return w;
}

extern "C" void P3D_RUN(const P3DPlan* P) {
  const int64_t ntile = (P->Q + P3D_TILE - 1) / P3D_TILE;
  const int64_t nch = P->nchunks;
  const int64_t units = P->N * ntile * nch;
  // Contiguous unit ranges of equal estimated work per thread, in place of an even split of the units: a short last
  // tile and unequal chunks otherwise leave a thread idle for up to a fifth of a small layer (R(2+1)D's layer3
  // temporal convs at batch 1 run 20 units). Contiguous, so a thread still runs a tile's chunks one after another.
  double* cum = (double*)malloc(sizeof(double) * (units + 1));
  double* cc = (double*)malloc(sizeof(double) * nch);
  for (int64_t c = 0; c < nch; ++c) cc[c] = chunk_cost(P, (int)c);
  cum[0] = 0.0;
  for (int64_t u = 0; u < units; ++u) {
    const int64_t tile = (u / nch) % ntile;
    const int64_t ql = P->Q - tile * P3D_TILE < P3D_TILE ? P->Q - tile * P3D_TILE : P3D_TILE;
    cum[u + 1] = cum[u] + cc[u % nch] * (double)((ql + 47) / 48 * 48 + 16);
  }
#pragma omp parallel
  {
    float acc[P3D_CHMAX * P3D_TILE] __attribute__((aligned(64)));
    unsigned char done[P3D_CHMAX];
    float* rows[8];
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    // unit u goes to the thread whose share of the total holds the middle of u's work
    int64_t bounds[2];
    for (int e = 0; e < 2; ++e) {
      const double at = cum[units] * (tid + e) / nth;
      int64_t lo = 0, hi = units;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (cum[mid] + cum[mid + 1] < 2.0 * at) lo = mid + 1; else hi = mid;
      }
      bounds[e] = tid + e == nth ? units : lo;
    }
    for (int64_t u = bounds[0]; u < bounds[1]; ++u) {
      const int64_t c = u % nch, tile = (u / nch) % ntile, n = u / (nch * ntile);
      const int f0 = P->chunk_fstart[c], nf = P->chunk_fstart[c + 1] - f0;
      memset(acc, 0, sizeof(float) * nf * P3D_TILE);
      memset(done, 0, nf);
      const int64_t qbase = tile * P3D_TILE;
      const float* in = P->in + n * P->in_sample_stride + qbase;
      const int qlim = (int)(P->Q - qbase < P3D_TILE ? P->Q - qbase : P3D_TILE);
      for (int i = P->chunk_pcstart[c]; i < P->chunk_pcstart[c + 1]; ++i) {
        const int t = P->piece_task[i];
        const int G = P->task_G[t];
        const int32_t* trow = P->task_rows + t * 8;
        for (int g = 0; g < G; ++g) rows[g] = acc + (int64_t)trow[g] * P3D_TILE;
        const int64_t p0 = P->piece_range[2 * i], p1 = P->piece_range[2 * i + 1];
        run_piece(in, P->pair_off + p0, P->weights + P->task_wstart[t] + (p0 - P->task_pstart[t]) * G, G, p1 - p0,
                  rows, qlim, P->prefetch);
        // rows this piece completes go out now, while hot, between pieces rather than in one burst at the end
        for (int32_t last = P->piece_last[i]; last; last &= last - 1) {
          const int g = __builtin_ctz(last), r = trow[g];
          write_row(P, rows[g], P->chunk_filters[f0 + r], n, tile, ntile, qlim);
          done[r] = 1;
        }
      }
      for (int r = 0; r < nf; ++r)  // rows no piece adds to: the bias alone
        if (!done[r]) write_row(P, acc + (int64_t)r * P3D_TILE, P->chunk_filters[f0 + r], n, tile, ntile, qlim);
    }
  }
  free(cc);
  free(cum);
}
