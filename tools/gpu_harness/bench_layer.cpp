#include "bench_layer.hpp"

#include <moeq/dtype.hpp>
#include <moeq/error.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <thread>

namespace moeq::gpu_harness {
namespace {

namespace mk = ::moeq_kernels;
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// fn(i) for i in [0, n) over the machine's cores (dequantizing a large expert row by row).
template <class F>
void parallel_rows(int64_t n, F&& fn) {
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 32);
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < std::min(threads, n); ++t)
    pool.emplace_back([&] {
      for (int64_t i = next++; i < n; i = next++) fn(i);
    });
  for (auto& th : pool) th.join();
}

}  // namespace

std::optional<ShapeSpec> shape_by_name(const std::string& name) {
  for (const auto& s : named_shapes())
    if (s.name == name) return s;
  return std::nullopt;
}

const std::vector<SchemeSpec>& named_schemes() {
  using G = ct::gpu::GpuScheme;
  static const std::vector<SchemeSpec> s = {
      {"bf16", G{mk::kKindBf16, mk::kWNone, mk::kANone, 128, 128}},
      {"fp8-channel", G{mk::kKindFp8, mk::kWChannel, mk::kAToken, 128, 128}},
      {"fp8-block", G{mk::kKindFp8, mk::kWBlock, mk::kAGroup, 128, 128, 128}},
      {"fp8-tensor", G{mk::kKindFp8, mk::kWTensor, mk::kATensor, 128, 128}},
      {"fp8-tensor-static", G{mk::kKindFp8, mk::kWTensor, mk::kAStatic, 128, 128}},
      {"w8a16", G{mk::kKindW8A16, mk::kWChannel, mk::kANone, 128, 128}},
  };
  return s;
}

std::optional<SchemeSpec> scheme_by_name(const std::string& name) {
  for (const auto& s : named_schemes())
    if (s.name == name) return s;
  return std::nullopt;
}

SchemeSpec with_blocks(SchemeSpec s, int block_n, int block_k) {
  s.block_n = block_n;
  s.block_k = block_k;
  s.scheme.scale_k = std::gcd(std::gcd(block_k, s.scheme.act_group), 128);
  s.scheme.block_n = block_n;
  s.name += "-" + std::to_string(block_n) + "x" + std::to_string(block_k);
  return s;
}

DeviceLayer::DeviceLayer(BenchKernels& fill, Driver& d, const SchemeSpec& spec, const ct::gpu::LayerDims& dims,
                         uint64_t seed, Stream s)
    : driver_(d), spec_(spec), dims_(dims) {
  const int64_t E = dims.num_experts, H = dims.hidden, I = dims.inter;
  const int kind = spec.scheme.kind;
  const size_t elem = kind == mk::kKindBf16 ? 2 : 1;
  w13_ = DeviceBuffer(static_cast<size_t>(E * 2 * I * H) * elem);
  w2_ = DeviceBuffer(static_cast<size_t>(E * H * I) * elem);
  const float b13 = 1.0f / std::sqrt(static_cast<float>(H)), b2 = 1.0f / std::sqrt(static_cast<float>(I));
  if (kind == mk::kKindBf16) {
    fill.fill(w13_.get(), E * 2 * I * H, FillType::kBf16, seed + 1, b13, 0.0f, s);
    fill.fill(w2_.get(), E * H * I, FillType::kBf16, seed + 2, b2, 0.0f, s);
  } else if (kind == mk::kKindFp8) {
    fill.fill(w13_.get(), E * 2 * I * H, FillType::kFp8, seed + 1, 448.0f, 0.0f, s);
    fill.fill(w2_.get(), E * H * I, FillType::kFp8, seed + 2, 448.0f, 0.0f, s);
  } else {
    fill.fill(w13_.get(), E * 2 * I * H, FillType::kInt8, seed + 1, 127.0f, 0.0f, s);
    fill.fill(w2_.get(), E * H * I, FillType::kInt8, seed + 2, 127.0f, 0.0f, s);
  }
  const float qmax = kind == mk::kKindW8A16 ? 127.0f : 448.0f;
  int64_t n13 = 0, n2 = 0;
  auto& w = weights_;
  switch (spec.scheme.wscale) {
    case mk::kWTensor: n13 = E * 2, n2 = E; break;
    case mk::kWChannel: n13 = E * 2 * I, n2 = E * H; break;
    case mk::kWBlock:
      w.s13_bn = spec.block_n, w.s13_bk = spec.block_k, w.s2_bn = spec.block_n, w.s2_bk = spec.block_k;
      w.s13_rows = static_cast<int>(ceil_div(I, spec.block_n));
      w.s13_cols = static_cast<int>(ceil_div(H, spec.block_k));
      w.s2_rows = static_cast<int>(ceil_div(H, spec.block_n));
      w.s2_cols = static_cast<int>(ceil_div(I, spec.block_k));
      n13 = E * 2 * w.s13_rows * w.s13_cols, n2 = E * w.s2_rows * w.s2_cols;
      break;
    default: break;
  }
  if (n13 > 0) {
    s13_ = DeviceBuffer(static_cast<size_t>(n13) * 4);
    s2_ = DeviceBuffer(static_cast<size_t>(n2) * 4);
    // Scales in [0.5, 1.5] x the base that makes a dequantized row of unit-variance size.
    fill.fill(s13_.get(), n13, FillType::kF32, seed + 3, 0.5f * b13 / qmax, b13 / qmax, s);
    fill.fill(s2_.get(), n2, FillType::kF32, seed + 4, 0.5f * b2 / qmax, b2 / qmax, s);
  }
  w.w13 = reinterpret_cast<const void*>(w13_.get());
  w.w2 = reinterpret_cast<const void*>(w2_.get());
  w.s13 = s13_.as<const float>();
  w.s2 = s2_.as<const float>();
  // x is uniform in [-1, 1); the intermediate stays well under 1.
  w.a1_static = 1.0f / 448.0f;
  w.a2_static = 0.5f / 448.0f;
  expert_bytes_ = static_cast<double>(3 * I * H * elem + static_cast<size_t>(n13 + n2) / E * 4);
  driver_.sync(s);
}

