// Direct sparse convolution over kernel-group patterns. Included by one translation unit per ISA, which
// defines VW (32-bit lanes per vector), NV_FOR(G) (vectors of positions per register block) and GB_MAX (filters per
// register pass) after selecting its target with #pragma GCC target, then instantiates `run_plan<Arith>` for the
// precisions it offers. An Arith says what a 32-bit input word and weight word are and how one multiply-accumulates
// a vector of words into a vector of accumulators: fp32 (one float each), and bf16 / int8 with K = 2 / 4 packed
// lanes per word (plan.h), portably here and with the dot-product instructions in the TUs that have them.
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

template <class V>
static inline V loadu(const void* p) { V v; memcpy(&v, p, sizeof v); return v; }
template <class V>
static inline void storeu(void* p, V v) { memcpy(p, &v, sizeof v); }

static inline vf bcast(float s) {
#ifdef P3D_BCAST
  return (vf)P3D_BCAST(s);
#else
  vf r;
  for (int i = 0; i < VW; ++i) r[i] = s;
  return r;
#endif
}

// How an arithmetic reads its input: `load` fills the NV input vectors of pair p (offsets `off`, `offs` per pair) at
// position q; `nv` fixes NV (0: NV_FOR), `gb_max` caps the filters per register pass (0: GB_MAX), and `permuted`
// says the accumulators hold each block of 4 VW positions in the order `permuted_position` gives (write_row undoes
// it).
// `tiles`: the arithmetic runs whole pieces itself on AMX tiles (kern_amx.cpp: `piece`, `thread_begin`, `thread_end`)
// instead of the register blocks below.
template <class Elem, class In>
struct PlainLoad {
  typedef Elem elem;
  static constexpr int offs = 1, nv = 0, gb_max = 0;
  static constexpr bool permuted = false, tiles = false;
  template <int NV, bool PF>
  static inline void load(const Elem* in, const int64_t* off, int q, int64_t pf, In* x) {
    const Elem* ip = in + off[0] + q;
    if (PF)  // this row for the thread's next tile (P3DPlan.prefetch), every cache line of it
      for (int v = 0; v < NV * VW; v += 64 / (int)sizeof(Elem)) __builtin_prefetch(ip + pf + v, 0, 3);
    for (int v = 0; v < NV; ++v) x[v] = loadu<In>(ip + v * VW);
  }
};

struct ArithF32 : PlainLoad<float, vf> {
  typedef float word;
  typedef vf acc;
  typedef vf in;
  static constexpr bool int_acc = false;
  static inline acc mac(acc a, in x, word w) { return a + bcast(w) * x; }
};

// bf16 pairs: the high lane's product is added first, then the low lane's, as vdpbf16ps does; a product of two
// bf16 values is exact in fp32, so fused or not the sums round alike (denormals aside: the instruction flushes them)
struct ArithBF16 : PlainLoad<uint32_t, vu> {
  typedef uint32_t word;
  typedef vf acc;
  typedef vu in;
  static constexpr bool int_acc = false;
  static inline acc mac(acc a, in x, word w) {
    vf hi, lo;
    const vu xh = x & 0xffff0000u, xl = x << 16;
    memcpy(&hi, &xh, sizeof hi);
    memcpy(&lo, &xl, sizeof lo);
    float wh, wl;
    const uint32_t bh = w & 0xffff0000u, bl = w << 16;
    memcpy(&wh, &bh, 4);
    memcpy(&wl, &bl, 4);
    a = a + bcast(wh) * hi;
    return a + bcast(wl) * lo;
  }
};

// int8: four uint8 activations x four int8 weights summed into int32, exactly (vpdpbusd without saturation)
static inline vi dot4_portable(vi a, vu x, uint32_t w) {
  for (int j = 0; j < 4; ++j) a += (vi)((x >> (8 * j)) & 0xffu) * (int32_t)(int8_t)(w >> (8 * j));
  return a;
}

