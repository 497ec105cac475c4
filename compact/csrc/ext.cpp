// Python binding and run-time ISA dispatch for the prune3d compact sparse convolution kernels.
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <string>

#include "plan.h"

namespace {

int detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int g_isa = -1;

int isa_level() {
  if (g_isa < 0) g_isa = detect_isa();
  return g_isa;
}

template <typename T>
const T* ptr(const torch::Tensor& t) { return t.data_ptr<T>(); }

void check(const torch::Tensor& t, c10::ScalarType dt, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == dt && t.device().is_cpu(), name,
              ": expected a contiguous CPU tensor of the right dtype");
}

}  // namespace

std::string isa_name() {
  switch (isa_level()) {
    case 2: return "avx512";
    case 1: return "avx2";
    default: return "generic";
  }
}

void set_isa(const std::string& name) {
  int want = name == "avx512" ? 2 : name == "avx2" ? 1 : name == "generic" ? 0 : -1;
  TORCH_CHECK(want >= 0, "unknown isa ", name);
  TORCH_CHECK(want <= detect_isa(), "this CPU does not support ", name);
  g_isa = want;
}

void sparse_conv(const torch::Tensor& in, torch::Tensor& out, const torch::Tensor& chunk_fstart,
                 const torch::Tensor& chunk_filters, const torch::Tensor& chunk_pcstart, const torch::Tensor& piece_task,
                 const torch::Tensor& piece_range, const torch::Tensor& piece_last, const torch::Tensor& task_G,
                 const torch::Tensor& task_rows, const torch::Tensor& task_pstart, const torch::Tensor& task_wstart,
                 const torch::Tensor& pair_off, const torch::Tensor& weights, const c10::optional<torch::Tensor>& bias,
                 const c10::optional<torch::Tensor>& valid, const c10::optional<torch::Tensor>& runs,
                 const c10::optional<torch::Tensor>& tile_runs,
                 int64_t in_sample_stride, int64_t out_sample_stride,
                 int64_t out_chan_stride, int64_t out_shift, int64_t out_chan_len, bool zero_rest, int64_t N,
                 int64_t Q, bool relu, int64_t prefetch, bool accumulate) {
  check(in, torch::kFloat, "in");
  check(out, torch::kFloat, "out");
  for (auto* t : {&chunk_fstart, &chunk_filters, &chunk_pcstart, &piece_task, &piece_last, &task_G, &task_rows})
    check(*t, torch::kInt, "int32");
  for (auto* t : {&piece_range, &task_pstart, &task_wstart, &pair_off}) check(*t, torch::kLong, "int64");
  check(weights, torch::kFloat, "weights");
  P3DPlan p;
  p.in = ptr<float>(in);
  p.in_sample_stride = in_sample_stride;
  p.out = out.data_ptr<float>();
  p.out_sample_stride = out_sample_stride;
  p.out_chan_stride = out_chan_stride;
  p.out_shift = out_shift;
  p.out_chan_len = out_chan_len;
  p.zero_rest = zero_rest ? 1 : 0;
  p.N = N;
  p.Q = Q;
  p.nchunks = static_cast<int>(chunk_fstart.numel() - 1);
  p.chunk_fstart = ptr<int32_t>(chunk_fstart);
  p.chunk_filters = ptr<int32_t>(chunk_filters);
  TORCH_CHECK(chunk_pcstart.numel() == chunk_fstart.numel(), "chunk_pcstart: one entry per chunk + 1");
  TORCH_CHECK(piece_range.numel() == 2 * piece_task.numel(), "piece_range: [npieces, 2]");
  p.chunk_pcstart = ptr<int32_t>(chunk_pcstart);
  p.piece_task = ptr<int32_t>(piece_task);
  p.piece_range = ptr<int64_t>(piece_range);
  TORCH_CHECK(piece_last.numel() == piece_task.numel(), "piece_last: one entry per piece");
  p.piece_last = ptr<int32_t>(piece_last);
  p.task_G = ptr<int32_t>(task_G);
  p.task_rows = ptr<int32_t>(task_rows);
  p.task_pstart = ptr<int64_t>(task_pstart);
  p.task_wstart = ptr<int64_t>(task_wstart);
  p.pair_off = ptr<int64_t>(pair_off);
  p.weights = ptr<float>(weights);
  p.bias = nullptr;
  if (bias.has_value() && bias->defined()) { check(*bias, torch::kFloat, "bias"); p.bias = ptr<float>(*bias); }
  p.valid = nullptr;
  if (valid.has_value() && valid->defined()) { check(*valid, torch::kFloat, "valid"); p.valid = ptr<float>(*valid); }
  p.runs = nullptr;
  p.tile_runs = nullptr;
  if (runs.has_value() && runs->defined()) {
    TORCH_CHECK(tile_runs.has_value() && tile_runs->defined(), "runs need tile_runs");
    check(*runs, torch::kInt, "runs");
    check(*tile_runs, torch::kInt, "tile_runs");
    TORCH_CHECK(tile_runs->numel() == (Q + P3D_TILE - 1) / P3D_TILE + 1, "tile_runs: one entry per tile + 1");
    p.runs = ptr<int32_t>(*runs);
    p.tile_runs = ptr<int32_t>(*tile_runs);
  }
  p.relu = relu ? 1 : 0;
  p.prefetch = prefetch;
  TORCH_CHECK(!accumulate || p.runs, "accumulate needs output runs");
  p.accumulate = accumulate ? 1 : 0;
  if (p.nchunks <= 0 || N <= 0 || Q <= 0) return;
  switch (isa_level()) {
    case 2: p3d_run_avx512(&p); break;
    case 1: p3d_run_avx2(&p); break;
    default: p3d_run_generic(&p); break;
  }
}