void DeviceLayer::repack(sdk::cuda::Module utility, Stream s) {
  if (spec_.scheme.kind != mk::kKindW8A16 || repacked_) return;
  ct::gpu::launch_repack_w8a16(utility, reinterpret_cast<void*>(w13_.get()), static_cast<int64_t>(w13_.bytes()), s);
  ct::gpu::launch_repack_w8a16(utility, reinterpret_cast<void*>(w2_.get()), static_cast<int64_t>(w2_.bytes()), s);
  driver_.sync(s);
  repacked_ = true;
}

ExpertFloat DeviceLayer::expert(int64_t le) const {
  const int64_t H = dims_.hidden, I = dims_.inter;
  const int kind = spec_.scheme.kind;
  const size_t elem = kind == mk::kKindBf16 ? 2 : 1;
  const auto& w = weights_;
  std::vector<uint8_t> c13(static_cast<size_t>(2 * I * H) * elem), c2(static_cast<size_t>(H * I) * elem);
  driver_.download(c13.data(), w13_.get() + static_cast<size_t>(le) * c13.size(), c13.size());
  driver_.download(c2.data(), w2_.get() + static_cast<size_t>(le) * c2.size(), c2.size());
  std::vector<float> s13, s2;
  if (s13_.bytes()) {
    const size_t n13 = s13_.bytes() / 4 / dims_.num_experts, n2 = s2_.bytes() / 4 / dims_.num_experts;
    s13.resize(n13);
    s2.resize(n2);
    driver_.download(s13.data(), s13_.get() + le * n13 * 4, n13 * 4);
    driver_.download(s2.data(), s2_.get() + le * n2 * 4, n2 * 4);
  }
  // Code of (row, col) in a row-major [rows, K] block, undoing the W8A16 repack.
  auto code = [&](const std::vector<uint8_t>& c, int64_t row, int64_t col, int64_t K) -> float {
    if (kind == mk::kKindBf16) {
      uint16_t v;
      std::memcpy(&v, c.data() + (row * K + col) * 2, 2);
      return bf16_to_float(v);
    }
    int64_t pos = col;
    if (repacked_) {  // old byte b of a 16-byte group sits at new 4t + {0,1,2,3}
      const int64_t g = col & ~int64_t{15}, b = col & 15;
      const int64_t t = (b & 7) >> 1, hi = b >= 8 ? 2 : 0;
      pos = g + 4 * t + hi + (b & 1);
    }
    const uint8_t v = c[static_cast<size_t>(row * K + pos)];
    return kind == mk::kKindFp8 ? fp8_e4m3_to_float(v) : static_cast<float>(static_cast<int8_t>(v));
  };
  ExpertFloat out;
  out.w13.resize(static_cast<size_t>(2 * I * H));
  out.w2.resize(static_cast<size_t>(H * I));
  parallel_rows(2 * I, [&](int64_t n) {
    for (int64_t k = 0; k < H; ++k) {
      float sc = 1.0f;
      switch (spec_.scheme.wscale) {
        case mk::kWTensor: sc = s13[n < I ? 0 : 1]; break;
        case mk::kWChannel: sc = s13[n]; break;
        case mk::kWBlock: {
          const int64_t half = n < I ? 0 : 1;
          const int64_t row = half * w.s13_rows + (n - half * I) / w.s13_bn;
          sc = s13[row * w.s13_cols + k / w.s13_bk];
          break;
        }
        default: break;
      }
      out.w13[n * H + k] = code(c13, n, k, H) * sc;
    }
  });
  parallel_rows(H, [&](int64_t n) {
    for (int64_t k = 0; k < I; ++k) {
      float sc = 1.0f;
      switch (spec_.scheme.wscale) {
        case mk::kWTensor: sc = s2[0]; break;
        case mk::kWChannel: sc = s2[n]; break;
        case mk::kWBlock: sc = s2[(n / w.s2_bn) * w.s2_cols + k / w.s2_bk]; break;
        default: break;
      }
      out.w2[n * I + k] = code(c2, n, k, I) * sc;
    }
  });
  return out;
}

}  // namespace moeq::gpu_harness
