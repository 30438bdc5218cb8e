// Scalar conversions: exhaustive round trips, ties to even, saturation, and agreement with
// independent references (nearest-value search for fp8, the carry trick for bf16, the
// compiler's _Float16 for f16).
#include <moeq/dtype.hpp>
#include <moeq/stream_copy.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace moeq;

namespace {

bool is_fp8_nan(int code) { return (code & 0x7f) == 0x7f; }

// Reference fp8 encoder: the nearest finite value by search, ties to the even code,
// saturating past 448. Independent of the bit manipulation under test.
uint8_t fp8_by_search(float x) {
  float magnitude = std::min(std::fabs(x), kFp8E4M3Max);
  int best = 0;
  for (int c = 1; c <= 0x7e; ++c) {
    double d = std::fabs(double(fp8_e4m3_to_float(uint8_t(c))) - magnitude);
    double best_d = std::fabs(double(fp8_e4m3_to_float(uint8_t(best))) - magnitude);
    if (d < best_d || (d == best_d && (c & 1) == 0)) best = c;
  }
  return uint8_t((std::signbit(x) ? 0x80 : 0) | best);
}

uint16_t bf16_by_carry(float x) {
  uint32_t bits = std::bit_cast<uint32_t>(x);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace

TEST_CASE("fp8 e4m3fn: every finite code decodes and encodes back to itself") {
  for (int code = 0; code < 256; ++code) {
    if (is_fp8_nan(code)) continue;
    float value = fp8_e4m3_to_float(uint8_t(code));
    INFO("code " << code << " value " << value);
    CHECK(std::isfinite(value));
    CHECK(int(float_to_fp8_e4m3(value)) == code);
  }
}

TEST_CASE("fp8 e4m3fn: 0x7f and 0xff are NaN, NaN encodes to NaN with its sign") {
  CHECK(std::isnan(fp8_e4m3_to_float(0x7f)));
  CHECK(std::isnan(fp8_e4m3_to_float(0xff)));
  float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(float_to_fp8_e4m3(nan) == 0x7f);
  CHECK(float_to_fp8_e4m3(-nan) == 0xff);
}

TEST_CASE("fp8 e4m3fn: known values") {
  CHECK(fp8_e4m3_to_float(0x7e) == 448.0f);
  CHECK(float_to_fp8_e4m3(448.0f) == 0x7e);
  CHECK(fp8_e4m3_to_float(0xfe) == -448.0f);
  CHECK(fp8_e4m3_to_float(0x01) == 0.001953125f);  // smallest subnormal, 2^-9
  CHECK(float_to_fp8_e4m3(0.001953125f) == 0x01);
  CHECK(fp8_e4m3_to_float(0x07) == 7 * 0.001953125f);  // largest subnormal
  CHECK(fp8_e4m3_to_float(0x08) == 0.015625f);  // smallest normal, 2^-6
  CHECK(fp8_e4m3_to_float(0x38) == 1.0f);
  CHECK(float_to_fp8_e4m3(1.0f) == 0x38);
  CHECK(float_to_fp8_e4m3(-2.0f) == 0xc0);
  CHECK(fp8_e4m3_to_float(0x80) == 0.0f);
  CHECK(std::signbit(fp8_e4m3_to_float(0x80)));
  CHECK(float_to_fp8_e4m3(-0.0f) == 0x80);
}

TEST_CASE("fp8 e4m3fn: midpoints between neighbours round to the even code") {
  for (int c = 0; c < 0x7e; ++c) {
    float lo = fp8_e4m3_to_float(uint8_t(c));
    float hi = fp8_e4m3_to_float(uint8_t(c + 1));
    float mid = (lo + hi) / 2;  // exact: fp8 values have few bits
    int even = (c % 2 == 0) ? c : c + 1;
    INFO("between codes " << c << " and " << c + 1 << ", midpoint " << mid);
    CHECK(int(float_to_fp8_e4m3(mid)) == even);
    CHECK(int(float_to_fp8_e4m3(-mid)) == (0x80 | even));
    CHECK(int(float_to_fp8_e4m3(std::nextafter(mid, 0.0f))) == c);
    CHECK(int(float_to_fp8_e4m3(std::nextafter(mid, 1000.0f))) == c + 1);
  }
  CHECK(float_to_fp8_e4m3(std::ldexp(1.0f, -10)) == 0x00);    // half the smallest subnormal
  CHECK(float_to_fp8_e4m3(3 * std::ldexp(1.0f, -10)) == 0x02);  // 1.5 subnormal units
}

TEST_CASE("fp8 e4m3fn: values beyond 448 saturate, infinities too") {
  CHECK(float_to_fp8_e4m3(449.0f) == 0x7e);
  CHECK(float_to_fp8_e4m3(464.0f) == 0x7e);  // tie between 448 and the NaN slot
  CHECK(float_to_fp8_e4m3(480.0f) == 0x7e);
  CHECK(float_to_fp8_e4m3(1e30f) == 0x7e);
  CHECK(float_to_fp8_e4m3(-1e30f) == 0xfe);
  CHECK(float_to_fp8_e4m3(std::numeric_limits<float>::infinity()) == 0x7e);
  CHECK(float_to_fp8_e4m3(-std::numeric_limits<float>::infinity()) == 0xfe);
  CHECK(float_to_fp8_e4m3(std::numeric_limits<float>::max()) == 0x7e);
}

TEST_CASE("fp8 e4m3fn: encoder agrees with a nearest-value search on random floats") {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> wide(-600.0f, 600.0f);
  std::uniform_real_distribution<float> small(-0.03f, 0.03f);  // subnormal neighbourhood
  for (int i = 0; i < 20000; ++i) {
    float x = (i % 2) ? wide(rng) : small(rng);
    INFO("x = " << x);
    CHECK(int(float_to_fp8_e4m3(x)) == int(fp8_by_search(x)));
  }
  // f32 subnormals are far below fp8's smallest subnormal.
  CHECK(float_to_fp8_e4m3(std::numeric_limits<float>::denorm_min()) == 0x00);
}

TEST_CASE("bf16: every non-NaN code round-trips, random floats match the carry trick") {
  for (uint32_t code = 0; code < 0x10000; ++code) {
    float v = bf16_to_float(uint16_t(code));
    if (std::isnan(v)) continue;
    REQUIRE(float_to_bf16(v) == code);
  }
  std::mt19937 rng(99);
  for (int i = 0; i < 100000; ++i) {
    float x = std::bit_cast<float>(uint32_t(rng()));
    if (std::isnan(x)) continue;
    INFO("bits " << std::bit_cast<uint32_t>(x));
    CHECK(float_to_bf16(x) == bf16_by_carry(x));
  }
}

TEST_CASE("bf16: ties to even, overflow to inf, NaN stays NaN") {
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie, 1.0 is even
  CHECK(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie, rounds up
  CHECK(float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)) == 0x3f81);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);
  CHECK(float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xff80);
  uint16_t nan = float_to_bf16(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(bf16_to_float(nan)));
  // A signalling NaN whose payload lives only in the low bits must not become inf.
  uint16_t snan = float_to_bf16(std::bit_cast<float>(0x7f800001u));
  CHECK(std::isnan(bf16_to_float(snan)));
}

