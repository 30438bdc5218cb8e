// The few driver entry points the plugin's launch code needs, found in the libcuda.so.1 that
// the host already opened (dlopen of the same name returns it): function lookup, the shared
// memory attribute and the launch itself. No CUDA header; handles are opaque pointers.
#pragma once
#include <string>

namespace moeq::ct::gpu {

using CuModule = void*;
using CuFunction = void*;
using CuStream = void*;

struct LaunchApi {
  int (*cuModuleGetFunction)(CuFunction* f, CuModule m, const char* name) = nullptr;
  int (*cuFuncSetAttribute)(CuFunction f, int attribute, int value) = nullptr;
  int (*cuLaunchKernel)(CuFunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CuStream stream, void** params, void** extra) = nullptr;
  int (*cuGetErrorName)(int error, const char** name) = nullptr;
};

// Resolved once per process; throws moeq::Error(UNAVAILABLE) naming the reason when there is
// no driver.
const LaunchApi& launch_api();

// Throws moeq::Error(INTERNAL) "<what>: CUDA_ERROR_..." unless result is 0.
void check_cu(int result, const char* what);

}  // namespace moeq::ct::gpu
