// online_quant's device kernels (embedded in the plugin, compiled through the host's JIT):
// one expert projection [rows, cols] of BF16 (dt 0), F16 (1) or F32 (2) to int8 or e4m3 codes
// and F32 scales, the same bytes as the CPU schemes (online_scheme.cpp): the same absmax, the
// same division, round-half-even to int8 and round-to-nearest-even saturating to e4m3. One
// block per row (int8, fp8-channel, the tensor scheme's row maxima and codes) or per 128x128
// tile (fp8-block). fp8 needs sm_89 or newer; int8 runs from sm_80. `bad` receives the lowest
// flat index of a NaN or infinite weight (atomicMin; the host sets it to ~0 first and refuses
// the projection when it changed).
typedef unsigned char u8;

__device__ __forceinline__ float load_w(const void* w, int dt, long long i) {
  if (dt == 0) return __uint_as_float(static_cast<unsigned>(static_cast<const unsigned short*>(w)[i]) << 16);
  if (dt == 1) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(static_cast<const unsigned short*>(w)[i]));
    return f;
  }
  return static_cast<const float*>(w)[i];
}

__device__ __forceinline__ u8 to_e4m3(float v) {
#if __CUDA_ARCH__ >= 890
  unsigned short r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(v));
  return static_cast<u8>(r & 0xff);
#else
  __trap();
  return 0;
#endif
}

__device__ __forceinline__ u8 to_i8(float v) {
  const float q = fminf(fmaxf(rintf(v), -127.0f), 127.0f);
  return static_cast<u8>(static_cast<signed char>(q));
}

__device__ float block_max(float v) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? warp_max[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) warp_max[0] = v;
  }
  __syncthreads();
  const float m = warp_max[0];
  __syncthreads();
  return m;
}

__device__ __forceinline__ void note_non_finite(float v, long long at, unsigned long long* bad) {
  if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) atomicMin(bad, static_cast<unsigned long long>(at));
}

__device__ float row_absmax(const void* w, int dt, long long base, int cols, unsigned long long* bad) {
  float m = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = load_w(w, dt, base + c);
    note_non_finite(v, base + c, bad);
    m = fmaxf(m, fabsf(v));
  }
  return block_max(m);
}

// online_scale (online_scheme.hpp): m / qmax, 1 for m == 0, at least FLT_MIN, one step down
// where qmax * s would overflow.
__device__ __forceinline__ float oq_scale(float m, float qmax) {
  if (!(m > 0.0f)) return 1.0f;
  const float s = __fdiv_rn(m, qmax);
  if (s < 1.17549435e-38f) return 1.17549435e-38f;
  const bool overflows = (__float_as_uint(__fmul_rn(s, qmax)) & 0x7f800000u) == 0x7f800000u;
  return overflows ? __uint_as_float(__float_as_uint(s) - 1u) : s;  // the next float toward 0
}

// kind 0: int8, s = absmax / 127; kind 1: fp8, s = absmax / 448.
extern "C" __global__ void oq_rows(const void* w, int dt, int cols, int kind, u8* codes, float* scales,
                                   unsigned long long* bad) {
  const long long base = static_cast<long long>(blockIdx.x) * cols;
  const float m = row_absmax(w, dt, base, cols, bad);
  const float s = oq_scale(m, kind == 0 ? 127.0f : 448.0f);
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = load_w(w, dt, base + c) / s;
    codes[base + c] = kind == 0 ? to_i8(v) : to_e4m3(v);
  }
}

extern "C" __global__ void oq_row_amax(const void* w, int dt, int cols, float* part, unsigned long long* bad) {
  const float m = row_absmax(w, dt, static_cast<long long>(blockIdx.x) * cols, cols, bad);
  if (threadIdx.x == 0) part[blockIdx.x] = m;
}

// One scale for the projection: the max of the row maxima.
extern "C" __global__ void oq_tensor_codes(const void* w, int dt, int rows, int cols, const float* part, u8* codes,
                                           float* scale) {
  float m = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) m = fmaxf(m, part[r]);
  m = block_max(m);
  const float s = oq_scale(m, 448.0f);
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[0] = s;
  const long long base = static_cast<long long>(blockIdx.x) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) codes[base + c] = to_e4m3(load_w(w, dt, base + c) / s);
}

// 128x128 tiles (ragged at the edges: only real elements count); grid (column tiles, row tiles).
extern "C" __global__ void oq_blocks(const void* w, int dt, int rows, int cols, u8* codes, float* scales,
                                     unsigned long long* bad) {
  const int r0 = blockIdx.y * 128, c0 = blockIdx.x * 128;
  const int nr = min(128, rows - r0), nc = min(128, cols - c0);
  float m = 0.0f;
  for (int i = threadIdx.x; i < nr * nc; i += blockDim.x) {
    const long long at = static_cast<long long>(r0 + i / nc) * cols + c0 + i % nc;
    const float v = load_w(w, dt, at);
    note_non_finite(v, at, bad);
    m = fmaxf(m, fabsf(v));
  }
  m = block_max(m);
  const float s = oq_scale(m, 448.0f);
  if (threadIdx.x == 0) scales[blockIdx.y * gridDim.x + blockIdx.x] = s;
  for (int i = threadIdx.x; i < nr * nc; i += blockDim.x) {
    const long long at = static_cast<long long>(r0 + i / nc) * cols + c0 + i % nc;
    codes[at] = to_e4m3(load_w(w, dt, at) / s);
  }
}
