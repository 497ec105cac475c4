// Python binding and run-time ISA dispatch for the prune3d compact sparse convolution kernels.
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "plan.h"

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

int detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
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

std::string isa_name() {
  switch (isa_level()) {
    case 2: return "avx512";
    case 1: return "avx2";
    default: return "generic";
  }
}

// The CPU's dot-product instructions for bf16 (AVX512_BF16) and int8 (AVX512_VNNI), used with the avx512 kernels
// unless switched off (tests compare them with the portable code).
bool g_dot = true;

bool cpu_has(int precision) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (precision == P3D_BF16) return __builtin_cpu_supports("avx512bf16");
  if (precision == P3D_INT8 || precision == P3D_INT8_GATHER) return __builtin_cpu_supports("avx512vnni");
#endif
  return false;
}

bool uses_dot(int precision) { return g_dot && isa_level() == 2 && cpu_has(precision); }

// AMX tiles (kern_amx.cpp) for bf16 and int8: the compiler built them, the CPU has AMX-TILE, -INT8 and -BF16 (and
// the AVX-512 the kernel file is built for), and Linux grants this process the tile data state (arch_prctl
// ARCH_REQ_XCOMP_PERM, asked once: without it the first tile instruction faults).
bool amx_ok() {
  static const bool ok = [] {
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    if (!p3d_amx_built() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool cpu = (d >> 22 & 1) && (d >> 24 & 1) && (d >> 25 & 1);  // AMX-BF16, AMX-TILE, AMX-INT8
    __builtin_cpu_init();
    if (!cpu || !__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vnni")) return false;
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return false;
#endif
  }();
  return ok;
}

bool g_tiles = true;  // switched off by tests and benchmarks to compare with the dot-product kernels

bool uses_tiles(int precision) { return g_tiles && uses_dot(precision) && amx_ok(); }

void set_isa(const std::string& name) {
  int want = name == "avx512" ? 2 : name == "avx2" ? 1 : name == "generic" ? 0 : -1;
  TORCH_CHECK(want >= 0, "unknown isa ", name);
  TORCH_CHECK(want <= detect_isa(), "this CPU does not support ", name);
  g_isa = want;
}

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr c10::ScalarType value = torch::kFloat; };
template <> struct dtype_of<int32_t> { static constexpr c10::ScalarType value = torch::kInt; };
template <> struct dtype_of<int64_t> { static constexpr c10::ScalarType value = torch::kLong; };

// obj.name as a checked tensor of T; `optional`: None gives an undefined tensor (a NULL pointer in the plan)
template <typename T>
torch::Tensor array_field(const py::handle& obj, const char* name, bool optional = false) {
  const py::object v = obj.attr(name);
  if (optional && v.is_none()) return torch::Tensor();
  TORCH_CHECK(THPVariable_Check(v.ptr()), name, ": expected a tensor");
  torch::Tensor t = THPVariable_Unpack(v.ptr());
  check(t, dtype_of<T>::value, name);
  return t;
}

template <typename T>
T* data_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

}  // namespace

// bf16 / int8: the fp32 input packed into `dst` (+ zeroed slack, as the fp32 layout has) by the ISA's packer
// (kernel_impl.h, P3D_PACK); returns the packed per-sample stride.
int64_t pack_input(const float* x, int64_t N, int64_t per_sample, const P3DPlan& p, std::vector<uint32_t>& dst) {
  const int64_t S = p.in_chan_stride, Cv = p.in_vchannels;
  TORCH_CHECK(S > 0 && Cv > 0 && Cv * S <= per_sample, "packed plan: in_vchannels x in_chan_stride exceeds the input");
  const int K = p.precision == P3D_BF16 ? 2 : 4;
  const int64_t bytes = p.precision == P3D_INT8_GATHER ? N * Cv * S : N * ((Cv + K - 1) / K) * S * 4;
  const int64_t slack = 4 * (2 * P3D_TILE + 256);  // the last tile's loads read past the last position
  const int64_t words = (bytes + slack + 3) / 4;
  if ((int64_t)dst.size() < words) dst.resize(words);
  std::memset(reinterpret_cast<uint8_t*>(dst.data()) + bytes, 0, words * 4 - bytes);
  switch (isa_level()) {
    case 2: return p3d_pack_avx512(x, N, per_sample, &p, dst.data());
    case 1: return p3d_pack_avx2(x, N, per_sample, &p, dst.data());
    default: return p3d_pack_generic(x, N, per_sample, &p, dst.data());
  }
}

std::mutex g_pack_lock;
std::vector<uint32_t> g_packed;  // reused: a fresh buffer would be page-faulted in on every call

