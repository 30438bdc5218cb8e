// Hopper bulk tensor copies and mbarriers (plugin SDK device header): mbarrier init, arrive
// (plain, with an expected byte count, and as the completion of a thread's earlier cp.async),
// the parity wait, 2-D and 4-D TMA loads into shared memory that complete on an mbarrier (the
// map: a CUtensorMap the host encoded, passed as a __grid_constant__ parameter), and setmaxnreg
// for warp-specialized kernels, and the cluster operations of blocks that share a TMA load
// (multicast). The expected-bytes arrival and the wait exist from sm_90, the TMA, cluster and
// setmaxnreg wrappers only when compiling for sm_90a.
#pragma once
#include "moeq/sdk/device/types.cuh"

namespace moeq::sdk::device {

__device__ __forceinline__ void mbar_init(u32 bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// The arrival of this thread, made when all its earlier cp.async have completed (counted in the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void cp_async_mbar_arrive(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The arrival of this thread, which also expects `bytes` more from asynchronous copies.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// The parity wait's loop around one try_wait instruction `op` (operands: barrier, parity).
#define MOEQ_MBAR_WAIT_LOOP(label, op) "{\n.reg .pred p;\n" label ":\n" op " p, [%0], %1;\n@!p bra " label ";\n}\n"
// Spins until the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, unsigned parity) {
  asm volatile(MOEQ_MBAR_WAIT_LOOP("WS_WAIT", "mbarrier.try_wait.parity.shared::cta.b64")::"r"(bar), "r"(parity)
               : "memory");
}
#endif

#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One 2-D TMA box (inner coordinate c0 in elements, row c1) into shared memory, completing
// its bytes on `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const void* map, int c0, int c1, u32 bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// One 4-D TMA box (coordinates innermost first).
__device__ __forceinline__ void tma_load_4d(u32 dst, const void* map, int c0, int c1, int c2, int c3, u32 bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
// Thread-block clusters (sm_90a): this block's rank in its cluster; a shared-memory address of
// this block mapped to the same offset in block `rank` of the cluster; a 32-bit store and an
// mbarrier arrival there (release at cluster scope: the block's earlier writes are visible to
// whoever the arrival completes a phase for); the parity wait with acquire at cluster scope; and
// a barrier of every thread of the cluster.
__device__ __forceinline__ u32 cluster_ctarank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ u32 cluster_map(u32 addr, u32 rank) {
  u32 out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(out) : "r"(addr), "r"(rank));
  return out;
}
__device__ __forceinline__ void cluster_store_u32(u32 cluster_addr, u32 v) {
  asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(cluster_addr), "r"(v) : "memory");
}
__device__ __forceinline__ void mbar_arrive_cluster(u32 cluster_bar) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar) : "memory");
}
__device__ __forceinline__ void mbar_wait_cluster(u32 bar, unsigned parity) {
  asm volatile(MOEQ_MBAR_WAIT_LOOP("WS_CWAIT", "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64")::"r"(bar),
               "r"(parity)
               : "memory");
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// The TMA loads above, written to the same offset `dst` of every block of `mask` (bit i: rank i)
// in the cluster, each completing its bytes on the mbarrier at offset `bar` of that block.
__device__ __forceinline__ void tma_load_2d_multicast(u32 dst, const void* map, int c0, int c1, u32 bar, u16 mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void tma_load_4d_multicast(u32 dst, const void* map, int c0, int c1, int c2, int c3, u32 bar,
                                                      u16 mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar), "h"(mask)
      : "memory");
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
#endif

#undef MOEQ_MBAR_WAIT_LOOP

}  // namespace moeq::sdk::device
