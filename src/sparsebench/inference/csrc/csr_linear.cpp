// CSR sparse Linear kernels for sparsebench: y = x @ W.T + b with W in CSR (fp32 values,
// int32 row pointers, int16 or int32 column indices) and x dense (batch, in).
//
// Built at first use by torch.utils.cpp_extension.load (see _extension.py), never by pip.
// Two kernels:
//  * batch 1, SpMV: rows split over threads by nonzero count; each row is a dot product of
//    its values with a gather of x (x is a few KB, so the gather hits L1).
//  * batch >= 2, SpMM: x is transposed to xT (in, batch) so that each nonzero W[o, i] does an
//    AXPY of the contiguous vector xT[i, b0:b0+TB] into a register accumulator for row o.
//    A block of RB output rows is accumulated into a small L1 buffer and written out
//    transposed, so y comes back (batch, out) contiguous without a separate transpose pass.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kRowBlock = 16;
constexpr int64_t kSerialWork = 1 << 16;  // multiply-adds below which threads do not pay off  // output rows per tile: one 64-byte line of y per batch row

// Chunk boundaries over rows so each chunk holds about the same nonzeros + rows; random
// pruning gives even rows, but a layer with dense and empty rows must not idle a core.
std::vector<int64_t> balanced_splits(const int32_t* rp, int64_t rows, int64_t chunks) {
  std::vector<int64_t> s(chunks + 1, rows);
  s[0] = 0;
  const int64_t total = static_cast<int64_t>(rp[rows]) + rows;
  for (int64_t k = 1; k < chunks; ++k) {
    const int64_t target = total * k / chunks;
    int64_t lo = s[k - 1], hi = rows;
    while (lo < hi) {  // first row r with rp[r] + r >= target
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(rp[mid]) + mid < target) lo = mid + 1; else hi = mid;
    }
    s[k] = lo;
  }
  return s;
}

template <typename I>
void spmv_rows(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
               const float* x, const float* bias, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = rp[r];
    const int64_t e = rp[r + 1];
    // Four independent sums hide the FMA latency; the order differs from a dense dot
    // product only by float rounding (well inside the 1e-5 tolerance).
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    for (; j + 4 <= e; j += 4) {
      a0 += v[j] * x[ci[j]];
      a1 += v[j + 1] * x[ci[j + 1]];
      a2 += v[j + 2] * x[ci[j + 2]];
      a3 += v[j + 3] * x[ci[j + 3]];
    }
    for (; j < e; ++j) a0 += v[j] * x[ci[j]];
    y[r] = ((a0 + a1) + (a2 + a3)) + (bias ? bias[r] : 0.f);
  }
}

// GCC/Clang vector extension: 8 floats, one AVX2 register (half an AVX-512 one, which on
// AMD Zen 4 is executed as two halves anyway). Written this way the same source compiles to
// SSE, AVX2 or AVX-512 as -march allows, and the accumulators stay in registers, which plain
// arrays with `omp simd` did not guarantee (measured 3x slower).
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads/stores

// Rows [o0, o1) (at most kRowBlock) for batch columns [b0, b0 + 8*NV).
template <typename I, int NV>
inline void spmm_tile(int64_t o0, int64_t o1, int64_t b0, const int32_t* rp, const I* ci,
                      const float* v, const float* xT, int64_t B, const float* bias,
                      float* y, int64_t out) {
  constexpr int TB = 8 * NV;
  alignas(64) float buf[kRowBlock][TB];
  const float* xb = xT + b0;
  for (int64_t o = o0; o < o1; ++o) {
    v8 acc[NV];
    const float b = bias ? bias[o] : 0.f;
    for (int k = 0; k < NV; ++k) acc[k] = v8{} + b;
    for (int64_t j = rp[o], e = rp[o + 1]; j < e; ++j) {
      const float w = v[j];
      const v8u* xr = reinterpret_cast<const v8u*>(xb + static_cast<int64_t>(ci[j]) * B);
      for (int k = 0; k < NV; ++k) acc[k] += w * xr[k];
    }
    for (int k = 0; k < NV; ++k) *reinterpret_cast<v8*>(&buf[o - o0][8 * k]) = acc[k];
  }
  const int64_t n = o1 - o0;
  for (int t = 0; t < TB; ++t) {
    float* yr = y + (b0 + t) * out + o0;
    for (int64_t k = 0; k < n; ++k) yr[k] = buf[k][t];
  }
}

// Scalar tail for the last batch % 8 columns.
template <typename I>
inline void spmm_tile_tail(int64_t o0, int64_t o1, int64_t b0, int64_t nb, const int32_t* rp,
                           const I* ci, const float* v, const float* xT, int64_t B,
                           const float* bias, float* y, int64_t out) {
  for (int64_t o = o0; o < o1; ++o) {
    float acc[8];
    const float b = bias ? bias[o] : 0.f;
    for (int64_t t = 0; t < nb; ++t) acc[t] = b;
    for (int64_t j = rp[o], e = rp[o + 1]; j < e; ++j) {
      const float w = v[j];
      const float* xr = xT + static_cast<int64_t>(ci[j]) * B + b0;
      for (int64_t t = 0; t < nb; ++t) acc[t] += w * xr[t];
    }
    for (int64_t t = 0; t < nb; ++t) y[(b0 + t) * out + o] = acc[t];
  }
}

