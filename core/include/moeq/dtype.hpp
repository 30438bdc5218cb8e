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

// Value of element `index` of a contiguous buffer of `dtype` as float (I32/I64/I8/U8 too).
float load_as_float(const void* data, DType dtype, std::size_t index);
// Store `value` into element `index`, converting with the encoders above (ints round).
void store_from_float(void* data, DType dtype, std::size_t index, float value);

constexpr float kFp8E4M3Max = 448.0f;

}  // namespace moeq
