// Device helpers of the MoE kernels: the SDK's device headers (conversions, async copies,
// ldmatrix and tensor-core mma as inline PTX, so that the kernels need no toolkit header and
// NVRTC compiles them with no include path at all), the launch-sequence entry, warp reductions
// and the activation scales.
#pragma once
#include "moe_args.cuh"
#include "moeq/sdk/device/convert.cuh"
#include "moeq/sdk/device/copy.cuh"
#include "moeq/sdk/device/griddep.cuh"
#include "moeq/sdk/device/mma.cuh"

namespace moeq_kernels {

using namespace ::moeq::sdk::device;

constexpr float kFp8Max = 448.0f;

// q = e4m3(clamp(x / s, -448, 448)): the division (not a multiply by 1/s) is what the
// reference and vLLM's per-token kernels do (docs/MOE_SEMANTICS.md §5).
#if __CUDA_ARCH__ >= 890
__device__ __forceinline__ u16 quant2(float a, float b, float s) { return f32x2_to_e4m3x2(a / s, b / s); }
#endif

// x / s correctly rounded, for many x of one scale s, in three instructions instead of an IEEE
// division: y = RN(1/s) once, then q = RN(x * y), the exact residual r = x - q * s (one fma) and
// RN(q + r * y), which is RN(x / s) by Markstein's theorem (y within half an ulp of 1/s, q within
// one ulp of x / s) wherever r does not underflow. Quantization scales are >= 1e-10 / 448 and
// |x| <= 448 s, where that holds for every |x / s| >= 2^-12 (checked on the host over 4e7
// random pairs), far below the smallest e4m3 step, so the codes equal quant2's. A scale whose
// reciprocal is 0 or not finite (an infinite or NaN maximum; the scales' floor keeps 1/s below
// 3e38 otherwise) takes q = x * y itself, which is x / s there to the bit: x * 0 = ±0 with x's
// sign for x / inf (NaN for x = ±inf, as the division), NaN for a NaN scale (checked on the host
// for every class of x). A select, not a branch: a branch a value put each quotient in a branch
// region of its own, so that the epilogue's quotients could not interleave.
struct ScaleDivider {
  float s, y;
  bool exact;
  __device__ __forceinline__ explicit ScaleDivider(float scale) : s(scale), y(__frcp_rn(scale)) {
    exact = !(y > 0.0f && y < 3.0e38f);
  }
  __device__ __forceinline__ float operator()(float x) const {
    const float q = __fmul_rn(x, y);
    const float v = __fmaf_rn(__fmaf_rn(-q, s, x), y, q);
    return exact ? q : v;
  }
};

// Programmatic dependent launch (sm_90 on; a no-op before): every kernel of the launch
// sequence runs this first. The trigger lets the next kernel of the sequence be scheduled as
// soon as every block of this one has started; the wait holds this block until the kernels
// before it have finished and their memory is visible, so nothing below it can race them (the
// host launches the sequence's first kernel without the attribute, in plain stream order).
__device__ __forceinline__ void pdl_enter() {
  griddep_launch_dependents();
  griddep_wait();
}

// ------------------------------------------------------------------ reductions

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over aligned groups of `width` lanes (a power of two <= 32).
__device__ __forceinline__ float group_max(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float silu(float x) {
  // x * sigmoid(x) from the special-function unit's approximate 2^x and 1/x (ex2.approx.ftz,
  // rcp.approx.ftz: a few ulp, far inside the kernels' tolerances), five instructions and no
  // branch. GEMM1's epilogue runs it once per output with the tensor cores idle, so its length
  // is the epilogue's: __expf's denormal scaling and __frcp_rn's correctly rounded reciprocal
  // (a Newton step and a slow path behind a branch) made it about 20 instructions an output,
  // each depending on the one before. Overflow is harmless: 2^(-x log2 e) = inf gives
  // 1 / inf = 0 and x * 0 = -0.
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
  return x * r;
}

// Per-token scale, docs/MOE_SEMANTICS.md §5: max(amax / 448, 1 / (448 * 512)).
__device__ __forceinline__ float token_scale(float amax) {
  return fmaxf(amax / kFp8Max, 1.0f / (kFp8Max * 512.0f));
}
// Per-group scale: max(amax, 1e-10) / 448.
__device__ __forceinline__ float group_scale(float amax) { return fmaxf(amax, 1e-10f) / kFp8Max; }
// Dynamic per-tensor scale: amax / 448 (1 for an all-zero tensor, whose codes are 0 anyway).
__device__ __forceinline__ float tensor_scale(float amax) { return amax > 0.0f ? amax / kFp8Max : 1.0f; }

}  // namespace moeq_kernels