// One sparse conv. `input` is laid out as `ctx` says (compact.layout.LayoutCtx: n, per_sample, q and the kernel
// plan), the output goes into `out` as `write` says (compact.layout.OutputSpec); both are read by field name.
void sparse_conv(const torch::Tensor& input, const py::object& ctx, const c10::optional<torch::Tensor>& bias,
                 torch::Tensor& out, const py::object& write) {
  // `packed`: the input is already in the plan's packed layout (written so by the conv before, `out_pack`)
  const bool packed = ctx.attr("packed").cast<bool>();
  const int out_pack = write.attr("pack").cast<int>();
  if (packed) {
    TORCH_CHECK(input.is_contiguous() && input.device().is_cpu(), "input: expected a contiguous CPU tensor");
  } else {
    check(input, torch::kFloat, "input");
  }
  if (out_pack) {
    TORCH_CHECK(out.is_contiguous() && out.device().is_cpu(), "out: expected a contiguous CPU tensor");
  } else {
    check(out, torch::kFloat, "out");
  }
  P3DPlan p{};
  const py::object plan = ctx.attr("plan");
  // the locals keep the tensors (and so the pointers) alive for the call
#define P3D_READ(name, type) const torch::Tensor name = array_field<type>(plan, #name); p.name = name.data_ptr<type>();
  P3D_PLAN_ARRAYS(P3D_READ)
#undef P3D_READ
#define P3D_READ(name, type) p.name = plan.attr(#name).cast<type>();
  P3D_PLAN_SCALARS(P3D_READ)
#undef P3D_READ
  TORCH_CHECK(chunk_pcstart.numel() == chunk_fstart.numel(), "chunk_pcstart: one entry per chunk + 1");
  TORCH_CHECK(piece_range.numel() == 2 * piece_task.numel(), "piece_range: [npieces, 2]");
  TORCH_CHECK(piece_last.numel() == piece_task.numel(), "piece_last: one entry per piece");
  p.nchunks = static_cast<int>(chunk_fstart.numel() - 1);
  p.in = input.data_ptr();
  p.in_sample_stride = ctx.attr("per_sample").cast<int64_t>();
  p.N = ctx.attr("n").cast<int64_t>();
  p.Q = ctx.attr("q").cast<int64_t>();
  p.bias = nullptr;
  if (bias.has_value() && bias->defined()) { check(*bias, torch::kFloat, "bias"); p.bias = ptr<float>(*bias); }

  p.out = static_cast<float*>(out.data_ptr());
#define P3D_READ(member, field, type) p.member = write.attr(#field).cast<type>();
  P3D_OUTPUT_SCALARS(P3D_READ)
#undef P3D_READ
  TORCH_CHECK(out_pack >= P3D_FP32 && out_pack <= P3D_INT8_GATHER, "pack: unknown code ", out_pack);
  const torch::Tensor valid = array_field<float>(write, "valid", true);
  p.valid = data_or_null<float>(valid);
  const py::object out_runs = write.attr("runs");
  torch::Tensor runs, tile_runs;
  if (!out_runs.is_none()) {
    runs = array_field<int32_t>(out_runs, "runs");
    tile_runs = array_field<int32_t>(out_runs, "tile_runs");
    TORCH_CHECK(tile_runs.numel() == (p.Q + P3D_TILE - 1) / P3D_TILE + 1, "tile_runs: one entry per tile + 1");
  }
  p.runs = data_or_null<int32_t>(runs);
  p.tile_runs = data_or_null<int32_t>(tile_runs);
  TORCH_CHECK(!p.accumulate || p.runs, "accumulate needs output runs");
  const py::object pack_into = write.attr("pack_into");
  torch::Tensor pack_buf;
  if (!pack_into.is_none()) {
    pack_buf = pack_into.cast<torch::Tensor>();
    TORCH_CHECK(out_pack && pack_buf.is_contiguous() && pack_buf.device().is_cpu(),
                "pack_into: a contiguous CPU tensor, with pack set");
    p.pack_out = pack_buf.data_ptr();
  }
  TORCH_CHECK(!p.out_pack || (p.runs && (p.pack_out || !p.accumulate)),
              "a packed output needs runs (and, instead of the fp32 one, no accumulate)");
  TORCH_CHECK(!packed || p.precision != P3D_FP32, "a packed input needs a bf16 / int8 plan");
  if (p.nchunks <= 0 || p.N <= 0 || p.Q <= 0) return;
  TORCH_CHECK(p.precision >= P3D_FP32 && p.precision <= P3D_INT8_GATHER, "precision: unknown code ", p.precision);
  if (p.precision == P3D_INT8 || p.precision == P3D_INT8_GATHER) {
    int64_t rows = 0;
    for (int64_t i = 0; i < chunk_filters.numel(); ++i) rows = std::max<int64_t>(rows, p.chunk_filters[i] + 1);
    TORCH_CHECK(row_scale.numel() >= rows && row_comp.numel() >= rows,
                "int8 plan: row_scale and row_comp need one entry per output channel");
  }
  std::unique_lock<std::mutex> hold(g_pack_lock, std::defer_lock);
  if (p.precision != P3D_FP32 && pair_off.numel() > 0 && !packed) {  // (no pairs: the bias alone, nothing read)
    hold.lock();
    p.in_sample_stride = pack_input(input.data_ptr<float>(), p.N, p.in_sample_stride, p, g_packed);
    p.in = g_packed.data();
  }
  if (p.precision != P3D_FP32 && weights_t.numel() > 0 && uses_tiles(static_cast<int>(p.precision))) {
    TORCH_CHECK(task_tstart.numel() == task_G.numel() && task_twin.numel() == task_G.numel(),
                "task_tstart, task_twin: one entry per task");
    p3d_run_amx(&p);
    return;
  }
  if (p.precision != P3D_FP32 && uses_dot(static_cast<int>(p.precision))) {
    p.precision == P3D_BF16 ? p3d_run_avx512_bf16(&p) : p3d_run_avx512_vnni(&p);  // (vnni: both int8 kinds)
    return;
  }
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

// The dot-product instructions this CPU has for "bf16" / "int8", and whether the kernels use them.
bool has_dot_products(const std::string& precision) {
  return cpu_has(precision == "bf16" ? P3D_BF16 : precision == "int8" ? P3D_INT8 : -1) && isa_level() == 2;
}

void use_dot_products(bool on) { g_dot = on; }

// Whether "bf16" / "int8" run on AMX tiles here; and the switch (on by default).
bool has_tiles(const std::string& precision) {
  return uses_tiles(precision == "bf16" ? P3D_BF16 : precision == "int8" ? P3D_INT8 : -1);
}

void use_tiles(bool on) { g_tiles = on; }

// This machine's fp32 multiply-add rate in GMAC/s with the kernels' ISA and threads: FMA chains for about `ms`.
double fma_peak(int64_t ms) {
  auto run = [](int64_t iters) {
    switch (isa_level()) {
      case 2: return p3d_peak_avx512(iters);
      case 1: return p3d_peak_avx2(iters);
      default: return p3d_peak_generic(iters);
    }
  };
  int64_t iters = 1 << 16;
  for (;;) {
    const double t0 = omp_get_wtime();
    const double macs = run(iters);
    const double dt = omp_get_wtime() - t0;
    if (dt * 1e3 >= ms || iters > (int64_t(1) << 40)) return macs / dt / 1e9;
    iters *= 2;
  }
}

void set_num_threads(int64_t n) { omp_set_num_threads(static_cast<int>(n)); }

int64_t get_max_threads() { return omp_get_max_threads(); }

// winograd.cpp
void winograd_input(const torch::Tensor& x, torch::Tensor& v, int64_t m, int64_t pt, int64_t kt);
void winograd_output(const std::vector<torch::Tensor>& mt, const c10::optional<torch::Tensor>& bias, torch::Tensor& y,
                     int64_t m, bool relu);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_max_threads", &get_max_threads);
  m.def("fma_peak", &fma_peak, py::arg("ms") = 200);
  m.def("isa", &isa_name);
  m.def("set_isa", &set_isa, py::arg("name"));
  m.def("has_dot_products", &has_dot_products, py::arg("precision"));
  m.def("use_dot_products", &use_dot_products, py::arg("on"));
  m.def("has_tiles", &has_tiles, py::arg("precision"));
  m.def("use_tiles", &use_tiles, py::arg("on"));
  // keyword-only: call sites name what they pass
  m.def("sparse_conv", &sparse_conv, py::kw_only(), py::arg("input"), py::arg("ctx"), py::arg("bias") = py::none(),
        py::arg("out"), py::arg("write"));
  m.def("maxpool", &maxpool, py::kw_only(), py::arg("input"), py::arg("out"), py::arg("planes"),
        py::arg("in_chan_stride"), py::arg("Hg"), py::arg("Wg"), py::arg("T"), py::arg("H"), py::arg("W"),
        py::arg("kt"), py::arg("kh"), py::arg("kw"), py::arg("ph"), py::arg("pw"), py::arg("To"), py::arg("Ho"),
        py::arg("Wo"), py::arg("out_chan_stride"), py::arg("oH"), py::arg("oW"), py::arg("out_off"));
  m.def("winograd_input", &winograd_input, py::kw_only(), py::arg("x"), py::arg("v"), py::arg("m"), py::arg("pt"),
        py::arg("kt"));
  m.def("winograd_output", &winograd_output, py::kw_only(), py::arg("mt"), py::arg("bias") = py::none(),
        py::arg("y"), py::arg("m"), py::arg("relu"));
}
