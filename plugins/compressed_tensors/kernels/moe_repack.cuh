// Weight repacking done once after loading. int8 W8A16 codes are permuted inside every
// 16-byte group of a row so that one ldmatrix word holds exactly the four codes a thread's
// bf16 m16n8k16 B fragment needs: new bytes [4t, 4t+4) = old bytes {2t, 2t+1, 2t+8, 2t+9}.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {

// In place over `groups` 16-byte groups (rows of a multiple of 16 codes, back to back).
__device__ void repack_w8a16(u8* codes, long long groups) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < groups;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    uint4* p = reinterpret_cast<uint4*>(codes) + i;
    const uint4 w = *p;
    uint4 r;
    r.x = __byte_perm(w.x, w.z, 0x5410);
    r.y = __byte_perm(w.x, w.z, 0x7632);
    r.z = __byte_perm(w.y, w.w, 0x5410);
    r.w = __byte_perm(w.y, w.w, 0x7632);
    *p = r;
  }
}

}  // namespace moeq_kernels
