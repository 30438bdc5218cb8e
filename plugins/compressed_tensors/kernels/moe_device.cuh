// Device helpers of the MoE kernels: bf16/fp8 conversions, async copies, ldmatrix, tensor-core
// mma and warp reductions, written as inline PTX so that the kernels need no toolkit header
// (NVRTC compiles them with no include path at all).
#pragma once
#include "moe_args.cuh"

namespace moeq_kernels {

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

constexpr float kFp8Max = 448.0f;

// ------------------------------------------------------------------ conversions

__device__ __forceinline__ float bf16_to_f32(u16 v) { return __uint_as_float(static_cast<u32>(v) << 16); }

// Two floats to bf16x2, round to nearest even: `lo` lands in the low half.
__device__ __forceinline__ u32 f32x2_to_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ u16 f32_to_bf16(float v) { return static_cast<u16>(f32x2_to_bf16x2(v, 0.0f) & 0xffffu); }

#if __CUDA_ARCH__ >= 890
// Two floats to e4m3 codes, round to nearest even, saturating to +-448: `lo` in the low byte.
__device__ __forceinline__ u16 f32x2_to_e4m3x2(float lo, float hi) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
#endif

// q = e4m3(clamp(x / s, -448, 448)): the division (not a multiply by 1/s) is what the
// reference and vLLM's per-token kernels do (docs/MOE_SEMANTICS.md §5).
#if __CUDA_ARCH__ >= 890
__device__ __forceinline__ u16 quant2(float a, float b, float s) { return f32x2_to_e4m3x2(a / s, b / s); }
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

// ------------------------------------------------------------------ async copies

// Programmatic dependent launch (sm_90 on; a no-op before): every kernel of the launch
// sequence runs this first. The trigger lets the next kernel of the sequence be scheduled as
// soon as every block of this one has started; the wait holds this block until the kernels
// before it have finished and their memory is visible, so nothing below it can race them (the
// host launches the sequence's first kernel without the attribute, in plain stream order).
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ u32 smem_u32(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, bypassing L1; `valid == false` writes zeros (and reads nothing).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ------------------------------------------------------------------ tensor cores

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D += A (16x16 bf16, row) * B (16x8 bf16, col), fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float* d, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#if __CUDA_ARCH__ >= 890
// D += A (16x32 e4m3, row) * B (32x8 e4m3, col), fp32 accumulate.
__device__ __forceinline__ void mma_e4m3_16832(float* d, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

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
  // x * sigmoid(x) with the fast exponential and reciprocal (a few ulp, far inside the
  // kernels' tolerances): no IEEE division and no branch in the GEMM1 epilogue, which runs it
  // once per output. Overflow is harmless: exp(-x) = inf gives 1 / inf = 0 and x * 0 = -0.
  return x * __frcp_rn(1.0f + __expf(-x));
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
