// Plain-C description of one sparse convolution call, shared by every ISA translation unit.
// Kept free of C++ library headers so that the ISA-specific files compile no inline library code
// with wider instructions than the machine might have.
#pragma once
#include <stdint.h>

#ifndef P3D_TILE
#define P3D_TILE 192   // output positions per work unit (divisible by every NV * vector width)
#endif
#ifndef P3D_CHMAX
#define P3D_CHMAX 64   // max filters per chunk (accumulator tile rows)
#endif

// The work lists of one conv for one input geometry: each line X(name, element type) declares the P3DPlan member
// below and has ext.cpp read it, checked, from the field of the same name of compact.plan.KernelPlan. Adding a
// field to the plan is one line here and one field of KernelPlan.
#define P3D_PLAN_ARRAYS(X)                                                                                     \
  X(chunk_fstart, int32_t)   /* [nchunks+1] into chunk_filters */                                               \
  X(chunk_filters, int32_t)  /* output channel of each chunk row */                                             \
  X(chunk_pcstart, int32_t)  /* [nchunks+1] into pieces (the chunk's work, in the order it runs) */             \
  X(piece_task, int32_t)     /* task of each piece */                                                           \
  X(piece_range, int64_t)    /* [npieces][2]: the piece's pairs [begin, end), a sub-range of its task's pairs */ \
  X(piece_last, int32_t)     /* [npieces]: bit g set if the piece completes its task's row g (written then) */  \
  X(task_G, int32_t)         /* filters per task (1..8) */                                                      \
  X(task_rows, int32_t)      /* [ntasks*8] chunk-local row of each task filter */                               \
  X(task_pstart, int64_t)    /* [ntasks+1] into pair_off */                                                     \
  X(task_wstart, int64_t)    /* [ntasks] into weights (npairs * G floats, pair-major) */                        \
  X(pair_off, int64_t)       /* input offset of each (channel, tap) pair, relative to the sample base */        \
  X(weights, float)          /* fp32 weights, or (bf16, int8) 32-bit words of 2 or 4 packed lanes */            \
  X(weights_t, float)        /* bf16, int8: the words again, per task 8 rows (filters) of np + 16 words, or [] */ \
  X(task_tstart, int64_t)    /* [ntasks] into weights_t, or [] (no AMX tiles: kern_amx.cpp) */                  \
  X(task_twin, int32_t)      /* [ntasks] with weights_t: 1 if task t+1 reads the same pairs (run together) */   \
  X(row_scale, float)        /* int8: [Cout] output scale (input scale x the filter's weight scale), else [] */  \
  X(row_comp, int32_t)       /* int8: [Cout] the input zero point x the filter's kept weight sum, else [] */
#define P3D_PLAN_SCALARS(X)                                                                                    \
  X(prefetch, int64_t)       /* prefetch each pair's row this many words ahead (the thread's next tile), or 0 */ \
  X(precision, int64_t)      /* P3D_FP32, P3D_BF16, P3D_INT8 or P3D_INT8_GATHER */                              \
  X(in_chan_stride, int64_t) /* bf16, int8: words per channel plane of the fp32 input the call packs */         \
  X(in_vchannels, int64_t)   /* bf16, int8: channel planes per sample of that input */                          \
  X(in_inv_scale, float)     /* int8: 1 / the input scale */                                                    \
  X(in_zero, int64_t)        /* int8: the input zero point (0 after a ReLU, else 128) */                        \
  X(weight_bits, int64_t)    /* int8: 8, or 7 (|w| <= 63: exact with pmaddubsw, the path of CPUs without VNNI) */

// The scalars of how a call writes its output: X(P3DPlan member, field of compact.layout.OutputSpec, type read);
// ext.cpp reads each, by that name. (Its tensors, valid, runs and pack_into, are read and checked one by one.)
#define P3D_OUTPUT_SCALARS(X)              \
  X(out_sample_stride, sample_stride, int64_t) \
  X(out_chan_stride, chan_stride, int64_t)     \
  X(out_shift, shift, int64_t)                 \
  X(out_chan_len, chan_len, int64_t)           \
  X(zero_rest, zero_rest, bool)                \
  X(relu, relu, bool)                          \
  X(accumulate, accumulate, bool)              \
  X(out_pack, pack, int)                       \
  X(out_inv_scale, pack_inv_scale, float)      \
  X(out_zero, pack_zero, int32_t)              \
  X(pack_sample_stride, pack_sample_stride, int64_t)

