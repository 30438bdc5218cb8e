// Element types and exact scalar conversions. The encoders share one bit-exact
// round-to-nearest-even routine so that fp8, f16 and bf16 agree with torch's casts without
// depending on the floating-point environment.
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace moeq {

namespace {

struct DTypeRow {
  DType dtype;
  const char* name;
  std::size_t size;
  uint8_t dl_code;
};

constexpr DTypeRow kRows[] = {
    {DType::BF16, "BF16", 2, kDLBfloat},
    {DType::F16, "F16", 2, kDLFloat},
    {DType::F32, "F32", 4, kDLFloat},
    {DType::F8_E4M3, "F8_E4M3", 1, MOEQ_DL_FLOAT8_E4M3FN},
    {DType::I8, "I8", 1, kDLInt},
    {DType::U8, "U8", 1, kDLUInt},
    {DType::I32, "I32", 4, kDLInt},
    {DType::I64, "I64", 8, kDLInt},
};

const DTypeRow& row(DType dtype) {
  for (const DTypeRow& r : kRows)
    if (r.dtype == dtype) return r;
  fail(MOEQ_STATUS_CODE_INTERNAL,
       "unknown moeq::DType value " + std::to_string(static_cast<int>(dtype)));
}

// v / 2^shift rounded to nearest, ties to even.
uint64_t shift_rne(uint64_t v, int shift) {
  if (shift <= 0) return v;
  if (shift >= 64) return 0;
  uint64_t kept = v >> shift;
  uint64_t rest = v & ((uint64_t{1} << shift) - 1);
  uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

// Rounds a finite, non-negative f32 (given as bits) to a binary float with `mant_bits`
// mantissa bits and exponent bias `bias`, RNE. Returns the magnitude code (exponent field
// and mantissa, no sign); a carry past the largest finite is left for the caller to map to
// inf or to saturate.
uint32_t round_magnitude(uint32_t abs_bits, int mant_bits, int bias) {
  int f32_exp = static_cast<int>(abs_bits >> 23);
  uint32_t mantissa = abs_bits & 0x7fffffu;
  int target_exp = f32_exp - 127 + bias;
  if (f32_exp != 0 && target_exp >= 1) {
    // Normal in the target: drop low mantissa bits; a carry bumps the exponent, as it must.
    uint64_t x = (static_cast<uint64_t>(target_exp) << 23) | mantissa;
    return static_cast<uint32_t>(shift_rne(x, 23 - mant_bits));
  }
  // Subnormal in the target (unit 2^(1-bias-mant_bits)); f32 subnormals have no hidden bit.
  uint64_t significand = f32_exp == 0 ? mantissa : (mantissa | 0x800000u);
  int effective_exp = f32_exp == 0 ? 1 : f32_exp;
  int shift = 150 + 1 - bias - mant_bits - effective_exp;
  // Rounding up to 2^mant_bits lands exactly on the smallest normal's code.
  return static_cast<uint32_t>(shift_rne(significand, shift));
}

bool is_nan_bits(uint32_t abs_bits) { return abs_bits > 0x7f800000u; }

float from_bits(uint32_t bits) { return std::bit_cast<float>(bits); }

// Round half to even without touching the FP environment.
double round_half_even(double v) {
  double r = std::round(v);  // halves away from zero
  if (std::abs(v - std::trunc(v)) == 0.5) r = 2.0 * std::round(v / 2.0);
  return r;
}

template <typename Int>
Int saturating_int(float value) {
  if (std::isnan(value)) return 0;
  double r = round_half_even(static_cast<double>(value));
  constexpr double lo = static_cast<double>(std::numeric_limits<Int>::min());
  // For 64-bit ints max() is not representable as double; 2^63 is the first value past it.
  constexpr double hi_excl = static_cast<double>(std::numeric_limits<Int>::max()) + 1.0;
  if (r <= lo) return std::numeric_limits<Int>::min();
  if (r >= hi_excl) return std::numeric_limits<Int>::max();
  return static_cast<Int>(r);
}

template <typename T>
T load(const void* data, std::size_t index) {
  T v;
  std::memcpy(&v, static_cast<const std::byte*>(data) + index * sizeof(T), sizeof(T));
  return v;
}

template <typename T>
void store(void* data, std::size_t index, T v) {
  std::memcpy(static_cast<std::byte*>(data) + index * sizeof(T), &v, sizeof(T));
}

}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const DTypeRow& r : kRows)
    if (name == r.name) return r.dtype;
  return std::nullopt;
}

