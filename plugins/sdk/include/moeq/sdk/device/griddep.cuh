// Programmatic dependent launch (plugin SDK device header): what a kernel launched with
// moeq::sdk::cuda::launch(..., programmatic = true, ...) runs (sm_90 on; no-ops before).
#pragma once

namespace moeq::sdk::device {

// Lets the next kernel on the stream be scheduled once every block of this one has run it.
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Holds this thread until the kernels this one depends on have finished and their memory is
// visible: run it before reading or writing anything they touch.
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace moeq::sdk::device