// Without VNNI, a TU that defines P3D_MADD16(x, w) (vpmaddwd: int16 pairs of x times the int16 pair w broadcast,
// each pair's two products summed into int32) widens lanes 0,2 and 1,3 of each word to int16 and needs two of them:
// exact, unlike pmaddubsw, whose int16 sums saturate (2 x 255 x 127 > 32767).
#ifdef P3D_MADD16
static inline vi dot4(vi a, vu x, uint32_t w) {
  const uint32_t we = (uint16_t)(int8_t)w | (uint32_t)(uint16_t)(int8_t)(w >> 16) << 16;
  const uint32_t wo = (uint16_t)(int8_t)(w >> 8) | (uint32_t)(uint16_t)(int8_t)(w >> 24) << 16;
  return a + P3D_MADD16(x & 0x00ff00ffu, we) + P3D_MADD16((x >> 8) & 0x00ff00ffu, wo);
}
#else
static inline vi dot4(vi a, vu x, uint32_t w) { return dot4_portable(a, x, w); }
#endif

// 7-bit weights (|w| <= 63, plan weight_bits 7): pmaddubsw's int16 sum of two uint8 x int8 products cannot saturate
// (2 x 255 x 63 < 32767), so a TU that defines P3D_MADDUBS(x, w) (pmaddubsw by the broadcast word, then pmaddwd by
// ones) gets vpdpbusd's exact sums from two multiplies; elsewhere dot4.
#ifdef P3D_MADDUBS
static inline vi dot4_w7(vi a, vu x, uint32_t w) { return a + P3D_MADDUBS(x, w); }
#else
static inline vi dot4_w7(vi a, vu x, uint32_t w) { return dot4(a, x, w); }
#endif

#ifndef P3D_W7_NV  // register blocks of the 7-bit packed arithmetic: GB_W7 filters x P3D_W7_NV vectors
#define P3D_W7_NV 0
#define P3D_W7_GB 0
#endif

template <bool W7>
struct ArithI8 : PlainLoad<uint32_t, vu> {  // four channel planes interleaved per word (P3D_INT8)
  typedef uint32_t word;
  typedef vi acc;
  typedef vu in;
  static constexpr int nv = W7 ? P3D_W7_NV : 0, gb_max = W7 ? P3D_W7_GB : 0;
  static constexpr bool int_acc = true;
  static inline acc mac(acc a, in x, word w) { return W7 ? dot4_w7(a, x, w) : dot4(a, x, w); }
};

// Position within a block of 4 VW positions of accumulator slot r of an arithmetic with `permuted` (the order
// in-lane byte and word unpacks leave four interleaved rows in, 16 bytes per lane: slot VW v + j holds position
// 16 (j / 4) + 4 v + j % 4).
static inline int permuted_position(int r) { return 16 * ((r % VW) >> 2) + 4 * (r / VW) + (r & 3); }

#if defined(P3D_MASKED_STORES) || defined(P3D_AVX2_UNPACKS)  // (avx512bw, avx2: in-lane byte and word unpacks)
#define P3D_INTERLEAVE4
#ifdef P3D_MASKED_STORES
typedef __m512i vint;
#define P3D_LOADU(p) _mm512_loadu_si512(p)
#define P3D_UNPACK(lohi, bits) _mm512_unpack##lohi##_epi##bits
#else
typedef __m256i vint;
#define P3D_LOADU(p) _mm256_loadu_si256((const __m256i*)(p))
#define P3D_UNPACK(lohi, bits) _mm256_unpack##lohi##_epi##bits
#endif
// The rows of four gathered pairs (byte offsets off[0..3]) at positions q..q + 4 VW - 1 interleaved by in-lane
// unpacks (bytes, then words) into four vectors of 32-bit words, lane l of a word from row l, in the order
// `permuted_position` gives (write_row puts it back). pf: prefetch distance or 0.
static inline void interleave4(const uint8_t* in, const int64_t* off, int q, int64_t pf, vint* x) {
  vint r[4];
  for (int l = 0; l < 4; ++l) {
    const uint8_t* ip = in + off[l] + q;
    if (pf) __builtin_prefetch(ip + pf, 0, 3);
    r[l] = P3D_LOADU(ip);
  }
  const vint t0 = P3D_UNPACK(lo, 8)(r[0], r[1]), t1 = P3D_UNPACK(hi, 8)(r[0], r[1]);
  const vint t2 = P3D_UNPACK(lo, 8)(r[2], r[3]), t3 = P3D_UNPACK(hi, 8)(r[2], r[3]);
  x[0] = P3D_UNPACK(lo, 16)(t0, t2);
  x[1] = P3D_UNPACK(hi, 16)(t0, t2);
  x[2] = P3D_UNPACK(lo, 16)(t1, t3);
  x[3] = P3D_UNPACK(hi, 16)(t1, t3);
}
#endif

