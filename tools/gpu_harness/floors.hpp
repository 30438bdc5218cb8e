// The two ceilings a timing is compared with, measured on the device in the same run:
// device copy bandwidth (cuMemcpyDtoD of a large buffer, bytes read + written) and dense
// matrix rate of cuBLASLt (opened with dlopen; FP8 e4m3 and bf16, 8192^3, fp32 accumulate).
#pragma once
#include "bench_kernels.hpp"
#include "driver.hpp"

#include <string>

namespace moeq::gpu_harness {

struct Floors {
  double copy_gbps = 0;      // GB/s, 1e9 bytes
  double fp8_tflops = 0;     // TFLOP/s, best of normal and fast accumulation
  double bf16_tflops = 0;
  std::string fp8_note;      // which cuBLASLt mode gave the rate, or why none
  std::string bf16_note;
  std::string cublaslt;      // library opened
};

// Inputs of the matrix products are random (fill kernels), never constants or zeros.
Floors measure_floors(Driver& d, Stream s, BenchKernels& fill);

}  // namespace moeq::gpu_harness
