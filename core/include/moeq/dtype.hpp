// Element types of checkpoints and parameters, and exact scalar conversions.
#pragma once
#include <moeq/abi.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moeq {

enum class DType { BF16, F16, F32, F8_E4M3, I8, U8, I32, I64 };

// Safetensors spelling ("BF16", "F8_E4M3", ...); nullopt for anything else.
std::optional<DType> parse_dtype(std::string_view name);
const char* dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);
DLDataType to_dl(DType dtype);
std::optional<DType> from_dl(DLDataType dtype);
bool is_float(DType dtype);  // BF16, F16, F32, F8_E4M3

// Exact decodes.
float bf16_to_float(uint16_t bits);
float f16_to_float(uint16_t bits);
float fp8_e4m3_to_float(uint8_t bits);
// Round-to-nearest-even encodes. fp8: values beyond ±448 saturate to ±448, NaN stays NaN
// (0x7f); callers clamp first as the quantization primitives do.
uint16_t float_to_bf16(float value);
uint16_t float_to_f16(float value);
uint8_t float_to_fp8_e4m3(float value);

// Bulk quantization of a row, the exact equals of the scalar encoders, branch-free (about 5x
// faster than calling them per element):
//   quantize_fp8_e4m3: out[i] = float_to_fp8_e4m3(clamp(in[i] / scale, -448, 448)); a NaN keeps
//                      its sign and becomes 0x7f, as there.
//   quantize_int8:     out[i] = clamp(round_half_even(in[i] / scale), -127, 127); a NaN gives 0
//                      (callers refuse non-finite weights first).
// The division is the kernels' (w / s, never w * (1/s)); default rounding mode assumed.
void quantize_fp8_e4m3(const float* in, std::size_t n, float scale, uint8_t* out);
void quantize_int8(const float* in, std::size_t n, float scale, int8_t* out);

// The index of the first NaN or infinite element of `n` contiguous elements of `dtype` at
// `data` (any alignment), or -1 when every one is finite: F8_E4M3 codes 0x7f/0xff (e4m3fn has
// no infinity), BF16/F16/F32 all-ones exponents; integer dtypes never. A vectorized pass.
int64_t first_non_finite(const void* data, std::size_t n, DType dtype);

// Value of element `index` of a contiguous buffer of `dtype` as float (I32/I64/I8/U8 too).
float load_as_float(const void* data, DType dtype, std::size_t index);
// Store `value` into element `index`, converting with the encoders above (ints round).
void store_from_float(void* data, DType dtype, std::size_t index, float value);

constexpr float kFp8E4M3Max = 448.0f;

}  // namespace moeq
