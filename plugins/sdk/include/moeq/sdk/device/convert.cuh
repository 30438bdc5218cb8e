// bf16, e4m3 (FP8) and int8 conversions as inline PTX (plugin SDK device header).
#pragma once
#include "moeq/sdk/device/types.cuh"

namespace moeq::sdk::device {

__device__ __forceinline__ float bf16_to_f32(u16 v) { return __uint_as_float(static_cast<u32>(v) << 16); }

// Two floats to bf16x2, round to nearest even: `lo` lands in the low half.
__device__ __forceinline__ u32 f32x2_to_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ u16 f32_to_bf16(float v) { return static_cast<u16>(f32x2_to_bf16x2(v, 0.0f) & 0xffffu); }

#if __CUDA_ARCH__ >= 890
// Two floats to e4m3 codes, round to nearest even, saturating to +-448: `lo` in the low byte
// (sm_89 on).
__device__ __forceinline__ u16 f32x2_to_e4m3x2(float lo, float hi) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
#endif

// Four int8 codes (one 32-bit word, byte 0 first) to two bf16x2 words, exactly: each byte
// is rebuilt as the float 2^23 + (b + 128) and shifted back by 2^23 + 128.
__device__ __forceinline__ void i8x4_to_bf16x2x2(u32 v, u32& lo, u32& hi) {
  const u32 u = v ^ 0x80808080u;
  const float f0 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7540)) - 8388736.0f;
  const float f1 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7541)) - 8388736.0f;
  const float f2 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7542)) - 8388736.0f;
  const float f3 = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7543)) - 8388736.0f;
  lo = f32x2_to_bf16x2(f0, f1);
  hi = f32x2_to_bf16x2(f2, f3);
}

}  // namespace moeq::sdk::device
