// The CUDA driver API, opened at run time with dlopen("libcuda.so.1"): the same binaries run
// on machines without a driver, where every GPU entry point answers UNAVAILABLE with a reason
// instead of the process failing to load. Declares the few driver types it needs itself, so
// that no public header includes cuda.h.
#pragma once
#include <moeq/error.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

// Opaque driver handle types, declared exactly as cuda.h declares them so that both headers
// may meet in one translation unit.
struct CUctx_st;
struct CUmod_st;
struct CUfunc_st;
struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;

namespace moeq::cuda {

using CUresult = int;  // cuda.h's enum cudaError_enum, 0 = CUDA_SUCCESS
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = CUctx_st*;
using CUmodule = CUmod_st*;
using CUfunction = CUfunc_st*;
using CUstream = CUstream_st*;
using CUevent = CUevent_st*;
using CUgraph = CUgraph_st*;
using CUgraphExec = CUgraphExec_st*;

inline constexpr CUresult kSuccess = 0;
inline constexpr CUresult kErrorStubLibrary = 34;  // CUDA_ERROR_STUB_LIBRARY
inline constexpr CUresult kErrorNoDevice = 100;    // CUDA_ERROR_NO_DEVICE

// CUdevice_attribute values used by the core.
enum DeviceAttribute : int {
  kAttrMultiprocessorCount = 16,
  kAttrComputeCapabilityMajor = 75,
  kAttrComputeCapabilityMinor = 76,
  kAttrMaxSharedMemoryPerBlockOptin = 97,
};

inline constexpr int kFuncAttrMaxDynamicSharedSizeBytes = 8;  // CU_FUNC_ATTRIBUTE_...

inline constexpr unsigned kEventDefault = 0;      // CU_EVENT_DEFAULT
inline constexpr unsigned kStreamNonBlocking = 1; // CU_STREAM_NON_BLOCKING
inline constexpr unsigned kMemHostAllocPortable = 1;
inline constexpr unsigned kMemHostRegisterPortable = 1;  // CU_MEMHOSTREGISTER_PORTABLE
inline constexpr unsigned kMemHostRegisterReadOnly = 8;  // CU_MEMHOSTREGISTER_READ_ONLY
inline constexpr int kStreamCaptureModeGlobal = 0;  // CU_STREAM_CAPTURE_MODE_GLOBAL

// The entry points the core uses, resolved by name from libcuda.so.1. Versioned names
// (_v2) are the ones cuda.h maps the plain names to in CUDA 12/13.
struct DriverApi {
  CUresult (*cuInit)(unsigned flags);
  CUresult (*cuDriverGetVersion)(int* version);
  CUresult (*cuGetErrorString)(CUresult error, const char** text);
  CUresult (*cuGetErrorName)(CUresult error, const char** text);
  CUresult (*cuDeviceGetCount)(int* count);
  CUresult (*cuDeviceGet)(CUdevice* device, int ordinal);
  CUresult (*cuDeviceGetName)(char* name, int len, CUdevice device);
  CUresult (*cuDeviceGetAttribute)(int* value, int attribute, CUdevice device);
  CUresult (*cuDeviceTotalMem_v2)(size_t* bytes, CUdevice device);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext* ctx, CUdevice device);
  CUresult (*cuCtxSetCurrent)(CUcontext ctx);
  CUresult (*cuCtxSynchronize)();
  CUresult (*cuModuleLoadData)(CUmodule* module, const void* image);
  CUresult (*cuModuleUnload)(CUmodule module);
  CUresult (*cuModuleGetFunction)(CUfunction* function, CUmodule module, const char* name);
  CUresult (*cuFuncSetAttribute)(CUfunction function, int attribute, int value);
  CUresult (*cuLaunchKernel)(CUfunction f, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                             unsigned block_y, unsigned block_z, unsigned shared_bytes, CUstream stream,
                             void** params, void** extra);
  CUresult (*cuMemAlloc_v2)(CUdeviceptr* ptr, size_t bytes);
  CUresult (*cuMemFree_v2)(CUdeviceptr ptr);
  CUresult (*cuMemGetInfo_v2)(size_t* free_bytes, size_t* total_bytes);
  CUresult (*cuMemsetD8_v2)(CUdeviceptr ptr, unsigned char value, size_t count);
  CUresult (*cuMemcpyHtoDAsync_v2)(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream);
  CUresult (*cuMemcpyDtoHAsync_v2)(void* dst, CUdeviceptr src, size_t bytes, CUstream stream);
  CUresult (*cuMemcpyDtoDAsync_v2)(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream);
  CUresult (*cuMemHostAlloc)(void** ptr, size_t bytes, unsigned flags);
  CUresult (*cuMemFreeHost)(void* ptr);
  CUresult (*cuMemHostRegister)(void* ptr, size_t bytes, unsigned flags);  // _v2
  CUresult (*cuMemHostUnregister)(void* ptr);
  CUresult (*cuStreamCreate)(CUstream* stream, unsigned flags);
  CUresult (*cuStreamDestroy_v2)(CUstream stream);
  CUresult (*cuStreamSynchronize)(CUstream stream);
  CUresult (*cuEventCreate)(CUevent* event, unsigned flags);
  CUresult (*cuEventDestroy_v2)(CUevent event);
  CUresult (*cuEventRecord)(CUevent event, CUstream stream);
  CUresult (*cuEventSynchronize)(CUevent event);
  CUresult (*cuEventElapsedTime)(float* ms, CUevent start, CUevent end);  // _v2 where present
  // CUDA graphs (tests and benchmarks capture a plugin's apply).
  CUresult (*cuStreamBeginCapture)(CUstream stream, int mode);  // _v2
  CUresult (*cuStreamEndCapture)(CUstream stream, CUgraph* graph);
  CUresult (*cuGraphInstantiate)(CUgraphExec* exec, CUgraph graph, unsigned long long flags);  // WithFlags
  CUresult (*cuGraphLaunch)(CUgraphExec exec, CUstream stream);
  CUresult (*cuGraphExecDestroy)(CUgraphExec exec);
  CUresult (*cuGraphDestroy)(CUgraph graph);