TEST_CASE("f16: every non-NaN code round-trips") {
  for (uint32_t code = 0; code < 0x10000; ++code) {
    float v = f16_to_float(uint16_t(code));
    if (std::isnan(v)) continue;
    REQUIRE(float_to_f16(v) == code);
  }
}

TEST_CASE("f16: known values, ties to even, overflow to inf, subnormals") {
  CHECK(f16_to_float(0x3c00) == 1.0f);
  CHECK(f16_to_float(0x7bff) == 65504.0f);
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(float_to_f16(65519.0f) == 0x7bff);
  CHECK(float_to_f16(65520.0f) == 0x7c00);  // tie between 65504 and the next step: inf
  CHECK(float_to_f16(-1e9f) == 0xfc00);
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);    // tie with zero
  CHECK(float_to_f16(3 * std::ldexp(1.0f, -25)) == 0x0002);  // tie, rounds to even
  CHECK(float_to_f16(std::ldexp(1023.5f, -24)) == 0x0400);  // tie up into the first normal
  uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(f16_to_float(nan)));
  CHECK(std::isinf(f16_to_float(0x7c00)));
}

#ifdef __FLT16_MAX__
TEST_CASE("f16: encoder agrees with the compiler's _Float16 conversion") {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    float x = std::bit_cast<float>(uint32_t(rng()));
    if (std::isnan(x)) continue;
    uint16_t expected = std::bit_cast<uint16_t>(static_cast<_Float16>(x));
    INFO("bits " << std::bit_cast<uint32_t>(x));
    CHECK(float_to_f16(x) == expected);
  }
}
#endif

