// Asynchronous global -> shared copies (cp.async, sm_80 on) as inline PTX (plugin SDK device
// header).
#pragma once
#include "moeq/sdk/device/types.cuh"

namespace moeq::sdk::device {

__device__ __forceinline__ u32 smem_u32(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, bypassing L1; `valid == false` writes zeros (and reads nothing).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
// The same, also asking L2 to fetch the whole 256-byte block around src (a row read 128 bytes
// a K tile then has the next tile's bytes in L2 when their copy is issued).
__device__ __forceinline__ void cp_async16_l2_256(u32 dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace moeq::sdk::device