template <typename I>
void spmm_rows(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
               const float* xT, int64_t B, const float* bias, float* y, int64_t out) {
  for (int64_t o0 = r0; o0 < r1; o0 += kRowBlock) {
    const int64_t o1 = std::min(o0 + kRowBlock, r1);
    int64_t b0 = 0;
    // Widest tiles first (8 registers of 8 floats), then narrower ones and a scalar tail.
    for (; b0 + 64 <= B; b0 += 64) spmm_tile<I, 8>(o0, o1, b0, rp, ci, v, xT, B, bias, y, out);
    if (b0 + 32 <= B) { spmm_tile<I, 4>(o0, o1, b0, rp, ci, v, xT, B, bias, y, out); b0 += 32; }
    if (b0 + 16 <= B) { spmm_tile<I, 2>(o0, o1, b0, rp, ci, v, xT, B, bias, y, out); b0 += 16; }
    if (b0 + 8 <= B) { spmm_tile<I, 1>(o0, o1, b0, rp, ci, v, xT, B, bias, y, out); b0 += 8; }
    if (b0 < B) spmm_tile_tail<I>(o0, o1, b0, B - b0, rp, ci, v, xT, B, bias, y, out);
  }
}

template <typename I>
void run(const at::Tensor& x, const at::Tensor& rp_t, const at::Tensor& ci_t,
         const at::Tensor& v_t, const float* bias, at::Tensor& y) {
  const int64_t B = x.size(0);
  const int64_t out = y.size(1);
  const int32_t* rp = rp_t.data_ptr<int32_t>();
  const I* ci = ci_t.data_ptr<I>();
  const float* v = v_t.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // A few chunks per thread so a slow (shared, preempted) core can be helped out. Small
  // products run on the calling thread alone: waking the pool costs microseconds, and on a
  // shared machine a parallel region waits for a descheduled worker for a whole time slice.
  const int64_t threads = at::get_num_threads();
  const int64_t work = static_cast<int64_t>(rp[out]) * B + out;
  const int64_t chunks =
      work < kSerialWork ? 1 : std::max<int64_t>(1, std::min<int64_t>(out, threads * 4));
  const auto splits = balanced_splits(rp, out, chunks);
  auto for_chunks = [&](auto&& body) {
    if (chunks == 1) body(0, 1);
    else at::parallel_for(0, chunks, 1, body);
  };
  if (B == 1) {
    const at::Tensor xc = x.contiguous();
    const float* xp = xc.data_ptr<float>();
    for_chunks([&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        spmv_rows<I>(splits[c], splits[c + 1], rp, ci, v, xp, bias, yp);
    });
    return;
  }
  // x.t() is already contiguous when x came out of a previous transposed producer. Small
  // inputs are transposed by a plain loop: torch's copy costs ~6 us of dispatch for 16x300.
  at::Tensor xT;
  const int64_t in = x.size(1);
  if (x.numel() <= kSerialWork && !x.t().is_contiguous()) {
    const at::Tensor xc = x.contiguous();
    xT = at::empty({in, B}, x.options());
    const float* src = xc.data_ptr<float>();
    float* dst = xT.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < in; ++i) dst[i * B + b] = src[b * in + i];
  } else {
    xT = x.t().contiguous();
  }
  const float* xtp = xT.data_ptr<float>();
  for_chunks([&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      spmm_rows<I>(splits[c], splits[c + 1], rp, ci, v, xtp, B, bias, yp, out);
  });
}

}  // namespace

// x: (batch, in) float32; crow: (out + 1,) int32; col: (nnz,) int16/int32; values: (nnz,)
// float32; bias: (out,) float32 or None. Returns y: (batch, out) float32, contiguous.
at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                      const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      int64_t in_features) {
  TORCH_CHECK(x.dim() == 2, "csr_linear: x must be 2-D (batch, in), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
              "csr_linear: float32 only");
  TORCH_CHECK(x.size(1) == in_features, "csr_linear: x has ", x.size(1),
              " features, layer expects ", in_features);
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous(), "crow must be int32");
  TORCH_CHECK(col.is_contiguous() && values.is_contiguous(), "col/values must be contiguous");
  const int64_t out = crow.size(0) - 1;
  const float* bp = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.scalar_type() == at::kFloat && bc.numel() == out, "bias must be float32 (out,)");
    bp = bc.data_ptr<float>();
  }
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  if (x.size(0) == 0 || out == 0) return y;
  if (col.scalar_type() == at::kShort) {
    run<int16_t>(x, crow, col, values, bp, y);
  } else {
    TORCH_CHECK(col.scalar_type() == at::kInt, "col indices must be int16 or int32");
    run<int32_t>(x, crow, col, values, bp, y);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_linear", &csr_linear, "y = x @ W.T + b with W in CSR (fp32)");
}
