// Device code of example_fp8_tensor, embedded in the plugin by moeq_add_plugin(KERNELS) and
// read back with moeq::sdk::embedded_kernel_source("fp8_tensor_dequant.cuh"). A GPU version of
// this plugin would hand it to the host's JIT (moeq_host_api::jit_compile, header_names /
// header_contents from moeq::sdk::embedded_kernel_headers()); this example applies on the CPU
// and only lists it in `describe`.
#pragma once

// F8_E4M3 (fn) code -> float: sign, 4 exponent bits (bias 7), 3 mantissa bits; 0x7f/0xff NaN.
__device__ __forceinline__ float moeq_example_e4m3_to_float(unsigned char code) {
  const unsigned sign = code >> 7, exp = (code >> 3) & 0xf, man = code & 0x7;
  if (exp == 0xf && man == 0x7) return __int_as_float(0x7fc00000);
  const float mag = exp == 0 ? ldexpf(static_cast<float>(man), -9)
                             : ldexpf(1.0f + static_cast<float>(man) / 8.0f, static_cast<int>(exp) - 7);
  return sign ? -mag : mag;
}

// out[i] = e4m3(codes[i]) * scale for one expert projection (one scale per tensor).
extern "C" __global__ void moeq_example_fp8_tensor_dequant(const unsigned char* codes, float scale, float* out,
                                                           long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = moeq_example_e4m3_to_float(codes[i]) * scale;
}