  int driver_version = 0;  // e.g. 13000
};

// The result of opening a driver library; `api` is null when it failed, and `error` says why.
struct DriverLoad {
  std::unique_ptr<DriverApi> api;
  std::string error;  // "no CUDA driver (libcuda.so.1 not found: ...)"
};

// Opens `library`, resolves every entry point and runs cuInit(0). Never throws; never unloads
// a library it opened (the driver stays for the life of the process). For tests and tools;
// the core uses the process-wide driver below.
DriverLoad load_driver(const char* library);

// The process-wide driver, opened on first use from libcuda.so.1 (thread-safe, once).
bool available();
// Why available() is false; empty when it is true.
const std::string& unavailable_reason();
// The driver, or Error(UNAVAILABLE) carrying unavailable_reason().
const DriverApi& require();

// "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"
std::string describe(const DriverApi* api, CUresult result);
[[noreturn]] void throw_driver_error(CUresult result, const char* call, const char* file, int line);

struct DeviceProperties {
  int ordinal = 0;
  std::string name;
  int sm_major = 0;
  int sm_minor = 0;
  int multiprocessors = 0;
  int max_shared_memory_per_block_optin = 0;
  size_t total_memory = 0;
};
int device_count();
DeviceProperties device_properties(int ordinal);
// The device's primary context, retained once and kept for the life of the process, and
// made current on the calling thread.
CUcontext use_primary_context(int ordinal);

// A loaded CUBIN; unloads on destruction (in the context it was loaded into).
class Module {
 public:
  Module() = default;
  // Loads into the primary context of `ordinal`. Error(UNAVAILABLE) without a driver,
  // Error(INVALID_ARGUMENT) when the driver rejects the image (e.g. another arch).
  static Module load(int ordinal, std::span<const uint8_t> cubin);
  Module(Module&& other) noexcept;
  Module& operator=(Module&& other) noexcept;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  ~Module();

  CUmodule get() const { return module_; }
  explicit operator bool() const { return module_ != nullptr; }
  // The kernel `name` (extern "C" name), or Error(NOT_FOUND) naming it.
  CUfunction function(const char* name) const;

 private:
  CUcontext context_ = nullptr;
  CUmodule module_ = nullptr;
};

}  // namespace moeq::cuda

// Driver call check: throws moeq::Error carrying file:line, the call as written and the
// driver's name and text for the error. UNAVAILABLE without a driver comes from require().
#define MOEQ_CU_CHECK(call)                                                       \
  do {                                                                            \
    const ::moeq::cuda::CUresult moeq_cu_result_ = (call);                        \
    if (moeq_cu_result_ != ::moeq::cuda::kSuccess)                                \
      ::moeq::cuda::throw_driver_error(moeq_cu_result_, #call, __FILE__, __LINE__); \
  } while (0)
