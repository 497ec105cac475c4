// Winograd F(m x m, 3 x 3) input and output transforms; compact/winograd.py runs the GEMMs between them (oneDNN).
//
// Channels innermost on both sides, so every inner loop runs over contiguous channels and vectorizes:
// input   x [N][C][T][H][W] with channel stride 1 (a channels_last_3d tensor), read with zero padding (pt frames,
//         one row and column, the tiles' overhang) -> v [a*a][T'][N][th][tw][kt][C]: element (alpha, beta) of
//         B^T d B of each tile, once per temporal tap that reads its frame, so that each element's GEMM is one
//         [T' N th tw, kt C] x [kt C, K] product;
// output  the a*a GEMM results [T'][N][th][tw][K] -> y [N][K][T'][H][W] (any strides): A^T M A per tile, cropped,
//         + bias, ReLU.
// The parallel loops are here and the per-tile-row work in functions compiled for several ISAs (target_clones):
// OpenMP's outlined bodies would not inherit a clone's target.
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

// GCC 12 takes "arch=" levels in target_clones; with an older compiler (or clang) the transforms are built for the
// baseline ISA only, slower but never a failed build of the whole extension
#if defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 12
#define P3D_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define P3D_CLONES
#endif

constexpr int MAX_A = 6;

// the nonzeros of each row of a small transform matrix
struct Sparse {
  int n[MAX_A] = {};
  int idx[MAX_A][MAX_A] = {};
  float coef[MAX_A][MAX_A] = {};
};

Sparse nonzeros(const float* mat, int rows, int cols) {
  Sparse s;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      if (mat[r * cols + c] != 0.f) {
        s.idx[r][s.n[r]] = c;
        s.coef[r][s.n[r]++] = mat[r * cols + c];
      }
  return s;
}

const float BT2[4 * 4] = {1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1};
const float AT2[2 * 4] = {1, 1, 1, 0, 0, 1, -1, -1};
const float BT4[6 * 6] = {4, 0, -5, 0, 1, 0, 0, -4, -4, 1, 1, 0, 0, 4, -4, -1, 1, 0,
                          0, -2, -1, 2, 1, 0, 0, 2, -1, -2, 1, 0, 0, 4, 0, -5, 0, 1};
const float AT4[4 * 6] = {1, 1, 1, 1, 1, 0, 0, 1, -1, 2, -2, 0, 0, 1, 1, 4, 4, 0, 0, 1, -1, 8, -8, 1};

struct Geom {
  int64_t N, C, T, H, W, m, a, pt, kt, th, tw, To;
};

// one tile row (sample n, padded frame tp, tile row i) of the input transform; tmp holds a*a*C floats
P3D_CLONES void input_row(const Geom& g, const Sparse& bt, const float* x, const int64_t* xs, int64_t n, int64_t tp,
                          int64_t i, float* tmp, float* v) {
  const int64_t C = g.C, a = g.a, t = tp - g.pt;
  const bool tin = t >= 0 && t < g.T;
  const float* rowp[MAX_A][MAX_A];
  for (int64_t j = 0; j < g.tw; ++j) {
    for (int r = 0; r < a; ++r) {
      const int64_t h = i * g.m + r - 1;
      for (int s = 0; s < a; ++s) {
        const int64_t w = j * g.m + s - 1;
        rowp[r][s] = tin && h >= 0 && h < g.H && w >= 0 && w < g.W ? x + n * xs[0] + t * xs[2] + h * xs[3] + w * xs[4]
                                                                   : nullptr;
      }
    }
    // along w: tmp[r][b] = sum_s BT[b][s] d[r][s]
    for (int r = 0; r < a; ++r)
      for (int b = 0; b < a; ++b) {
        float* o = tmp + (r * a + b) * C;
        std::fill(o, o + C, 0.f);
        for (int e = 0; e < bt.n[b]; ++e) {
          const float* src = rowp[r][bt.idx[b][e]];
          if (!src) continue;
          const float k = bt.coef[b][e];
          for (int64_t c = 0; c < C; ++c) o[c] += k * src[c];
        }
      }
    // along h: v[al][b] = sum_r BT[al][r] tmp[r][b], written once per temporal tap that reads frame tp
    for (int al = 0; al < a; ++al)
      for (int b = 0; b < a; ++b) {
        float* first = nullptr;
        for (int64_t dt = 0; dt < g.kt; ++dt) {
          const int64_t to = tp - dt;
          if (to < 0 || to >= g.To) continue;
          float* o = v + (((((al * a + b) * g.To + to) * g.N + n) * g.th + i) * g.tw + j) * g.kt * C + dt * C;
          if (first) {
            std::memcpy(o, first, C * sizeof(float));
            continue;
          }
          std::fill(o, o + C, 0.f);
          for (int e = 0; e < bt.n[al]; ++e) {
            const float* src = tmp + (bt.idx[al][e] * a + b) * C;
            const float k = bt.coef[al][e];
            for (int64_t c = 0; c < C; ++c) o[c] += k * src[c];
          }
          first = o;
        }
      }
  }
}

