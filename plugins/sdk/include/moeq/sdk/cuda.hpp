// The CUDA driver for plugins, without a CUDA header or a link dependency: libcuda.so.1 opened
// at run time (the host has it open already, so dlopen returns the same library), the entry
// points a plugin's GPU path needs resolved by name, the device's primary context, a stream of
// the plugin's own, and a device-to-host read. A plugin that runs kernels gets them from the
// host's JIT (moeq_host_api::jit_compile) as loaded modules; this is what it launches them with.
//
// Rules the host expects (docs/PLUGIN_GUIDE.md): apply launches on the caller's stream only;
// work outside apply (repacks, read-backs, scratch) goes on an OwnStream; a plugin never uses
// the legacy default stream and never synchronizes the device or the context.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace moeq::sdk::cuda {

using Module = void*;    // CUmodule
using Function = void*;  // CUfunction
using Stream = void*;    // CUstream
using Context = void*;   // CUcontext
using DevicePtr = unsigned long long;  // CUdeviceptr

// The entry points, by their driver names (the _v2 symbol where there is one).
struct Driver {
  int (*cuInit)(unsigned flags) = nullptr;
  int (*cuGetErrorName)(int error, const char** name) = nullptr;
  int (*cuDeviceGet)(int* device, int ordinal) = nullptr;
  int (*cuDeviceGetAttribute)(int* value, int attribute, int device) = nullptr;
  int (*cuDevicePrimaryCtxRetain)(Context* ctx, int device) = nullptr;
  int (*cuCtxSetCurrent)(Context ctx) = nullptr;
  int (*cuModuleGetFunction)(Function* f, Module m, const char* name) = nullptr;
  int (*cuFuncSetAttribute)(Function f, int attribute, int value) = nullptr;
  int (*cuLaunchKernel)(Function f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, Stream stream, void** params, void** extra) = nullptr;
  int (*cuMemAlloc)(DevicePtr* ptr, size_t bytes) = nullptr;                                     // _v2
  int (*cuMemFree)(DevicePtr ptr) = nullptr;                                                     // _v2
  int (*cuMemcpyDtoHAsync)(void* dst, DevicePtr src, size_t bytes, Stream s) = nullptr;        // _v2
  int (*cuMemcpyHtoDAsync)(DevicePtr dst, const void* src, size_t bytes, Stream s) = nullptr;  // _v2
  int (*cuStreamCreate)(Stream* s, unsigned flags) = nullptr;
  int (*cuStreamDestroy)(Stream s) = nullptr;  // _v2
  int (*cuStreamSynchronize)(Stream s) = nullptr;
  // Encodes a TMA descriptor (a host-side computation, no device work): map points at 128
  // bytes aligned to 64; the enums are the driver's CUtensorMap* values.
  int (*cuTensorMapEncodeTiled)(void* map, int data_type, unsigned rank, void* global, const unsigned long long* dims,
                                const unsigned long long* strides_bytes, const unsigned* box,
                                const unsigned* element_strides, int interleave, int swizzle, int l2_promotion,
                                int oob_fill) = nullptr;
  // Optional (null where the driver predates CUDA 12): the extended launch, which launch()
  // below uses for programmatic dependent launches.
  int (*cuLaunchKernelEx)(const void* config, Function f, void** params, void** extra) = nullptr;
};

// Every entry point of `library` resolved, or why not ("no CUDA driver (...)", "... lacks
// cuMemAlloc_v2"). No call into the driver is made; tests point it at the toolkit's link stub.
struct DriverLoad {
  std::unique_ptr<Driver> driver;
  std::string error;
};
DriverLoad load_driver(const char* library);

// libcuda.so.1, resolved and initialized (cuInit, idempotent) once per process; throws
// moeq::Error(UNAVAILABLE) with the reason when there is no usable driver.
const Driver& driver();

// Throws moeq::Error(INTERNAL) "<what>: CUDA_ERROR_..." unless result is 0 (CUDA_SUCCESS).
void check(int result, const char* what);

// Launches f on `stream`. With `programmatic` (and a driver that has cuLaunchKernelEx), the
// launch is a programmatic dependent launch (PDL, sm_90 on): the grid may start while the
// previous kernel on the stream is still running, once every block of that kernel has executed
// `griddepcontrol.launch_dependents`; the kernel must execute `griddepcontrol.wait` before it
// touches memory the previous kernels write or read. Stream capture records it as a
// programmatic edge. Without it, or without the entry point, a plain cuLaunchKernel.
void launch(Function f, const unsigned grid[3], const unsigned block[3], unsigned smem, Stream stream, void** params,
            bool programmatic, const char* what);

// Makes the primary context of device `ordinal` current on this thread; retained once per
// device for the life of the process, as the host does.
void use_device(int ordinal);

// A non-blocking stream of the plugin's own, on the current context; waited for and destroyed
// with the object.
class OwnStream {
 public:
  OwnStream();
  ~OwnStream();
  OwnStream(const OwnStream&) = delete;
  OwnStream& operator=(const OwnStream&) = delete;
  Stream get() const { return stream_; }
  void sync(const char* what) const;

 private:
  Stream stream_ = nullptr;
};

// Device-to-host read of `bytes` on device `ordinal`, on an OwnStream, waited for.
void read_device(int ordinal, void* dst, DevicePtr src, size_t bytes, const char* what);

}  // namespace moeq::sdk::cuda