TEST_CASE("dtype names, sizes and DLPack codes") {
  const DType all[] = {DType::BF16, DType::F16, DType::F32, DType::F8_E4M3,
                       DType::I8,   DType::U8,  DType::I32, DType::I64};
  for (DType d : all) {
    CHECK(parse_dtype(dtype_name(d)) == d);
    CHECK(from_dl(to_dl(d)) == d);
    CHECK(to_dl(d).bits == dtype_size(d) * 8);
    CHECK(to_dl(d).lanes == 1);
  }
  CHECK(!parse_dtype("F8_E5M2").has_value());
  CHECK(!parse_dtype("bf16").has_value());
  CHECK(to_dl(DType::F8_E4M3).code == MOEQ_DL_FLOAT8_E4M3FN);
  CHECK(to_dl(DType::BF16).code == kDLBfloat);
  CHECK(to_dl(DType::F16).code == kDLFloat);
  CHECK(to_dl(DType::I64).code == kDLInt);
  CHECK(to_dl(DType::U8).code == kDLUInt);
  CHECK(!from_dl(DLDataType{kDLFloat, 32, 4}).has_value());
  CHECK(!from_dl(DLDataType{kDLFloat, 64, 1}).has_value());
  CHECK(dtype_size(DType::I64) == 8);
  CHECK(is_float(DType::F8_E4M3));
  CHECK(!is_float(DType::I32));
}

TEST_CASE("load_as_float / store_from_float convert through the encoders, ints round") {
  std::vector<std::byte> buf(64);
  store_from_float(buf.data(), DType::F8_E4M3, 3, 1000.0f);
  CHECK(load_as_float(buf.data(), DType::F8_E4M3, 3) == 448.0f);
  store_from_float(buf.data(), DType::BF16, 5, 1.0f + std::ldexp(1.0f, -8));
  CHECK(load_as_float(buf.data(), DType::BF16, 5) == 1.0f);
  store_from_float(buf.data(), DType::I8, 0, 300.0f);
  CHECK(load_as_float(buf.data(), DType::I8, 0) == 127.0f);
  store_from_float(buf.data(), DType::I8, 1, -2.5f);
  CHECK(load_as_float(buf.data(), DType::I8, 1) == -2.0f);
  store_from_float(buf.data(), DType::U8, 2, -1.0f);
  CHECK(load_as_float(buf.data(), DType::U8, 2) == 0.0f);
  store_from_float(buf.data(), DType::I32, 3, 3.5f);
  CHECK(load_as_float(buf.data(), DType::I32, 3) == 4.0f);
  store_from_float(buf.data(), DType::I64, 4, -1e30f);
  int64_t min64;
  std::memcpy(&min64, buf.data() + 32, 8);
  CHECK(min64 == std::numeric_limits<int64_t>::min());
}

namespace {

// The scalar definitions the bulk encoders must equal.
uint8_t fp8_scalar(float x, float s) {
  const float v = x / s;
  return float_to_fp8_e4m3(std::isnan(v) ? v : std::clamp(v, -kFp8E4M3Max, kFp8E4M3Max));
}
int8_t int8_scalar(float x, float s) {
  const float v = x / s;
  return std::isnan(v) ? int8_t{0} : static_cast<int8_t>(std::clamp(std::nearbyint(v), -127.0f, 127.0f));
}

// Hard cases for a rounding encoder: every representable value, the midpoints between
// neighbours and the floats either side of them, both signs; special values; a stride through
// every bit pattern up to `top`; random bit patterns over the whole f32 space.
std::vector<float> hard_inputs(const std::vector<float>& grid, uint32_t top) {
  std::vector<float> in;
  for (size_t k = 0; k + 1 < grid.size(); ++k) {
    const float a = grid[k], b = grid[k + 1], mid = (a + b) / 2;
    for (float v : {a, mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY), b}) {
      in.push_back(v);
      in.push_back(-v);
    }
  }
  for (float v : {0.0f, -0.0f, INFINITY, -INFINITY, std::nanf(""), -std::nanf(""), 1e30f, -1e30f,
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min()})
    in.push_back(v);
  for (uint64_t b = 0; b <= top; b += 389) {
    in.push_back(std::bit_cast<float>(static_cast<uint32_t>(b)));
    in.push_back(-std::bit_cast<float>(static_cast<uint32_t>(b)));
  }
  std::mt19937 rng(20261205);
  for (int i = 0; i < 1'000'000; ++i) in.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  return in;
}

