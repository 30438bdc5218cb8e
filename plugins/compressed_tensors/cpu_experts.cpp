#include "cpu_experts.hpp"

#include <moeq/error.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

namespace moeq::ct {
namespace {

const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> a{};
    for (int i = 0; i < 256; ++i) a[i] = fp8_e4m3_to_float(static_cast<uint8_t>(i));
    return a;
  }();
  return t;
}

// Weight codes of row `row` (of `cols` elements) as floats: exact for every code dtype.
void decode_row(DType dt, const void* base, int64_t row, int64_t cols, float* out) {
  const int64_t off = row * cols;
  switch (dt) {
    case DType::F8_E4M3: {
      const auto& lut = fp8_table();
      const auto* p = static_cast<const uint8_t*>(base) + off;
      for (int64_t i = 0; i < cols; ++i) out[i] = lut[p[i]];
      return;
    }
    case DType::I8: {
      const auto* p = static_cast<const int8_t*>(base) + off;
      for (int64_t i = 0; i < cols; ++i) out[i] = static_cast<float>(p[i]);
      return;
    }
    case DType::BF16: {
      const auto* p = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < cols; ++i) out[i] = bf16_to_float(p[i]);
      return;
    }
    case DType::F16: {
      const auto* p = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < cols; ++i) out[i] = f16_to_float(p[i]);
      return;
    }
    case DType::F32: {
      const auto* p = static_cast<const float*>(base) + off;
      std::copy(p, p + cols, out);
      return;
    }
    default: fail("cpu apply: unsupported weight dtype " + std::string(dtype_name(dt)));
  }
}

float amax(const float* x, int64_t n) {
  float a = 0.0f;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

uint8_t quantize(float x, float s) {
  const float v = x / s;  // division, as the kernels do (§7.3)
  return float_to_fp8_e4m3(std::isnan(v) ? v : std::clamp(v, -kFp8E4M3Max, kFp8E4M3Max));
}

// Activations as the GEMM reads them: codes (fp8 values, or the floats themselves for
// weight-only schemes) and one scale per `group` columns of each row.
struct ActRows {
  std::vector<float> codes;   // [rows, cols]
  std::vector<float> scales;  // [rows, groups]
  int64_t cols = 0;
  int64_t group = 0;   // columns per scale
  int64_t groups = 0;  // scales per row
};

ActRows quantize_rows(const std::vector<float>& x, int64_t rows, int64_t cols, ActMode mode, int64_t act_group,
                      float static_scale) {
  ActRows q;
  q.cols = cols;
  q.group = mode == ActMode::kDynamicGroup ? act_group : std::max<int64_t>(cols, 1);
  q.groups = cols == 0 ? 0 : (cols + q.group - 1) / q.group;
  q.codes.resize(x.size());
  q.scales.assign(static_cast<size_t>(rows * q.groups), 1.0f);
  if (mode == ActMode::kNone) {
    q.codes = x;
    return q;
  }
  const auto& lut = fp8_table();
  float tensor_scale = static_scale;
  if (mode == ActMode::kDynamicTensor) {
    const float a = amax(x.data(), static_cast<int64_t>(x.size()));
    tensor_scale = a > 0.0f ? a / kFp8E4M3Max : 1.0f;  // all-zero input: any scale, codes are 0
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < q.groups; ++g) {
      const int64_t c0 = g * q.group, n = std::min(q.group, cols - c0);
      const float* src = x.data() + r * cols + c0;
      float s = tensor_scale;
      if (mode == ActMode::kDynamicToken)
        s = std::max(amax(src, n) / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f));
      else if (mode == ActMode::kDynamicGroup)
        s = std::max(amax(src, n), 1e-10f) / kFp8E4M3Max;
      q.scales[r * q.groups + g] = s;
      float* dst = q.codes.data() + r * cols + c0;
      for (int64_t i = 0; i < n; ++i) dst[i] = lut[quantize(src[i], s)];
    }
  }
  return q;
}

// Runs fn(job) for job in [0, jobs) on up to 16 threads.
template <class F>
void parallel_for(int64_t jobs, F&& fn) {
  const int64_t threads = std::min<int64_t>(std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16), jobs);
  if (threads <= 1) {
    for (int64_t j = 0; j < jobs; ++j) fn(j);
    return;
  }
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (int64_t j = next++; j < jobs; j = next++) fn(j);
    });
  for (auto& th : pool) th.join();
}

// One grouped GEMM: for every local expert, y[r, n] = sum over K-tiles of
// (sum_k a[r,k] * w[n,k]) * a_scale(r, tile) * w_scale(n, tile), for the rows r routed to it.
// `work[le]` lists (activation row, output row) pairs of local expert le.
using RowPairs = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