#ifndef P3D_GATHER_GB  // filters per register pass of the gathered arithmetic below (its 4 input vectors stay live)
#define P3D_GATHER_GB 0
#endif

// int8 over plain uint8 planes (P3D_INT8_GATHER): a pair is four kept (channel, tap) pairs of one task, whatever
// their channels and taps, so the dot products stay full on any kernel-group pattern; the four rows are
// interleaved into words as they are loaded (by unpacks where the TU has them, permuting positions).
typedef uint8_t vb __attribute__((vector_size(VW)));

template <bool W7>
struct ArithI8Gather {
  typedef uint8_t elem;
  typedef uint32_t word;
  typedef vi acc;
  typedef vu in;
  static constexpr int offs = 4;
#ifdef P3D_INTERLEAVE4
  static constexpr int nv = 4, gb_max = P3D_GATHER_GB;
  static constexpr bool int_acc = true, permuted = true, tiles = false;
  template <int NV, bool PF>
  static inline void load(const uint8_t* in, const int64_t* off, int q, int64_t pf, vu* x) {
    static_assert(NV == 4, "4 VW positions per block");
    interleave4(in, off, q, PF ? pf : 0, (vint*)x);
  }
#else
  static constexpr int nv = 0, gb_max = 0;
  static constexpr bool int_acc = true, permuted = false, tiles = false;
  template <int NV, bool PF>
  static inline void load(const uint8_t* in, const int64_t* off, int q, int64_t pf, vu* x) {
    for (int v = 0; v < NV; ++v) x[v] = (vu){};
    for (int l = 0; l < 4; ++l) {
      const uint8_t* ip = in + off[l] + q;
      if (PF) __builtin_prefetch(ip + pf, 0, 3);
      for (int v = 0; v < NV; ++v) x[v] |= __builtin_convertvector(loadu<vb>(ip + v * VW), vu) << (8 * l);
    }
  }
#endif
  static inline acc mac(acc a, in x, word w) { return W7 ? dot4_w7(a, x, w) : dot4(a, x, w); }
};

// GB filters x NV vectors of positions held in registers; one load per vector and one broadcast per weight
// for every kept (channel, tap) pair (or word of packed pairs).
template <class A, int GB, int NV, bool PF>
static inline void block(const typename A::elem* __restrict in, const int64_t* __restrict off,
                         const typename A::word* __restrict w, int wstride, int64_t np, float* const* rows, int q0,
                         int qlim, int64_t pf) {
  typedef typename A::acc acc_t;
  typedef typename A::in in_t;
  for (int q = q0; q < qlim; q += NV * VW) {
    acc_t acc[GB][NV];
    for (int g = 0; g < GB; ++g)
      for (int v = 0; v < NV; ++v) acc[g][v] = loadu<acc_t>(rows[g] + q + v * VW);
    const typename A::word* wp = w;
    for (int64_t p = 0; p < np; ++p, wp += wstride) {
      in_t x[NV];
      A::template load<NV, PF>(in, off + p * A::offs, q, pf, x);
      for (int g = 0; g < GB; ++g) {
        const typename A::word wv = wp[g];
        for (int v = 0; v < NV; ++v) acc[g][v] = A::mac(acc[g][v], x[v], wv);
      }
    }
    for (int g = 0; g < GB; ++g)
      for (int v = 0; v < NV; ++v) storeu(rows[g] + q + v * VW, acc[g][v]);
  }
}

template <class A, int GB, bool PF>
static inline void run_blocks(const typename A::elem* in, const int64_t* off, const typename A::word* w, int wstride,
                              int64_t np, float* const* rows, int qlim, int64_t pf) {
  if constexpr (A::nv != 0) {  // whole blocks of a fixed width (past qlim they compute positions nobody writes)
    block<A, GB, A::nv, PF>(in, off, w, wstride, np, rows, 0, qlim, pf);
  } else {
    constexpr int NV = NV_FOR(GB), NVH = (NV + 1) / 2;
    // a last block with at most half its positions left runs as a half-width block (a tile's short end)
    const int full = qlim / (NV * VW) * (NV * VW);
    const int upto = qlim - full > NVH * VW ? qlim : full;
    block<A, GB, NV, PF>(in, off, w, wstride, np, rows, 0, upto, pf);
    if (upto < qlim) block<A, GB, NVH, PF>(in, off, w, wstride, np, rows, upto, qlim, pf);
  }
}