// one tile row (output frame to, sample n, tile row i) of the output transform; q holds m*a*K, o m*m*K floats
P3D_CLONES void output_row(const Geom& g, const Sparse& at, const float* const* mt, int64_t K, const float* bias,
                           bool relu, int64_t to, int64_t n, int64_t i, float* q, float* o, float* y,
                           const int64_t* ys) {
  const int64_t a = g.a, m = g.m;
  for (int64_t j = 0; j < g.tw; ++j) {
    const int64_t row = ((to * g.N + n) * g.th + i) * g.tw + j;
    for (int r = 0; r < m; ++r)
      for (int b = 0; b < a; ++b) {
        float* qo = q + (r * a + b) * K;
        std::fill(qo, qo + K, 0.f);
        for (int e = 0; e < at.n[r]; ++e) {
          const float* src = mt[at.idx[r][e] * a + b] + row * K;
          const float k = at.coef[r][e];
          for (int64_t c = 0; c < K; ++c) qo[c] += k * src[c];
        }
      }
    for (int r = 0; r < m; ++r)
      for (int s = 0; s < m; ++s) {
        float* oo = o + (r * m + s) * K;
        if (bias)
          std::memcpy(oo, bias, K * sizeof(float));
        else
          std::fill(oo, oo + K, 0.f);
        for (int e = 0; e < at.n[s]; ++e) {
          const float* src = q + (r * a + at.idx[s][e]) * K;
          const float k = at.coef[s][e];
          for (int64_t c = 0; c < K; ++c) oo[c] += k * src[c];
        }
        if (relu)
          for (int64_t c = 0; c < K; ++c) oo[c] = std::max(oo[c], 0.f);
      }
    const int64_t hn = std::min(m, g.H - i * m), wn = std::min(m, g.W - j * m);
    for (int64_t k = 0; k < K; ++k) {
      float* dk = y + n * ys[0] + k * ys[1] + to * ys[2] + (i * m) * ys[3] + (j * m) * ys[4];
      for (int64_t r = 0; r < hn; ++r)
        for (int64_t s = 0; s < wn; ++s) dk[r * ys[3] + s * ys[4]] = o[(r * m + s) * K + k];
    }
  }
}

Geom geometry(int64_t N, int64_t C, int64_t T, int64_t H, int64_t W, int64_t m, int64_t pt, int64_t kt) {
  TORCH_CHECK(m == 2 || m == 4, "winograd: tile size ", m, " (2 or 4)");
  const int64_t th = (H + m - 1) / m, tw = (W + m - 1) / m;
  return Geom{N, C, T, H, W, m, m + 2, pt, kt, th, tw, T + 2 * pt - kt + 1};
}

}  // namespace

void winograd_input(const torch::Tensor& x, torch::Tensor& v, int64_t m, int64_t pt, int64_t kt) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == torch::kFloat && x.stride(1) == 1,
              "winograd_input: x must be float [N, C, T, H, W] with channels innermost (channels_last_3d)");
  const Geom g = geometry(x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), m, pt, kt);
  TORCH_CHECK(v.is_contiguous() && v.scalar_type() == torch::kFloat &&
                  v.numel() == g.a * g.a * g.To * g.N * g.th * g.tw * kt * g.C,
              "winograd_input: v must be contiguous float [a*a][T'][N][th][tw][kt][C]");
  const Sparse bt = nonzeros(m == 2 ? BT2 : BT4, g.a, g.a);
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const int64_t xs[5] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)};
  const int64_t Tp = g.T + 2 * pt;
#pragma omp parallel
  {
    std::vector<float> tmp(g.a * g.a * g.C);
#pragma omp for collapse(3) schedule(static)
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t tp = 0; tp < Tp; ++tp)
        for (int64_t i = 0; i < g.th; ++i) input_row(g, bt, xp, xs, n, tp, i, tmp.data(), vp);
  }
}

void winograd_output(const std::vector<torch::Tensor>& mt, const c10::optional<torch::Tensor>& bias, torch::Tensor& y,
                     int64_t m, bool relu) {
  TORCH_CHECK(y.dim() == 5 && y.scalar_type() == torch::kFloat, "winograd_output: y must be float [N, K, T, H, W]");
  const Geom g = geometry(y.size(0), 0, 0, y.size(3), y.size(4), m, 0, 1);
  const int64_t K = y.size(1), To = y.size(2), rows = To * g.N * g.th * g.tw;
  TORCH_CHECK(static_cast<int64_t>(mt.size()) == g.a * g.a, "winograd_output: one GEMM result per element");
  std::vector<const float*> mp;
  for (const auto& t : mt) {
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat && t.numel() == rows * K,
                "winograd_output: each GEMM result must be contiguous float [T' N th tw, K]");
    mp.push_back(t.data_ptr<float>());
  }
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == K, "winograd_output: bias must have K floats");
    bp = bias->data_ptr<float>();
  }
  Geom go = g;
  go.To = To;
  const Sparse at = nonzeros(m == 2 ? AT2 : AT4, m, g.a);
  float* yp = y.data_ptr<float>();
  const int64_t ys[5] = {y.stride(0), y.stride(1), y.stride(2), y.stride(3), y.stride(4)};
#pragma omp parallel
  {
    std::vector<float> q(m * g.a * K), o(m * m * K);
#pragma omp for collapse(3) schedule(static)
    for (int64_t t = 0; t < To; ++t)
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t i = 0; i < g.th; ++i)
          output_row(go, at, mp.data(), K, bp, relu, t, n, i, q.data(), o.data(), yp, ys);
  }
}
