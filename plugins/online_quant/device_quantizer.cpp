#include "device_quantizer.hpp"

#include "gpu/cuda_launch.hpp"

#include <moeq/sdk/sdk.hpp>

#include <algorithm>

namespace moeq::online {
namespace {

namespace gpu = ::moeq::ct::gpu;

constexpr int kThreads = 256;
constexpr int64_t kBlock = 128;

// The kernels. dt: 0 BF16, 1 F16, 2 F32. One block per row (int8, fp8-channel, the tensor
// scheme's row maxima and codes) or per 128x128 tile (fp8-block).
const char* const kSource = R"CUDA(
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

__device__ float row_absmax(const void* w, int dt, long long base, int cols) {
  float m = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(load_w(w, dt, base + c)));
  return block_max(m);
}

// kind 0: int8, s = absmax / 127; kind 1: fp8, s = absmax / 448; 1 for an all-zero row.
extern "C" __global__ void oq_rows(const void* w, int dt, int cols, int kind, u8* codes, float* scales) {
  const long long base = static_cast<long long>(blockIdx.x) * cols;
  const float m = row_absmax(w, dt, base, cols);
  const float s = m > 0.0f ? m / (kind == 0 ? 127.0f : 448.0f) : 1.0f;
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = load_w(w, dt, base + c) / s;
    codes[base + c] = kind == 0 ? to_i8(v) : to_e4m3(v);
  }
}

extern "C" __global__ void oq_row_amax(const void* w, int dt, int cols, float* part) {
  const float m = row_absmax(w, dt, static_cast<long long>(blockIdx.x) * cols, cols);
  if (threadIdx.x == 0) part[blockIdx.x] = m;
}

// One scale for the projection: the max of the row maxima.
extern "C" __global__ void oq_tensor_codes(const void* w, int dt, int rows, int cols, const float* part, u8* codes,
                                           float* scale) {
  float m = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) m = fmaxf(m, part[r]);
  m = block_max(m);
  const float s = m > 0.0f ? m / 448.0f : 1.0f;
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[0] = s;
  const long long base = static_cast<long long>(blockIdx.x) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) codes[base + c] = to_e4m3(load_w(w, dt, base + c) / s);
}

// 128x128 tiles (ragged at the edges: only real elements count); grid (column tiles, row tiles).
extern "C" __global__ void oq_blocks(const void* w, int dt, int rows, int cols, u8* codes, float* scales) {
  const int r0 = blockIdx.y * 128, c0 = blockIdx.x * 128;
  const int nr = min(128, rows - r0), nc = min(128, cols - c0);
  float m = 0.0f;
  for (int i = threadIdx.x; i < nr * nc; i += blockDim.x)
    m = fmaxf(m, fabsf(load_w(w, dt, static_cast<long long>(r0 + i / nc) * cols + c0 + i % nc)));
  m = block_max(m);
  const float s = m > 0.0f ? m / 448.0f : 1.0f;
  if (threadIdx.x == 0) scales[blockIdx.y * gridDim.x + blockIdx.x] = s;
  for (int i = threadIdx.x; i < nr * nc; i += blockDim.x) {
    const long long at = static_cast<long long>(r0 + i / nc) * cols + c0 + i % nc;
    codes[at] = to_e4m3(load_w(w, dt, at) / s);
  }
}
)CUDA";

int dt_code(DType d) {
  switch (d) {
    case DType::BF16: return 0;
    case DType::F16: return 1;
    case DType::F32: return 2;
    default: break;
  }
  fail(std::string("online quantization on the device takes BF16, F16 or F32 weights, found ") + dtype_name(d));
}

void* function(void* module, const char* name) {
  gpu::CuFunction f = nullptr;
  gpu::check_cu(gpu::launch_api().cuModuleGetFunction(&f, module, name), name);
  return f;
}

void launch(void* module, const char* name, unsigned gx, unsigned gy, gpu::CuStream s, std::vector<void*> args) {
  gpu::check_cu(gpu::launch_api().cuLaunchKernel(function(module, name), gx, gy, 1, kThreads, 1, 1, 0, s,
                                                 args.data(), nullptr),
                name);
}

}  // namespace

DeviceQuantizer::DeviceQuantizer(int ordinal, const std::string& scheme) : ordinal_(ordinal), scheme_(scheme) {
  moeq_device_info_args info{};
  info.struct_size = sizeof(info);
  info.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->device_info(&info));
  const std::string arch = "sm_" + std::to_string(info.sm_major) + std::to_string(info.sm_minor) +
                           (info.sm_major == 9 ? "a" : "");
  moeq_jit_compile_args j{};
  j.struct_size = sizeof(j);
  j.name = "online_quant_kernels";
  j.source = kSource;
  j.arch = arch.c_str();
  j.plugin_name = "online_quant";
  j.plugin_version = "0.3.0";
  j.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->jit_compile(&j));
  module_ = j.module;
}