// Precisions. fp32 reads the flat fp32 layout itself. bf16 and int8 read it packed: K = 2 (bf16) or 4 (uint8)
// consecutive channel planes interleaved into one plane of 32-bit words, so that one vector load gives 16 positions
// x K channels, the operand of the dot-product instructions (vdpbf16ps, vpdpbusd); a pair's offset is in words.
// P3D_INT8_GATHER reads plain uint8 planes instead ([N][Cv][S] bytes) and interleaves the rows of four pairs as it
// loads them (pair_off: four byte offsets per pair): full dot products on patterns that keep scattered taps.
enum { P3D_FP32 = 0, P3D_BF16 = 1, P3D_INT8 = 2, P3D_INT8_GATHER = 3 };

typedef struct P3DPlan {
  const void* in;              // virtual input: [N][Cv][S] flat padded planes (+ slack at the end), of 32-bit
                               // words: floats, or the packed planes of bf16 / int8 ([N][Cv/K][S][K])
  int64_t in_sample_stride;    // words between samples
  float* out;                  // output base
  int64_t out_sample_stride, out_chan_stride;
  int64_t out_shift;           // output position q is written at q + out_shift within its channel
  int64_t out_chan_len;        // floats per output channel (for zeroing head/tail), used when zero_rest
  int zero_rest;               // write zeros to [0, shift) and [shift + Q, out_chan_len)
  int64_t N, Q;                // samples, output positions computed per sample
  int nchunks;
#define P3D_MEMBER(name, type) const type* name;
  P3D_PLAN_ARRAYS(P3D_MEMBER)
#undef P3D_MEMBER
#define P3D_MEMBER(name, type) type name;
  P3D_PLAN_SCALARS(P3D_MEMBER)
#undef P3D_MEMBER
  const float* bias;            // [Cout] or NULL
  int relu;
  const float* valid;           // [Q] 0/1 multipliers or NULL
  const int32_t* runs;          // [nruns][3] (q, length, destination index within the channel) or NULL: the
                                // outputs as runs of consecutive positions, none crossing a tile boundary
  const int32_t* tile_runs;     // [ntiles+1] into runs: the runs of each tile
  int accumulate;               // with runs: add the value already there before the ReLU (a fused residual)
  int out_pack;                 // with runs: 0, or the next conv's packed input written directly (P3D_BF16,
                                // P3D_INT8, P3D_INT8_GATHER: as its kernel call would pack it); `out` is then
                                // that layout's elements (uint16 / uint8), output channel m at lane m % K of plane
                                // m / K (K = 2, 4, 1), strides in elements: sample, and chan = one plane's positions
  float out_inv_scale;          // int8: 1 / the next conv's input scale
  int32_t out_zero;             // int8: its zero point
  void* pack_out;               // with out_pack: NULL (`out` is the packed input), or where a packed copy of the
                                // fp32 output written to `out` goes (after the residual and ReLU)
  int64_t pack_sample_stride;   // its sample stride, in elements (its plane stride: out_chan_stride)
} P3DPlan;

#ifdef __cplusplus
extern "C" {
#endif
// every precision (bf16 and int8 with portable code: exact integer sums, the dot products' rounding)
void p3d_run_avx512(const P3DPlan* p);
void p3d_run_avx2(const P3DPlan* p);
void p3d_run_generic(const P3DPlan* p);
// the fp32 input packed for p's reduced precision into `out`; returns the packed per-sample stride
int64_t p3d_pack_avx512(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out);
int64_t p3d_pack_avx2(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out);
int64_t p3d_pack_generic(const float* x, int64_t N, int64_t per_sample, const P3DPlan* p, void* out);
// the fp32 multiply-adds `iters` rounds of 12 independent FMA chains per thread do (the benchmark's roofline)
double p3d_peak_avx512(int64_t iters);
double p3d_peak_avx2(int64_t iters);
double p3d_peak_generic(int64_t iters);
// one precision each, with the CPU's dot-product instructions
void p3d_run_avx512_bf16(const P3DPlan* p);
void p3d_run_avx512_vnni(const P3DPlan* p);
// bf16 and int8 (both kinds) on AMX tiles; needs weights_t and the OS's permission for tile data
void p3d_run_amx(const P3DPlan* p);
int p3d_amx_built(void);  // 0 where the compiler had no AMX intrinsics (p3d_run_amx is then the generic code)
#ifdef __cplusplus
}
#endif