const char* dtype_name(DType dtype) { return row(dtype).name; }

std::size_t dtype_size(DType dtype) { return row(dtype).size; }

DLDataType to_dl(DType dtype) {
  const DTypeRow& r = row(dtype);
  return DLDataType{r.dl_code, static_cast<uint8_t>(r.size * 8), 1};
}

std::optional<DType> from_dl(DLDataType dtype) {
  if (dtype.lanes != 1) return std::nullopt;
  for (const DTypeRow& r : kRows)
    if (r.dl_code == dtype.code && r.size * 8 == dtype.bits) return r.dtype;
  return std::nullopt;
}

bool is_float(DType dtype) {
  return dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32 ||
         dtype == DType::F8_E4M3;
}

float bf16_to_float(uint16_t bits) { return from_bits(static_cast<uint32_t>(bits) << 16); }

float f16_to_float(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  if (exp == 0x1f) return from_bits(sign | 0x7f800000u | (mant << 13));  // inf, NaN payload
  if (exp == 0) {
    float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -magnitude : magnitude;
  }
  return from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

float fp8_e4m3_to_float(uint8_t bits) {
  bool negative = bits & 0x80;
  int exp = (bits >> 3) & 0xf;
  int mant = bits & 0x7;
  float magnitude;
  if (exp == 0xf && mant == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();  // e4m3fn has no inf
  } else if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -9);
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mant), exp - 10);
  }
  return negative ? -magnitude : magnitude;
}

uint16_t float_to_bf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7fffffffu;
  // NaN: keep the top payload bits and force the quiet bit so it cannot become inf.
  if (is_nan_bits(abs_bits)) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  uint32_t code = round_magnitude(abs_bits, 7, 127);
  if (code > 0x7f80u) code = 0x7f80u;  // only reachable from inf itself; stays inf
  return static_cast<uint16_t>(sign | code);
}

uint16_t float_to_f16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7fffffffu;
  if (is_nan_bits(abs_bits))
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs_bits >> 13) & 0x3ffu));
  uint32_t code = round_magnitude(abs_bits, 10, 15);
  if (code >= 0x7c00u) code = 0x7c00u;  // overflow rounds to inf, as IEEE RNE does
  return static_cast<uint16_t>(sign | code);
}

uint8_t float_to_fp8_e4m3(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  uint32_t abs_bits = bits & 0x7fffffffu;
  if (is_nan_bits(abs_bits)) return static_cast<uint8_t>(sign | 0x7f);
  uint32_t code = round_magnitude(abs_bits, 3, 7);
  // 0x7f is NaN in e4m3fn; anything at or past it saturates to ±448 (0x7e).
  if (code > 0x7eu) code = 0x7eu;
  return static_cast<uint8_t>(sign | code);
}

// Both loops are select-only so the compiler can keep them branch-free (and vectorize them):
// fp8: for |v| >= 2^-6 (e4m3's smallest normal) the code is the f32 bits rounded to 3 mantissa
// bits (add 0x7ffff plus the kept lsb, shift by 20) with the exponent rebased from bias 127 to 7
// (minus 120 << 3); below it, adding 2^14 (whose ulp is 2^-9, e4m3's subnormal step) makes the
// FPU round to the subnormal code, read from the low bits. |v| <= 448 never carries past 0x7e.
// int8: adding and removing 1.5 * 2^23 rounds to an integer, half to even, for |v| < 2^22.
void quantize_fp8_e4m3(const float* in, std::size_t n, float scale, uint8_t* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const float v = in[i] / scale;
    const float c = v < -kFp8E4M3Max ? -kFp8E4M3Max : (v > kFp8E4M3Max ? kFp8E4M3Max : v);
    const uint32_t bits = std::bit_cast<uint32_t>(c);
    const uint32_t sign = (bits >> 24) & 0x80u;
    const uint32_t mag = bits & 0x7fffffffu;
    const uint32_t normal = ((mag + 0x7ffffu + ((mag >> 20) & 1u)) >> 20) - (120u << 3);
    const uint32_t subnormal = std::bit_cast<uint32_t>(std::bit_cast<float>(mag) + 16384.0f) - 0x46800000u;
    uint32_t code = mag >= 0x3c800000u ? normal : subnormal;  // 0x3c800000: 2^-6
    code = mag > 0x7f800000u ? 0x7fu : code;                    // NaN
    out[i] = static_cast<uint8_t>(sign | code);
  }
}