template <class A, int GB>
static inline void run_group(const typename A::elem* in, const int64_t* off, const typename A::word* w, int wstride,
                             int64_t np, float* const* rows, int qlim, int64_t pf) {
  if (pf)
    run_blocks<A, GB, true>(in, off, w, wstride, np, rows, qlim, pf);
  else
    run_blocks<A, GB, false>(in, off, w, wstride, np, rows, qlim, 0);
}

// One piece: np pairs shared by G filters, run in register passes of at most GB_MAX filters.
template <class A>
static void run_piece(const typename A::elem* in, const int64_t* off, const typename A::word* w, int G, int64_t np,
                      float* const* rows, int qlim, int64_t pf) {
  constexpr int GBM = A::gb_max ? (A::gb_max < GB_MAX ? A::gb_max : GB_MAX) : GB_MAX;
  for (int g0 = 0; g0 < G; g0 += GBM) {
    int gb = G - g0 < GBM ? G - g0 : GBM;
    switch (gb) {
      case 1: run_group<A, 1>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 2: run_group<A, 2>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 3: run_group<A, 3>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      case 4: run_group<A, 4>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
      default:
        if constexpr (GBM > 4) {
          switch (gb) {
            case 5: run_group<A, 5>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
            case 6: run_group<A, 6>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
            case 7: run_group<A, 7>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
            case 8: run_group<A, 8>(in, off, w + g0, G, np, rows + g0, qlim, pf); break;
            default: break;
          }
        }
        break;
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

// One value as the packer stores it (P3D_PACK below): uint8 = clamp(round(x / scale) + zero, 0, 255), rounding half
// to even by the float adder; bf16 bits rounded to nearest even.
static inline uint32_t quantize_one(float x, float inv, int32_t zero) {
  float f = x * inv;
  f = f < -512.f ? -512.f : f > 512.f ? 512.f : f;
  const int32_t v = (int32_t)((f + 12582912.f) - 12582912.f) + zero;
  return (uint32_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// (for a uint32_t or a vector of them)
template <class U>
static inline U bf16_bits(U b) { return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16; }

static inline vi quantize_vec(vf x, float inv, int32_t zero) {
  vf f = x * inv;
  f = f < -512.f ? bcast(-512.f) : f;
  f = f > 512.f ? bcast(512.f) : f;
  f = (f + 12582912.f) - 12582912.f;
  vi v = __builtin_convertvector(f, vi) + zero;
  v = v < 0 ? (vi){} : v;
  return v > 255 ? (vi){} + 255 : v;
}

// One run of outputs (bias, ReLU) stored as the next conv's packed input: element d of a run lands at dst[d * K],
// lane `lane` of its word. AVX-512 TUs store VW elements at once into their lane of VW words (byte / word-masked
// stores: other lanes, other output channels, may be written by the other thread at the same time).
template <bool RELU>
static inline void write_run_packed(const P3DPlan* P, void* dst, int lane, const float* __restrict src, float b,
                                    int n) {
  int i = 0;
#ifdef P3D_MASKED_STORES
  if (P->out_pack == P3D_BF16) {
    char* w = (char*)dst - 2 * lane;
    for (; i + VW <= n; i += VW) {
      vf v = loadu<vf>(src + i) + b;
      if (RELU) v = v > 0.f ? v : (vf){};
      vu bits;
      memcpy(&bits, &v, sizeof v);
      const vu h = bf16_bits(bits) << (16 * lane);
      _mm512_mask_storeu_epi16(w + 4 * i, (__mmask32)(0x55555555u << lane), (__m512i)h);
    }
  } else if (P->out_pack == P3D_INT8) {
    char* w = (char*)dst - lane;
    for (; i + VW <= n; i += VW) {
      vf v = loadu<vf>(src + i) + b;
      if (RELU) v = v > 0.f ? v : (vf){};
      const vi q = quantize_vec(v, P->out_inv_scale, P->out_zero) << (8 * lane);
      _mm512_mask_storeu_epi8(w + 4 * i, (__mmask64)(0x1111111111111111ull << lane), (__m512i)q);
    }
  } else {
    for (; i + VW <= n; i += VW) {
      vf v = loadu<vf>(src + i) + b;
      if (RELU) v = v > 0.f ? v : (vf){};
      _mm_storeu_si128((__m128i*)((char*)dst + i), _mm512_cvtepi32_epi8((__m512i)quantize_vec(v, P->out_inv_scale,
                                                                                                P->out_zero)));
    }
  }
  if (i < n) {  // the run's last r < VW elements, masked the same way (rows of 28, 14, 7 are mostly tail)
    const int r = n - i;
    vf v = (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << r) - 1), src + i) + b;
    if (RELU) v = v > 0.f ? v : (vf){};
    if (P->out_pack == P3D_BF16) {
      vu bits;
      memcpy(&bits, &v, sizeof v);
      const vu h = bf16_bits(bits) << (16 * lane);
      _mm512_mask_storeu_epi16((char*)dst - 2 * lane + 4 * i,
                               (__mmask32)((0x55555555u & ((1ull << (2 * r)) - 1)) << lane), (__m512i)h);
    } else if (P->out_pack == P3D_INT8) {
      const vi q = quantize_vec(v, P->out_inv_scale, P->out_zero) << (8 * lane);
      _mm512_mask_storeu_epi8((char*)dst - lane + 4 * i,
                              (__mmask64)((0x1111111111111111ull & ((1ull << (4 * r)) - 1)) << lane), (__m512i)q);
    } else {
      _mm512_mask_storeu_epi8((char*)dst + i, (__mmask64)((1ull << r) - 1), _mm512_castsi128_si512(
                                  _mm512_cvtepi32_epi8((__m512i)quantize_vec(v, P->out_inv_scale, P->out_zero))));
    }
    i = n;
  }
#else
  // without byte / word-masked stores: the values a vector at a time, stored element by element (a wider store
  // would write other output channels' lanes, which the other thread may be writing)
  (void)lane;
  if (P->out_pack == P3D_BF16) {
    uint16_t* o = (uint16_t*)dst;
    for (; i + VW <= n; i += VW) {
      vf v = loadu<vf>(src + i) + b;
      if (RELU) v = v > 0.f ? v : (vf){};
      vu bits;
      memcpy(&bits, &v, sizeof v);
      const vu h = bf16_bits(bits);
      for (int j = 0; j < VW; ++j) o[2 * (i + j)] = (uint16_t)h[j];
    }
  } else {
    uint8_t* o = (uint8_t*)dst;
    for (; i + VW <= n; i += VW) {
      vf v = loadu<vf>(src + i) + b;
      if (RELU) v = v > 0.f ? v : (vf){};
      const vi q = quantize_vec(v, P->out_inv_scale, P->out_zero);
      if (P->out_pack == P3D_INT8)
        for (int j = 0; j < VW; ++j) o[4 * (i + j)] = (uint8_t)q[j];
      else  // plain uint8 planes: this channel's run alone
        storeu(o + i, __builtin_convertvector(q, vb));
    }
  }
#endif
  if (P->out_pack == P3D_BF16) {
    uint16_t* o = (uint16_t*)dst;
    for (; i < n; ++i) {
      float v = src[i] + b;
      v = RELU ? (v > 0.f ? v : 0.f) : v;
      uint32_t bits;
      memcpy(&bits, &v, 4);
      o[2 * i] = (uint16_t)bf16_bits(bits);
    }
  } else {
    const int K = P->out_pack == P3D_INT8 ? 4 : 1;
    uint8_t* o = (uint8_t*)dst;
    for (; i < n; ++i) {
      float v = src[i] + b;
      v = RELU ? (v > 0.f ? v : 0.f) : v;
      o[K * i] = (uint8_t)quantize_one(v, P->out_inv_scale, P->out_zero);
    }
  }
}

// Bias, ReLU and the store of one finished accumulator row (output channel m) of one tile. An int8 row holds int32
// sums: they become floats first, (sum - zero-point term) x scale, in place.
template <class A>
static void write_row(const P3DPlan* P, float* a, int m, int64_t n, int64_t tile, int64_t ntile, int qlim) {
  if (A::int_acc) {
    const int32_t comp = P->row_comp[m];
    const float sc = P->row_scale[m];
    if (A::permuted) {
      for (int b = 0; b < qlim; b += 4 * VW) {
        int32_t blk[4 * VW];
        memcpy(blk, a + b, sizeof blk);
        for (int r = 0; r < 4 * VW; ++r) a[b + permuted_position(r)] = (float)(blk[r] - comp) * sc;
      }
    } else {
      for (int q = 0; q < qlim; ++q) {
        int32_t v;
        memcpy(&v, a + q, 4);
        a[q] = (float)(v - comp) * sc;
      }
    }
  }
  const int64_t qbase = tile * P3D_TILE, qn = qlim;
  const float b = P->bias ? P->bias[m] : 0.f;
  const int K = P->out_pack == P3D_BF16 ? 2 : P->out_pack == P3D_INT8 ? 4 : 1;
  const int64_t esize = P->out_pack == P3D_BF16 ? 2 : 1;
  if (P->out_pack && !P->pack_out) {  // the next conv's packed input, run by run (ext.cpp: runs, no accumulate)
    const int64_t base = n * P->out_sample_stride + (int64_t)(m / K) * P->out_chan_stride * K + m % K;
    for (int s = P->tile_runs[tile]; s < P->tile_runs[tile + 1]; ++s) {
      const int32_t* R = P->runs + 3 * (int64_t)s;
      void* d = (char*)P->out + (base + (int64_t)R[2] * K) * esize;
      P->relu ? write_run_packed<true>(P, d, m % K, a + (R[0] - qbase), b, R[1])
              : write_run_packed<false>(P, d, m % K, a + (R[0] - qbase), b, R[1]);
    }
    return;
  }
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
      if (P->pack_out) {  // and the packed copy of what was just written (residual and ReLU in it)
        const int64_t base = n * P->pack_sample_stride + (int64_t)(m / K) * P->out_chan_stride * K + m % K;
        write_run_packed<false>(P, (char*)P->pack_out + (base + (int64_t)R[2] * K) * esize, m % K, d, 0.f, R[1]);
      }
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

template <class A>
static void run_plan(const P3DPlan* P) {
  typedef typename A::word word;
  typedef typename A::elem elem;
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
    float* rows2[8];         // (tiles: the rows of a task computed along with the one before, task_twin)
    bool twin_done = false;
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    if constexpr (A::tiles) A::thread_begin();
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
      const elem* in = (const elem*)P->in + n * P->in_sample_stride + qbase;
      const int qlim = (int)(P->Q - qbase < P3D_TILE ? P->Q - qbase : P3D_TILE);
      for (int i = P->chunk_pcstart[c]; i < P->chunk_pcstart[c + 1]; ++i) {
        const int t = P->piece_task[i];
        const int G = P->task_G[t];
        const int32_t* trow = P->task_rows + t * 8;
        for (int g = 0; g < G; ++g) rows[g] = acc + (int64_t)trow[g] * P3D_TILE;
        const int64_t p0 = P->piece_range[2 * i], p1 = P->piece_range[2 * i + 1];
        if constexpr (A::tiles) {
          if (twin_done) {
            twin_done = false;  // computed with the piece before
          } else {
            int G2 = 0;
            if (P->task_twin[t] && i + 1 < P->chunk_pcstart[c + 1] && P->piece_task[i + 1] == t + 1) {
              G2 = P->task_G[t + 1];
              for (int g = 0; g < G2; ++g) rows2[g] = acc + (int64_t)P->task_rows[(t + 1) * 8 + g] * P3D_TILE;
              twin_done = true;
            }
            A::piece(P, t, p0, p1, in, rows, G, rows2, G2, qlim);
          }
        } else
          run_piece<A>(in, P->pair_off + p0 * A::offs,
                       (const word*)P->weights + P->task_wstart[t] + (p0 - P->task_pstart[t]) * G, G, p1 - p0, rows,
                       qlim, P->prefetch);
        // rows this piece completes go out now, while hot, between pieces rather than in one burst at the end
        for (int32_t last = P->piece_last[i]; last; last &= last - 1) {
          const int g = __builtin_ctz(last), r = trow[g];
          write_row<A>(P, rows[g], P->chunk_filters[f0 + r], n, tile, ntile, qlim);
          done[r] = 1;
        }
      }
      for (int r = 0; r < nf; ++r)  // rows no piece adds to: the bias alone
        if (!done[r]) write_row<A>(P, acc + (int64_t)r * P3D_TILE, P->chunk_filters[f0 + r], n, tile, ntile, qlim);
    }
    if constexpr (A::tiles) A::thread_end();
  }
  free(cc);
  free(cum);
}

// The portable arithmetic of every precision, for the TUs that define P3D_RUN.
#ifdef P3D_RUN
extern "C" void P3D_RUN(const P3DPlan* P) {
  switch (P->precision) {
    case P3D_BF16: run_plan<ArithBF16>(P); break;
    case P3D_INT8: P->weight_bits <= 7 ? run_plan<ArithI8<true>>(P) : run_plan<ArithI8<false>>(P); break;
    case P3D_INT8_GATHER:
      P->weight_bits <= 7 ? run_plan<ArithI8Gather<true>>(P) : run_plan<ArithI8Gather<false>>(P);
      break;
    default: run_plan<ArithF32>(P); break;
  }
}
#endif

// The fp32 input packed for a reduced precision (plan.h: int8 / bf16 channel planes interleaved per word, or plain
// uint8 planes for P3D_INT8_GATHER), in this TU's vector width. uint8 = clamp(round(x / scale) + zero, 0, 255),
// rounding half to even by the float adder after the clamp (as torch.round; |v| < 2^22), bf16 to nearest even.
// `out` holds N x (packed per-sample stride) elements; returns that stride.
#ifdef P3D_PACK
extern "C" int64_t P3D_PACK(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out) {
  const float inv = p->in_inv_scale;
  const int32_t zero = (int32_t)p->in_zero;
  const int64_t S = p->in_chan_stride, Cv = p->in_vchannels;
  if (p->precision == P3D_INT8_GATHER) {
    uint8_t* o = (uint8_t*)out;
    const int64_t per = Cv * S;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < Cv; ++c) {
        const float* src = x + n * per_sample + c * S;
        uint8_t* dst = o + n * per + c * S;
        int64_t i = 0;
        for (; i + VW <= S; i += VW) storeu(dst + i, __builtin_convertvector(quantize_vec(loadu<vf>(src + i), inv, zero), vb));
        for (; i < S; ++i) dst[i] = (uint8_t)quantize_one(src[i], inv, zero);
      }
    return per;
  }
  const int K = p->precision == P3D_BF16 ? 2 : 4;
  const int64_t CQ = (Cv + K - 1) / K;
  uint32_t* o = (uint32_t*)out;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t cq = 0; cq < CQ; ++cq) {
      uint32_t* dst = o + (n * CQ + cq) * S;
      const int lanes = (int)(Cv - cq * K < K ? Cv - cq * K : K);
      const float* src[4];
      for (int j = 0; j < lanes; ++j) src[j] = x + n * per_sample + (cq * K + j) * S;
      int64_t i = 0;
      if (K == 2) {
        for (; i + VW <= S; i += VW) {
          vu w = {};
          for (int j = 0; j < lanes; ++j) {
            const vu b = loadu<vu>(src[j] + i);
            w |= bf16_bits(b) << (16 * j);
          }
          storeu(dst + i, w);
        }
        for (; i < S; ++i) {
          uint32_t w = 0;
          for (int j = 0; j < lanes; ++j) { uint32_t b; memcpy(&b, src[j] + i, 4); w |= bf16_bits(b) << (16 * j); }
          dst[i] = w;
        }
      } else {
        for (; i + VW <= S; i += VW) {
          vu w = {};
          for (int j = 0; j < lanes; ++j) w |= (vu)quantize_vec(loadu<vf>(src[j] + i), inv, zero) << (8 * j);
          storeu(dst + i, w);
        }
        for (; i < S; ++i) {
          uint32_t w = 0;
          for (int j = 0; j < lanes; ++j) w |= quantize_one(src[j][i], inv, zero) << (8 * j);
          dst[i] = w;
        }
      }
    }
  return CQ * S;
}
#endif

// This TU's fp32 multiply-add peak, for the benchmark's roofline line: every thread runs 12 independent chains of
// vector FMAs (enough to cover the latency of two FMA units); returns the multiply-adds done.
#ifdef P3D_PEAK
extern "C" double P3D_PEAK(int64_t iters) {
  double done = 0;
#pragma omp parallel reduction(+ : done)
  {
    vf a[12];
    for (int i = 0; i < 12; ++i) a[i] = bcast(1e-3f * (float)i);
    const vf b = bcast(0.999f), c = bcast(1e-4f);
    for (int64_t n = 0; n < iters; ++n)
      for (int i = 0; i < 12; ++i) a[i] = a[i] * b + c;
    float keep = 0;
    for (int i = 0; i < 12; ++i) keep += a[i][0];
    done += 12.0 * VW * (double)iters + (keep == 12345.f ? 1 : 0);  // (keep: the chains are not dead code)
  }
  return done;
}
#endif