// y[w] = max(y[w], r[w * kw]) for w in [wa, wb); stride 2 (every C3D pool) spelled out so that it vectorizes.
static inline void row_max(float* __restrict y, const float* __restrict r, int64_t wa, int64_t wb, int64_t kw) {
  if (kw == 2) {
    for (int64_t w = wa; w < wb; ++w) { const float v = r[2 * w]; y[w] = v > y[w] ? v : y[w]; }
  } else {
    for (int64_t w = wa; w < wb; ++w) { const float v = r[w * kw]; y[w] = v > y[w] ? v : y[w]; }
  }
}

// Max pooling from a flat grid (channel planes of Tg x Hg x Wg, valid region T x H x W starting at the plane
// origin) into a flat padded output layout: output (t, h, w) goes to out_off + t*oHW + h*oW + w of its plane.
// Pool padding is implicit -inf. Only the written positions are touched.
void maxpool(const torch::Tensor& in, torch::Tensor& out, int64_t NC, int64_t in_chan_stride, int64_t Hg, int64_t Wg,
             int64_t T, int64_t H, int64_t W, int64_t kt, int64_t kh, int64_t kw, int64_t ph, int64_t pw,
             int64_t To, int64_t Ho, int64_t Wo, int64_t out_chan_stride, int64_t oH, int64_t oW, int64_t out_off) {
  check(in, torch::kFloat, "in");
  check(out, torch::kFloat, "out");
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t HWg = Hg * Wg, oHW = oH * oW;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < NC; ++c) {
    for (int64_t t = 0; t < To; ++t) {
      const float* xc = x + c * in_chan_stride;
      float* yc = y + c * out_chan_stride + out_off + t * oHW;
      // columns whose window lies inside the row: no bounds checks, a loop the compiler vectorizes
      const int64_t wa = std::min<int64_t>((pw + kw - 1) / kw, Wo);
      const int64_t wb = std::max<int64_t>(wa, std::min<int64_t>((W + pw - kw) / kw + 1, Wo));
      for (int64_t h = 0; h < Ho; ++h) {
        const int64_t h0 = h * kh - ph;
        float* yr = yc + h * oW;
        const bool inside = h0 >= 0 && h0 + kh <= H;
        if (inside && wb > wa) {
          for (int64_t w = wa; w < wb; ++w) yr[w] = -INFINITY;
          for (int64_t dt = 0; dt < kt && t * kt + dt < T; ++dt)
            for (int64_t dh = 0; dh < kh; ++dh)
              for (int64_t dw = 0; dw < kw; ++dw)
                row_max(yr, xc + (t * kt + dt) * HWg + (h0 + dh) * Wg - pw + dw, wa, wb, kw);
        }
        for (int64_t w = 0; w < Wo; ++w) {
          if (inside && w >= wa && w < wb) continue;
          const int64_t w0 = w * kw - pw;
          float m = -INFINITY;
          for (int64_t dt = 0; dt < kt; ++dt) {
            const int64_t tt = t * kt + dt;
            if (tt >= T) continue;
            for (int64_t dh = 0; dh < kh; ++dh) {
              const int64_t hh = h0 + dh;
              if (hh < 0 || hh >= H) continue;
              const float* row = xc + tt * HWg + hh * Wg;
              for (int64_t dw = 0; dw < kw; ++dw) {
                const int64_t ww = w0 + dw;
                if (ww < 0 || ww >= W) continue;
                m = row[ww] > m ? row[ww] : m;
              }
            }
          }
          yr[w] = m;
        }
      }
    }
  }
}

void set_num_threads(int64_t n) { omp_set_num_threads(static_cast<int>(n)); }

int64_t get_max_threads() { return omp_get_max_threads(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_num_threads", &set_num_threads);
  m.def("get_max_threads", &get_max_threads);
  m.def("isa", &isa_name);
  m.def("set_isa", &set_isa);
  m.def("sparse_conv", &sparse_conv);
  m.def("maxpool", &maxpool);
}