void quantize_int8(const float* in, std::size_t n, float scale, int8_t* out) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  for (std::size_t i = 0; i < n; ++i) {
    const float v = in[i] / scale;
    float c = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
    c = (c + kRound) - kRound;
    out[i] = static_cast<int8_t>(c == c ? c : 0.0f);
  }
}

namespace {

// (b & kMask) + (the lowest bit of kMask) carries into kTop only when every bit of kMask is set,
// so one OR over a chunk says whether it holds an all-ones exponent; only then is the chunk
// searched for the position.
template <class Bits, Bits kMask>
int64_t first_all_ones(const std::byte* p, std::size_t n) {
  constexpr Bits kLow = kMask & static_cast<Bits>(~kMask + 1);
  constexpr Bits kTop = static_cast<Bits>(kMask + kLow);
  constexpr std::size_t kChunk = 1024;
  auto bits = [&](std::size_t i) {
    Bits b;
    std::memcpy(&b, p + i * sizeof(Bits), sizeof b);
    return b;
  };
  for (std::size_t c0 = 0; c0 < n; c0 += kChunk) {
    const std::size_t c1 = std::min(n, c0 + kChunk);
    Bits acc = 0;
    for (std::size_t i = c0; i < c1; ++i) acc |= static_cast<Bits>((bits(i) & kMask) + kLow);
    if ((acc & kTop) == 0) continue;
    for (std::size_t i = c0; i < c1; ++i)
      if ((bits(i) & kMask) == kMask) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace

int64_t first_non_finite(const void* data, std::size_t n, DType dtype) {
  const auto* p = static_cast<const std::byte*>(data);
  switch (dtype) {
    case DType::F8_E4M3: return first_all_ones<uint8_t, 0x7f>(p, n);
    case DType::BF16: return first_all_ones<uint16_t, 0x7f80>(p, n);
    case DType::F16: return first_all_ones<uint16_t, 0x7c00>(p, n);
    case DType::F32: return first_all_ones<uint32_t, 0x7f800000u>(p, n);
    default: return -1;
  }
}

float load_as_float(const void* data, DType dtype, std::size_t index) {
  switch (dtype) {
    case DType::BF16: return bf16_to_float(load<uint16_t>(data, index));
    case DType::F16: return f16_to_float(load<uint16_t>(data, index));
    case DType::F32: return load<float>(data, index);
    case DType::F8_E4M3: return fp8_e4m3_to_float(load<uint8_t>(data, index));
    case DType::I8: return static_cast<float>(load<int8_t>(data, index));
    case DType::U8: return static_cast<float>(load<uint8_t>(data, index));
    case DType::I32: return static_cast<float>(load<int32_t>(data, index));
    case DType::I64: return static_cast<float>(load<int64_t>(data, index));
  }
  fail(MOEQ_STATUS_CODE_INTERNAL, "load_as_float: unknown dtype");
}

void store_from_float(void* data, DType dtype, std::size_t index, float value) {
  switch (dtype) {
    case DType::BF16: return store(data, index, float_to_bf16(value));
    case DType::F16: return store(data, index, float_to_f16(value));
    case DType::F32: return store(data, index, value);
    case DType::F8_E4M3: return store(data, index, float_to_fp8_e4m3(value));
    case DType::I8: return store(data, index, saturating_int<int8_t>(value));
    case DType::U8: return store(data, index, saturating_int<uint8_t>(value));
    case DType::I32: return store(data, index, saturating_int<int32_t>(value));
    case DType::I64: return store(data, index, saturating_int<int64_t>(value));
  }
  fail(MOEQ_STATUS_CODE_INTERNAL, "store_from_float: unknown dtype");
}

}  // namespace moeq