DeviceQuantizer::~DeviceQuantizer() { release(); }

void DeviceQuantizer::release() {
  for (Buffer* b : {&src_, &codes_, &scales_, &part_}) {
    if (b->ptr != 0) {
      try {
        gpu::use_device(ordinal_);
        gpu::launch_api().cuMemFree(b->ptr);
      } catch (...) {
      }
    }
    *b = Buffer{};
  }
}

void DeviceQuantizer::reserve(Buffer& b, std::size_t bytes, const char* what) {
  if (bytes <= b.capacity) return;
  const gpu::LaunchApi& api = gpu::launch_api();
  if (b.ptr != 0) api.cuMemFree(b.ptr);
  b = Buffer{};
  gpu::check_cu(api.cuMemAlloc(&b.ptr, bytes), what);
  b.capacity = bytes;
}

DeviceQuantizer::Result DeviceQuantizer::quantize(const DLTensor& t) {
  const sdk::View src(t);
  if (src.ndim() != 2) fail("online quantization on the device takes a 2-D projection");
  const int64_t rows = src.size(0), cols = src.size(1);
  const DLTensor& d = *src.dl();
  const bool contiguous = d.strides == nullptr || (d.strides[1] == 1 && d.strides[0] == cols);
  DType dt = src.dtype();
  dt_code(dt);
  const void* host = static_cast<const char*>(d.data) + d.byte_offset;
  if (!contiguous) {  // e.g. a view into a fused tensor: one pass on the host to F32 rows
    host_rows_.resize(static_cast<std::size_t>(rows * cols));
    src.read_floats(host_rows_.data());
    host = host_rows_.data();
    dt = DType::F32;
  }
  const std::size_t elem = dtype_size(dt), n = static_cast<std::size_t>(rows * cols);
  const int64_t nb = (rows + kBlock - 1) / kBlock, kb = (cols + kBlock - 1) / kBlock;
  const std::size_t scale_count =
      scheme_ == "fp8-block" ? static_cast<std::size_t>(nb * kb) : std::max<std::size_t>(static_cast<std::size_t>(rows), 1);
  if (rows == 0 || cols == 0) fail("online quantization: an empty projection");
  gpu::use_device(ordinal_);
  reserve(src_, n * elem, "cuMemAlloc (online quantization: one projection in its checkpoint dtype)");
  reserve(codes_, n, "cuMemAlloc (online quantization: codes)");
  reserve(scales_, scale_count * 4, "cuMemAlloc (online quantization: scales)");
  reserve(part_, static_cast<std::size_t>(rows) * 4, "cuMemAlloc (online quantization: row maxima)");
  const gpu::LaunchApi& api = gpu::launch_api();
  gpu::OwnStream stream;
  gpu::check_cu(api.cuMemcpyHtoDAsync(src_.ptr, host, n * elem, stream.get()), "uploading a projection to quantize");
  Result r;
  r.codes = reinterpret_cast<const void*>(static_cast<uintptr_t>(codes_.ptr));
  r.scales = reinterpret_cast<const float*>(static_cast<uintptr_t>(scales_.ptr));
  void* w = reinterpret_cast<void*>(static_cast<uintptr_t>(src_.ptr));
  int dtc = dt_code(dt), rows_i = static_cast<int>(rows), cols_i = static_cast<int>(cols);
  void* codes = reinterpret_cast<void*>(static_cast<uintptr_t>(codes_.ptr));
  void* scales = reinterpret_cast<void*>(static_cast<uintptr_t>(scales_.ptr));
  void* part = reinterpret_cast<void*>(static_cast<uintptr_t>(part_.ptr));
  const unsigned R = static_cast<unsigned>(rows);
  if (scheme_ == "int8" || scheme_ == "fp8-channel") {
    int kind = scheme_ == "int8" ? 0 : 1;
    launch(module_, "oq_rows", R, 1, stream.get(), {&w, &dtc, &cols_i, &kind, &codes, &scales});
    r.scale_shape = {rows, 1};
  } else if (scheme_ == "fp8-tensor") {
    launch(module_, "oq_row_amax", R, 1, stream.get(), {&w, &dtc, &cols_i, &part});
    launch(module_, "oq_tensor_codes", R, 1, stream.get(), {&w, &dtc, &rows_i, &cols_i, &part, &codes, &scales});
    r.scale_shape = {};
  } else if (scheme_ == "fp8-block") {
    launch(module_, "oq_blocks", static_cast<unsigned>(kb), static_cast<unsigned>(nb), stream.get(),
           {&w, &dtc, &rows_i, &cols_i, &codes, &scales});
    r.scale_shape = {nb, kb};
  } else {
    fail("online quantization on the device: unknown scheme '" + scheme_ + "'");
  }
  stream.sync("online quantization kernels");
  return r;
}

}  // namespace moeq::online
