#include "bench_kernels.hpp"

#include "nvrtc_build.hpp"

namespace moeq::gpu_harness {
namespace {

const char kSource[] = R"cuda(
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
extern "C" __global__ void fill_uniform(unsigned char* dst, long long n, int type, unsigned long long seed,
                                        float scale, float offset) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const unsigned long long h = mix64(seed * 0x100000001b3ull ^ (unsigned long long)i);
    const float u = (float)((int)(h >> 40) - 8388608) * (1.0f / 8388608.0f);
    const float v = u * scale + offset;
    if (type == 0) {
      unsigned r;
      asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(0.0f), "f"(v));
      ((unsigned short*)dst)[i] = (unsigned short)(r & 0xffffu);
    } else if (type == 1) {
#if __CUDA_ARCH__ >= 890
      unsigned short r;
      asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(v));
      dst[i] = (unsigned char)(r & 0xffu);
#endif
    } else if (type == 2) {
      ((signed char*)dst)[i] = (signed char)fmaxf(-127.0f, fminf(127.0f, rintf(v)));
    } else {
      ((float*)dst)[i] = v;
    }
  }
}
)cuda";

}  // namespace

ct::gpu::KernelSetSource BenchKernels::source() { return {"moeq_bench_fill", kSource}; }

BenchKernels::BenchKernels(Driver& d) : driver_(d) {
  Cubin c = nvrtc_build(source(), d.arch());
  module_ = d.load(c.image);
}

void BenchKernels::fill(DevPtr dst, int64_t count, FillType type, uint64_t seed, float scale, float offset, Stream s) {
  if (count <= 0) return;
  unsigned char* p = reinterpret_cast<unsigned char*>(dst);
  long long n = count;
  int t = static_cast<int>(type);
  unsigned long long sd = seed;
  void* params[] = {&p, &n, &t, &sd, &scale, &offset};
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 4096);
  driver_.launch(module_, "fill_uniform", static_cast<unsigned>(blocks), 256, params, s);
}

}  // namespace moeq::gpu_harness