template <class ScaleFn>
void grouped_gemm(const CpuExperts& e, const void* weights, int64_t n_out, int64_t k_in, int64_t w_kblock,
                  const ActRows& a, const RowPairs& work, ScaleFn&& w_scale, std::vector<float>& y) {
  // The K-tile lies inside one activation group and one weight block.
  const int64_t tile = std::max<int64_t>(1, std::gcd(a.group, w_kblock > 0 ? w_kblock : k_in));
  constexpr int64_t kChunk = 32;  // output rows per job
  const int64_t chunks = (n_out + kChunk - 1) / kChunk;
  const size_t elem = dtype_size(e.weight_dtype);
  parallel_for(e.num_local * chunks, [&](int64_t job) {
    const int64_t le = job / chunks, n0 = (job % chunks) * kChunk, n1 = std::min(n_out, n0 + kChunk);
    const auto& rows = work[le];
    if (rows.empty()) return;
    const void* base = static_cast<const std::byte*>(weights) + static_cast<size_t>(le * n_out * k_in) * elem;
    std::vector<float> w(static_cast<size_t>(k_in));
    for (int64_t n = n0; n < n1; ++n) {
      decode_row(e.weight_dtype, base, n, k_in, w.data());
      for (const auto& [r, out_row] : rows) {
        const float* ar = a.codes.data() + r * a.cols;
        float acc = 0.0f;
        for (int64_t k0 = 0; k0 < k_in; k0 += tile) {
          const int64_t k1 = std::min(k_in, k0 + tile);
          float partial = 0.0f;
          for (int64_t k = k0; k < k1; ++k) partial += ar[k] * w[k];
          acc += partial * a.scales[r * a.groups + k0 / a.group] * w_scale(le, n, k0);
        }
        y[out_row * n_out + n] = acc;
      }
    }
  });
}

float silu(float x) {  // the same two-branch sigmoid as the core reference
  if (x >= 0.0f) return x * (1.0f / (1.0f + std::exp(-x)));
  const float t = std::exp(x);
  return x * (t / (1.0f + t));
}

void check_2d(const DLTensor& t, int64_t rows, int64_t cols, const char* what) {
  if (t.ndim != 2 || t.shape == nullptr || t.shape[0] != rows || t.shape[1] != cols)
    fail(std::string("apply: ") + what + " must be [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (t.device.device_type != kDLCPU) fail(std::string("apply: ") + what + " must be host memory on a CPU method");
  if (t.data == nullptr && rows > 0 && cols > 0) fail(std::string("apply: ") + what + " has NULL data");
}

int64_t offset_of(const DLTensor& t, int64_t r, int64_t c) {
  const int64_t rs = t.strides ? t.strides[0] : t.shape[1];
  const int64_t cs = t.strides ? t.strides[1] : 1;
  return r * rs + c * cs;
}

bool is_act_dtype(std::optional<DType> d) {
  return d && (*d == DType::F32 || *d == DType::BF16 || *d == DType::F16);
}

}  // namespace

float CpuExperts::w13_scale(int64_t le, int64_t n, int64_t k) const {
  switch (granularity) {
    case Granularity::kNone: return 1.0f;
    case Granularity::kTensor: return s13[le * 2 + (n >= intermediate ? 1 : 0)];
    case Granularity::kChannel: return s13[le * 2 * intermediate + n];
    case Granularity::kBlock: {
      const int64_t half = n >= intermediate ? 1 : 0;
      const int64_t row = half * r13_count + (n - half * intermediate) / r13_block;
      return s13[(le * 2 * r13_count + row) * c13_count + k / c13_block];
    }
  }
  return 1.0f;
}

float CpuExperts::w2_scale(int64_t le, int64_t n, int64_t k) const {
  switch (granularity) {
    case Granularity::kNone: return 1.0f;
    case Granularity::kTensor: return s2[le];
    case Granularity::kChannel: return s2[le * hidden + n];
    case Granularity::kBlock: return s2[(le * r2_count + n / r2_block) * c2_count + k / c2_block];
  }
  return 1.0f;
}

