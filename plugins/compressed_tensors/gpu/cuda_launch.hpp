// The few driver entry points the plugin's GPU code needs, found in the libcuda.so.1 that the
// host already opened (dlopen of the same name returns it): function lookup, the shared memory
// attribute, the launch, and what process_after_loading needs (the primary context, workspace
// memory, reading small tensors back). No CUDA header; handles are opaque pointers.
#pragma once
#include <cstddef>
#include <string>

namespace moeq::ct::gpu {

using CuModule = void*;
using CuFunction = void*;
using CuStream = void*;
using CuContext = void*;
using CuDevicePtr = unsigned long long;

struct LaunchApi {
  int (*cuModuleGetFunction)(CuFunction* f, CuModule m, const char* name) = nullptr;
  int (*cuFuncSetAttribute)(CuFunction f, int attribute, int value) = nullptr;
  int (*cuLaunchKernel)(CuFunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CuStream stream, void** params, void** extra) = nullptr;
  int (*cuGetErrorName)(int error, const char** name) = nullptr;
  int (*cuDeviceGet)(int* device, int ordinal) = nullptr;
  int (*cuDeviceGetAttribute)(int* value, int attribute, int device) = nullptr;
  int (*cuDevicePrimaryCtxRetain)(CuContext* ctx, int device) = nullptr;
  int (*cuCtxSetCurrent)(CuContext ctx) = nullptr;
  int (*cuMemAlloc)(CuDevicePtr* ptr, size_t bytes) = nullptr;  // _v2
  int (*cuMemFree)(CuDevicePtr ptr) = nullptr;                  // _v2
  int (*cuMemcpyDtoH)(void* dst, CuDevicePtr src, size_t bytes) = nullptr;  // _v2, synchronous
  int (*cuCtxSynchronize)() = nullptr;
};

// Resolved once per process; throws moeq::Error(UNAVAILABLE) naming the reason when there is
// no driver.
const LaunchApi& launch_api();

// Throws moeq::Error(INTERNAL) "<what>: CUDA_ERROR_..." unless result is 0.
void check_cu(int result, const char* what);

// Makes the primary context of device `ordinal` current on this thread (retained once per
// device for the life of the process, as the host does).
void use_device(int ordinal);

}  // namespace moeq::ct::gpu
