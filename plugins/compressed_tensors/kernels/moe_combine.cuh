// The top-k combine: out[m] = sum over slots j (in slot order) of y2[m * topk + j], for the
// slots whose expert is local, each slot's K splits of GEMM2 added in split order, in f32 (y2's
// rows are bf16 where y2_bf16). A fixed order, so results are bit-identical run to run.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {

__device__ void combine(const MoeArgs& a) {
  const int H = a.hidden, q = H >> 2;  // H is a multiple of 16
  const long long total = static_cast<long long>(a.M) * q;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int m = static_cast<int>(i / q), c = static_cast<int>(i % q) * 4;
    float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const long long slab = static_cast<long long>(a.M) * a.topk * H;
    for (int j = 0; j < a.topk; ++j) {
      const int pair = m * a.topk + j;
      const int le = a.topk_ids[pair] - a.first_expert;
      if (le < 0 || le >= a.num_experts) continue;
      for (int z = 0; z < a.k_splits; ++z) {
        const long long o = z * slab + static_cast<long long>(pair) * H + c;
        float4 y;
        if (y2_bf16(a)) {
          const uint2 v = *reinterpret_cast<const uint2*>(reinterpret_cast<const u16*>(a.y2) + o);
          y = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                          __uint_as_float(v.y & 0xffff0000u));
        } else {
          y = *reinterpret_cast<const float4*>(a.y2 + o);
        }
        s.x += y.x;
        s.y += y.y;
        s.z += y.z;
        s.w += y.w;
      }
    }
    const long long o = static_cast<long long>(m) * a.out_stride + c;
    if (a.out_dtype == kOutF32) {
      *reinterpret_cast<float4*>(static_cast<float*>(a.out) + o) = s;
    } else {
      uint2 v;
      v.x = f32x2_to_bf16x2(s.x, s.y);
      v.y = f32x2_to_bf16x2(s.z, s.w);
      *reinterpret_cast<uint2*>(static_cast<u16*>(a.out) + o) = v;
    }
  }
}

}  // namespace moeq_kernels
