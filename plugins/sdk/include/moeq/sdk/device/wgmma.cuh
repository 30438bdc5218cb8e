// Hopper warpgroup MMA (wgmma, sm_90a) as inline PTX (plugin SDK device header): the fences,
// commit and waits, the shared-memory matrix descriptor of a K-major tile in the 128-byte
// swizzle, and m64n112k32 / m64n128k32 / m64n224k32 / m64n256k32 e4m3 and m64n128k16 /
// m64n224k16 / m64n256k16 bf16 MMAs with f32 accumulators that read both operands from shared
// memory. The wgmma wrappers exist only when compiling for sm_90a, the proxy fence from sm_90.
#pragma once
#include "moeq/sdk/device/types.cuh"

namespace moeq::sdk::device {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads (wgmma,
// TMA stores) of them.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#endif
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
#endif

// Keeps the compiler from moving accumulator reads or writes across an asynchronous MMA.
template <int R>
__device__ __forceinline__ void fence_regs(float* d) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Descriptor of a K-major operand tile in the 128-byte swizzle: rows of 128 bytes, 8-row
// atoms of 1024 bytes (stride byte offset), start address in 16-byte units. Stepping K inside
// the row adds bytes / 16 to the start address; the hardware applies the swizzle.
__device__ __forceinline__ unsigned long long smem_desc(u32 addr) {
  return static_cast<unsigned long long>((addr & 0x3ffffu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// The accumulator operands of m64n112, m64n128, m64n224 and m64n256 wgmmas (d[0..55],
// d[0..63], d[0..111], d[0..127]), each list extending the one before.
#define MOEQ_WGMMA_D56 \
"+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
"+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
"+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
"+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
"+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
"+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
"+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])
#define MOEQ_WGMMA_D64 MOEQ_WGMMA_D56, \
"+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define MOEQ_WGMMA_D112 MOEQ_WGMMA_D64, \
"+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
"+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
"+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
"+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
"+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
"+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define MOEQ_WGMMA_D128 MOEQ_WGMMA_D112, \
"+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
"+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// The accumulator operand lists of the PTX strings, each extending the one before.
#define MOEQ_WGMMA_R56 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55"
#define MOEQ_WGMMA_R64 MOEQ_WGMMA_R56 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define MOEQ_WGMMA_R112 MOEQ_WGMMA_R64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define MOEQ_WGMMA_R128 MOEQ_WGMMA_R112 ", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

// A wgmma from two shared-memory descriptors into the accumulators d: `shape` is the PTX shape
// and types, `tail` the operands after scale-d (e4m3 takes no transpose flags); `regs` and
// `outs` the accumulator operands, `pred`, `da` and `db` the operand numbers after them.
#define MOEQ_WGMMA(name, shape, tail, regs, outs, pred, da, db)                                              \
  __device__ __forceinline__ void name(float* d, unsigned long long desc_a, unsigned long long desc_b,       \
                                       int accumulate) {                                                    \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " pred ", 0;\n"                                          \
                 "wgmma.mma_async.sync.aligned." shape " {" regs "}, " da ", " db ", p" tail ";\n}\n"        \
                 : outs                                                                                     \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                             \
  }
#define MOEQ_WGMMA_N128(name, shape, tail) MOEQ_WGMMA(name, shape, tail, MOEQ_WGMMA_R64, MOEQ_WGMMA_D64, "%66", "%64", "%65")
#define MOEQ_WGMMA_N256(name, shape, tail) \
  MOEQ_WGMMA(name, shape, tail, MOEQ_WGMMA_R128, MOEQ_WGMMA_D128, "%130", "%128", "%129")
#define MOEQ_WGMMA_N112(name, shape, tail) MOEQ_WGMMA(name, shape, tail, MOEQ_WGMMA_R56, MOEQ_WGMMA_D56, "%58", "%56", "%57")
#define MOEQ_WGMMA_N224(name, shape, tail) \
  MOEQ_WGMMA(name, shape, tail, MOEQ_WGMMA_R112, MOEQ_WGMMA_D112, "%114", "%112", "%113")
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
MOEQ_WGMMA_N112(wgmma_e4m3_n112, "m64n112k32.f32.e4m3.e4m3", ", 1, 1")
MOEQ_WGMMA_N224(wgmma_e4m3_n224, "m64n224k32.f32.e4m3.e4m3", ", 1, 1")
MOEQ_WGMMA_N224(wgmma_bf16_n224, "m64n224k16.f32.bf16.bf16", ", 1, 1, 0, 0")
MOEQ_WGMMA_N128(wgmma_e4m3_n128, "m64n128k32.f32.e4m3.e4m3", ", 1, 1")
MOEQ_WGMMA_N128(wgmma_bf16_n128, "m64n128k16.f32.bf16.bf16", ", 1, 1, 0, 0")
MOEQ_WGMMA_N256(wgmma_bf16_n256, "m64n256k16.f32.bf16.bf16", ", 1, 1, 0, 0")
MOEQ_WGMMA_N256(wgmma_e4m3_n256, "m64n256k32.f32.e4m3.e4m3", ", 1, 1")
#endif

#undef MOEQ_WGMMA_N256
#undef MOEQ_WGMMA_N224
#undef MOEQ_WGMMA_N112
#undef MOEQ_WGMMA_N128
#undef MOEQ_WGMMA
#undef MOEQ_WGMMA_R128
#undef MOEQ_WGMMA_R64
#undef MOEQ_WGMMA_D128
#undef MOEQ_WGMMA_D64
#undef MOEQ_WGMMA_D112
#undef MOEQ_WGMMA_D56
#undef MOEQ_WGMMA_R112
#undef MOEQ_WGMMA_R56

}  // namespace moeq::sdk::device
