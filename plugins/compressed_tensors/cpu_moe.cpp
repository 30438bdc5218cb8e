#include "cpu_moe.hpp"

#include <moeq/dtype.hpp>
#include <moeq/error.hpp>

#include <algorithm>
#include <array>
#include <cmath>
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

// Quantize a row per token to fp8 and return the decoded fp8 values (unscaled) and scale.
float quantize_row(const float* row, int64_t n, float* decoded) {
  const float s = per_token_scale(row, n);
  const auto& lut = fp8_table();
  for (int64_t i = 0; i < n; ++i) {
    float v = std::clamp(row[i] / s, -kFp8E4M3Max, kFp8E4M3Max);
    decoded[i] = lut[float_to_fp8_e4m3(v)];
  }
  return s;
}

void check_2d(const DLTensor& t, int64_t rows, int64_t cols, const char* what) {
  if (t.ndim != 2 || t.shape[0] != rows || t.shape[1] != cols)
    fail(std::string("apply: ") + what + " must be [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (t.device.device_type != kDLCPU) fail(std::string("apply: ") + what + " must be host memory on a CPU method");
}

int64_t offset_of(const DLTensor& t, int64_t r, int64_t c) {
  const int64_t rs = t.strides ? t.strides[0] : t.shape[1];
  const int64_t cs = t.strides ? t.strides[1] : 1;
  return r * rs + c * cs;
}

}  // namespace

float per_token_scale(const float* row, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(row[i]));
  return std::max(amax / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f));
}

void cpu_fp8_channel_apply(const Fp8ChannelExperts& e, const DLTensor& x, const DLTensor& ids,
                           const DLTensor& w, const DLTensor& out) {
  if (x.ndim != 2) fail("apply: x must be [M, H]");
  const int64_t M = x.shape[0], H = e.hidden, I = e.intermediate;
  check_2d(x, M, H, "x");
  check_2d(out, M, H, "out");
  if (ids.ndim != 2 || ids.shape[0] != M) fail("apply: topk_ids must be [M, k]");
  const int64_t K = ids.shape[1];
  check_2d(ids, M, K, "topk_ids");
  check_2d(w, M, K, "topk_weights");
  auto xdt = from_dl(x.dtype), odt = from_dl(out.dtype);
  if (!xdt || !(*xdt == DType::F32 || *xdt == DType::BF16 || *xdt == DType::F16))
    fail("apply: x must be F32, BF16 or F16");
  if (!odt || !(*odt == DType::F32 || *odt == DType::BF16 || *odt == DType::F16))
    fail("apply: out must be F32, BF16 or F16");
  if (!(ids.dtype.code == kDLInt && ids.dtype.bits == 32)) fail("apply: topk_ids must be int32");
  if (!(w.dtype.code == kDLFloat && w.dtype.bits == 32)) fail("apply: topk_weights must be float32");

  const auto* xb = static_cast<const std::byte*>(x.data) + x.byte_offset;
  const auto* ib = reinterpret_cast<const int32_t*>(static_cast<const std::byte*>(ids.data) + ids.byte_offset);
  const auto* wb = reinterpret_cast<const float*>(static_cast<const std::byte*>(w.data) + w.byte_offset);
  auto* ob = static_cast<std::byte*>(out.data) + out.byte_offset;
  const auto& lut = fp8_table();

  auto work = [&](int64_t m0, int64_t m1) {
    std::vector<float> xr(H), xq(H), y(2 * I), h(I), hq(I), acc(H);
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t k = 0; k < H; ++k) xr[k] = load_as_float(xb, *xdt, offset_of(x, m, k));
      const float sx = quantize_row(xr.data(), H, xq.data());
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < K; ++j) {
        const int64_t ge = ib[offset_of(ids, m, j)];
        const int64_t le = ge - e.first_local;
        if (le < 0 || le >= e.num_local) continue;
        const float rw = wb[offset_of(w, m, j)];
        const uint8_t* w13 = e.w13 + le * 2 * I * H;
        for (int64_t n = 0; n < 2 * I; ++n) {
          const uint8_t* wr = w13 + n * H;
          float s = 0.0f;
          for (int64_t k = 0; k < H; ++k) s += xq[k] * lut[wr[k]];
          y[n] = s * sx * e.s13[le * 2 * I + n];
        }
        for (int64_t i = 0; i < I; ++i) {
          const float g = y[i];
          h[i] = g / (1.0f + std::exp(-g)) * y[I + i];
        }
        const float sh = quantize_row(h.data(), I, hq.data());
        const uint8_t* w2 = e.w2 + le * H * I;
        for (int64_t n = 0; n < H; ++n) {
          const uint8_t* wr = w2 + n * I;
          float s = 0.0f;
          for (int64_t i = 0; i < I; ++i) s += hq[i] * lut[wr[i]];
          acc[n] += rw * (s * sh * e.s2[le * H + n]);
        }
      }
      for (int64_t n = 0; n < H; ++n) store_from_float(ob, *odt, offset_of(out, m, n), acc[n]);
    }
  };
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  if (M < 4 || threads == 1) {
    work(0, M);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (M + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t a = t * chunk, b = std::min(M, a + chunk);
    if (a < b) pool.emplace_back(work, a, b);
  }
  for (auto& th : pool) th.join();
}

}  // namespace moeq::ct