// The bulk encoder equals the scalar definition on the hard inputs over `grid` (scale 1), then
// on seeded normal rows with each scale, as the quantizers use it.
template <class Code>
void check_bulk_equals_scalar(const std::vector<float>& grid, uint32_t top, uint32_t seed,
                              std::initializer_list<float> scales,
                              void (*bulk)(const float*, std::size_t, float, Code*), Code (*scalar)(float, float)) {
  const std::vector<float> in = hard_inputs(grid, top);
  std::vector<Code> got(in.size());
  bulk(in.data(), in.size(), 1.0f, got.data());
  size_t wrong = 0;
  for (size_t i = 0; i < in.size(); ++i)
    if (got[i] != scalar(in[i], 1.0f) && wrong++ < 5)
      FAIL_CHECK("x = " << in[i] << " (bits " << std::bit_cast<uint32_t>(in[i]) << "): bulk " << int(got[i])
                        << ", scalar " << int(scalar(in[i], 1.0f)));
  CHECK(wrong == 0);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(100'000);
  for (float& v : w) v = normal(rng);
  for (float s : scales) {
    CAPTURE(s);
    std::vector<Code> q(w.size());
    bulk(w.data(), w.size(), s, q.data());
    size_t diff = 0;
    for (size_t i = 0; i < w.size(); ++i) diff += q[i] != scalar(w[i], s);
    CHECK(diff == 0);
  }
}

}  // namespace

TEST_CASE("bulk fp8 e4m3 quantization equals the scalar encoder on every hard case and random data") {
  std::vector<float> grid;  // every finite non-negative e4m3 value, ascending
  for (int c = 0; c <= 0x7e; ++c) grid.push_back(fp8_e4m3_to_float(static_cast<uint8_t>(c)));
  check_bulk_equals_scalar<uint8_t>(grid, 0x43e00000u /* 448 */, 7, {1.0f / 448, 0.37f, 3.9f / 448, 1e-3f, 3.1e4f},
                                    quantize_fp8_e4m3, fp8_scalar);
}

TEST_CASE("bulk int8 quantization equals round-half-even and clamp on every hard case and random data") {
  std::vector<float> grid;
  for (int k = -140; k <= 140; ++k) grid.push_back(static_cast<float>(k));
  check_bulk_equals_scalar<int8_t>(grid, 0x43100000u /* 144 */, 8, {1.0f / 127, 0.021f, 4.2f / 127, 1e-3f, 3.1e4f},
                                   quantize_int8, int8_scalar);
  // Exact halves go to the even neighbour; the clamp is symmetric (never -128).
  const float halves[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, -200.0f, 200.0f};
  int8_t h[10];
  quantize_int8(halves, 10, 1.0f, h);
  CHECK(std::vector<int>(h, h + 10) == std::vector<int>{0, 2, 2, 0, -2, -2, 126, -126, -127, 127});
}

TEST_CASE("fp8 quantization: one reciprocal and two fmas give the division's codes (the fused GEMM1 epilogue)") {
  // The warp-specialized GEMM1 that requantizes h in its epilogue divides by each group's scale
  // as y = RN(1/s), q = RN(x * y), RN(q + RN-exact(x - q * s) * y) (ScaleDivider in
  // moe_device.cuh). Over the scales quantization makes (>= 1e-10 / 448) and |x| <= 448 s, the
  // quotient equals x / s wherever |x / s| >= 2^-12, and the e4m3 code everywhere.
  std::mt19937_64 rng(20261206);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  int64_t checked = 0, quotient_diffs_above = 0, code_diffs = 0;
  auto one = [&](float x, float s) {
    const float y = 1.0f / s;
    const float q = x * y;
    const float r = std::fma(-q, s, x);
    const float fast = std::fma(r, y, q), exact = x / s;
    ++checked;
    if (std::fabs(exact) >= std::ldexp(1.0f, -12) && std::memcmp(&fast, &exact, 4) != 0) ++quotient_diffs_above;
    if (float_to_fp8_e4m3(std::clamp(fast, -448.0f, 448.0f)) != float_to_fp8_e4m3(std::clamp(exact, -448.0f, 448.0f)))
      ++code_diffs;
  };
  for (int g = 0; g < 40000; ++g) {  // groups: a maximum over 40 binades, values below it
    const float amax = std::ldexp(std::fabs(unit(rng)) + 1e-3f, static_cast<int>(rng() % 80) - 40);
    const float s = std::max(amax, 1e-10f) / 448.0f;
    for (int i = 0; i < 32; ++i) one(unit(rng) * amax * std::ldexp(1.0f, -static_cast<int>(rng() % 24)), s);
  }
  for (int i = 0; i < 2000000; ++i) {  // arbitrary bit patterns inside the same bounds
    const uint32_t xb = static_cast<uint32_t>(rng()), sb = static_cast<uint32_t>(rng()) & 0x7fffffffu;
    float x, s;
    std::memcpy(&x, &xb, 4);
    std::memcpy(&s, &sb, 4);
    if (!std::isfinite(x) || !std::isfinite(s) || s < 1e-10f / 448.0f || std::fabs(x) > 448.0f * s) continue;
    if (!std::isfinite(1.0f / s) || 1.0f / s == 0.0f) continue;  // ScaleDivider divides there
    one(x, s);
  }
  CAPTURE(checked);
  CHECK(checked > 2000000);
  CHECK(quotient_diffs_above == 0);
  CHECK(code_diffs == 0);
}

