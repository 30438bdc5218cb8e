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
  int (*cuMemcpyDtoHAsync)(void* dst, CuDevicePtr src, size_t bytes, CuStream s) = nullptr;        // _v2
  int (*cuMemcpyHtoDAsync)(CuDevicePtr dst, const void* src, size_t bytes, CuStream s) = nullptr;  // _v2
  int (*cuStreamCreate)(CuStream* s, unsigned flags) = nullptr;
  int (*cuStreamDestroy)(CuStream s) = nullptr;  // _v2
  int (*cuStreamSynchronize)(CuStream s) = nullptr;
};

// Resolved once per process; throws moeq::Error(UNAVAILABLE) naming the reason when there is
// no driver.
const LaunchApi& launch_api();

// Throws moeq::Error(INTERNAL) "<what>: CUDA_ERROR_..." unless result is 0.
void check_cu(int result, const char* what);

// Makes the primary context of device `ordinal` current on this thread (retained once per
// device for the life of the process, as the host does).
void use_device(int ordinal);

// A non-blocking stream of the plugin's own for work outside apply (repacking, reading small
// tensors back): plugins never use the legacy default stream or synchronize the device.
class OwnStream {
 public:
  OwnStream();  // on the current context
  ~OwnStream();
  OwnStream(const OwnStream&) = delete;
  OwnStream& operator=(const OwnStream&) = delete;
  CuStream get() const { return stream_; }
  void sync(const char* what) const;

 private:
  CuStream stream_ = nullptr;
};

// Device-to-host read of `bytes` on device `ordinal`, waited for.
void read_device(int ordinal, void* dst, CuDevicePtr src, size_t bytes, const char* what);

}  // namespace moeq::ct::gpu