void cpu_apply(const CpuExperts& e, const DLTensor& x, const DLTensor& ids, const DLTensor& w, const DLTensor& out) {
  if (x.ndim != 2 || x.shape == nullptr) fail("apply: x must be [M, H]");
  const int64_t M = x.shape[0], H = e.hidden, I = e.intermediate;
  if (M < 0) fail("apply: M must be >= 0, found " + std::to_string(M));
  check_2d(x, M, H, "x");
  check_2d(out, M, H, "out");
  if (ids.ndim != 2 || ids.shape == nullptr || ids.shape[0] != M) fail("apply: topk_ids must be [M, k]");
  const int64_t K = ids.shape[1];
  if (K < 1) fail("apply: topk_ids must have k >= 1 columns, found " + std::to_string(K));
  check_2d(ids, M, K, "topk_ids");
  check_2d(w, M, K, "topk_weights");
  const auto xdt = from_dl(x.dtype), odt = from_dl(out.dtype);
  if (!is_act_dtype(xdt)) fail("apply: x must be F32, BF16 or F16");
  if (!is_act_dtype(odt)) fail("apply: out must be F32, BF16 or F16");
  if (!(ids.dtype.code == kDLInt && ids.dtype.bits == 32)) fail("apply: topk_ids must be int32");
  if (!(w.dtype.code == kDLFloat && w.dtype.bits == 32)) fail("apply: topk_weights must be float32");
  const auto* xb = static_cast<const std::byte*>(x.data) + x.byte_offset;
  const auto* ib = reinterpret_cast<const int32_t*>(static_cast<const std::byte*>(ids.data) + ids.byte_offset);
  const auto* wb = reinterpret_cast<const float*>(static_cast<const std::byte*>(w.data) + w.byte_offset);
  auto* ob = static_cast<std::byte*>(out.data) + out.byte_offset;

  // a1: once per token, before the top-k expansion (per-tensor dynamic: over all of x).
  std::vector<float> xf(static_cast<size_t>(M * H));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < H; ++k) xf[m * H + k] = load_as_float(xb, *xdt, offset_of(x, m, k));
  const ActRows a1 = quantize_rows(xf, M, H, e.act, e.act_group, e.a1_static);

  // (token, slot) pairs routed to local experts, in token order.
  struct Row {
    int64_t token, slot, local;
  };
  std::vector<Row> rows;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t le = static_cast<int64_t>(ib[offset_of(ids, m, j)]) - e.first_local;
      if (le >= 0 && le < e.num_local) rows.push_back({m, j, le});
    }
  const int64_t R = static_cast<int64_t>(rows.size());
  RowPairs gemm1(static_cast<size_t>(e.num_local)), gemm2(static_cast<size_t>(e.num_local));
  for (int64_t r = 0; r < R; ++r) {
    gemm1[rows[r].local].push_back({rows[r].token, r});  // GEMM1 reads the token's a1 row
    gemm2[rows[r].local].push_back({r, r});              // GEMM2 reads the routed row's a2 row
  }

  std::vector<float> y1(static_cast<size_t>(R * 2 * I));
  grouped_gemm(e, e.w13, 2 * I, H, e.granularity == Granularity::kBlock ? e.c13_block : 0, a1, gemm1,
               [&](int64_t l, int64_t n, int64_t k) { return e.w13_scale(l, n, k); }, y1);
  std::vector<float> h(static_cast<size_t>(R * I));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < I; ++i) h[r * I + i] = silu(y1[r * 2 * I + i]) * y1[r * 2 * I + I + i];

  // a2 over the routed local intermediates (per-tensor dynamic: one scale for all R rows).
  const ActRows a2 = quantize_rows(h, R, I, e.act, e.act_group, e.a2_static);
  std::vector<float> y2(static_cast<size_t>(R * H));
  grouped_gemm(e, e.w2, H, I, e.granularity == Granularity::kBlock ? e.c2_block : 0, a2, gemm2,
               [&](int64_t l, int64_t n, int64_t k) { return e.w2_scale(l, n, k); }, y2);

  std::vector<float> acc(static_cast<size_t>(M * H), 0.0f);
  for (int64_t r = 0; r < R; ++r) {
    const float rw = wb[offset_of(w, rows[r].token, rows[r].slot)];
    float* o = acc.data() + rows[r].token * H;
    const float* y = y2.data() + r * H;
    for (int64_t n = 0; n < H; ++n) o[n] += rw * y[n];
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < H; ++n) store_from_float(ob, *odt, offset_of(out, m, n), acc[m * H + n]);
}

void cpu_dequantize(const CpuExperts& e, int64_t le, float* w13, float* w2) {
  if (le < 0 || le >= e.num_local) fail("dequantize_expert: local expert " + std::to_string(le) + " out of range");
  const int64_t H = e.hidden, I = e.intermediate;
  const size_t elem = dtype_size(e.weight_dtype);
  const void* b13 = static_cast<const std::byte*>(e.w13) + static_cast<size_t>(le * 2 * I * H) * elem;
  const void* b2 = static_cast<const std::byte*>(e.w2) + static_cast<size_t>(le * H * I) * elem;
  for (int64_t n = 0; n < 2 * I; ++n) {
    decode_row(e.weight_dtype, b13, n, H, w13 + n * H);
    for (int64_t k = 0; k < H; ++k) w13[n * H + k] *= e.w13_scale(le, n, k);
  }
  for (int64_t n = 0; n < H; ++n) {
    decode_row(e.weight_dtype, b2, n, I, w2 + n * I);
    for (int64_t k = 0; k < I; ++k) w2[n * I + k] *= e.w2_scale(le, n, k);
  }
}

}  // namespace moeq::ct