// Staging copies (stream_copy.hpp): non-temporal AVX2 stores where the CPU has them, with the
// NaN/Inf check riding on the loads. Against memcpy and first_non_finite: every size from a few
// bytes to past several 64 KiB blocks, source and destination at every offset of a vector (the
// destination on an element), non-finite elements in the head, the vectors, a block boundary and
// the tail, two in one copy (the first is the one named), for each float dtype and int8.
TEST_CASE("stream_copy and stream_copy_checking equal memcpy and first_non_finite") {
  MESSAGE("non-temporal AVX2 copies: " << (stream_copy_accelerated() ? "yes" : "no (memcpy)"));
  std::mt19937 rng(99);
  struct Kind {
    DType dtype;
    std::vector<uint32_t> bad;  // element patterns that are not finite
  };
  const std::vector<Kind> kinds = {{DType::F8_E4M3, {0x7f, 0xff}},
                                   {DType::BF16, {0x7fc0, 0xff80, 0x7f80}},
                                   {DType::F16, {0x7c00, 0xfe00}},
                                   {DType::F32, {0x7f800000u, 0xffc00000u}},
                                   {DType::I8, {0x7f}}};
  const std::vector<std::size_t> sizes = {1, 7, 31, 32, 33, 1000, 4095, 4096, 4097, 65536, 65536 + 96, 200000, 300001};
  int checked = 0;
  for (const Kind& k : kinds) {
    const std::size_t es = dtype_size(k.dtype);
    for (std::size_t n : sizes) {
      for (std::size_t so : {std::size_t{0}, std::size_t{1}, std::size_t{13}}) {
        for (std::size_t dofs : {std::size_t{0}, es, 8 * es, 31 / es * es}) {
          CAPTURE(dtype_name(k.dtype));
          CAPTURE(n);
          CAPTURE(so);
          CAPTURE(dofs);
          // Source elements finite (small magnitudes), misaligned by `so` bytes.
          std::vector<std::byte> src_buf(n * es + 64), dst_buf(n * es + 128, std::byte{0}), want(n * es);
          std::byte* src = src_buf.data() + so;
          for (std::size_t i = 0; i < n; ++i) {
            const uint32_t v = es == 1 ? (rng() % 0x70) : es == 2 ? (0x3c00 + rng() % 0x300) : (0x3f000000u + rng() % 0x100000);
            std::memcpy(src + i * es, &v, es);
          }
          // Destination aligned to 32, then offset by whole elements.
          auto* base = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(dst_buf.data()) + 31) / 32 * 32);
          std::byte* dst = base + dofs;
          std::memcpy(want.data(), src, n * es);
          stream_copy(dst, src, n * es);
          CHECK(std::memcmp(dst, want.data(), n * es) == 0);
          std::memset(dst, 0, n * es);
          CHECK(stream_copy_checking(dst, src, static_cast<int64_t>(n), k.dtype) ==
                first_non_finite(src, n, k.dtype));
          CHECK(std::memcmp(dst, want.data(), n * es) == 0);
          // Two non-finite elements: the first is named, wherever it falls.
          for (std::size_t at : {std::size_t{0}, n / 3, n / 2, n - 1}) {
            const std::size_t later = std::min(n - 1, at + 1 + rng() % 4000);
            std::vector<std::byte> s2(src_buf);
            std::byte* s = s2.data() + so;
            std::memcpy(s + later * es, &k.bad[rng() % k.bad.size()], es);
            std::memcpy(s + at * es, &k.bad[rng() % k.bad.size()], es);
            const int64_t got = stream_copy_checking(dst, s, static_cast<int64_t>(n), k.dtype);
            CHECK(got == first_non_finite(s, n, k.dtype));
            CHECK(got == (k.dtype == DType::I8 ? -1 : static_cast<int64_t>(at)));
            CHECK(std::memcmp(dst, s, n * es) == 0);
            ++checked;
          }
        }
      }
    }
  }
  CHECK(checked > 1000);
}
