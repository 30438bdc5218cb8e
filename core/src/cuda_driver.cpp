// The driver shim: libcuda.so.1 through dlopen, entry points resolved by name, cuInit once.
#include <moeq/cuda_driver.hpp>

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <utility>

namespace moeq::cuda {
namespace {

// One entry point: the field to fill and the symbol names to try, newest first.
struct Symbol {
  void** slot;
  const char* names[2];
};

std::string prefixed(const std::string& why) { return "no CUDA driver (" + why + ")"; }

moeq_status_code code_for(CUresult r) {
  switch (r) {
    case 2:  // CUDA_ERROR_OUT_OF_MEMORY
      return MOEQ_STATUS_CODE_OUT_OF_MEMORY;
    case 3:    // CUDA_ERROR_NOT_INITIALIZED
    case 34:   // CUDA_ERROR_STUB_LIBRARY
    case 35:   // CUDA_ERROR_INSUFFICIENT_DRIVER
    case 100:  // CUDA_ERROR_NO_DEVICE
    case 101:  // CUDA_ERROR_INVALID_DEVICE
      return MOEQ_STATUS_CODE_UNAVAILABLE;
    case 200:  // CUDA_ERROR_INVALID_IMAGE
    case 209:  // CUDA_ERROR_NO_BINARY_FOR_GPU
    case 218:  // CUDA_ERROR_INVALID_PTX
    case 222:  // CUDA_ERROR_UNSUPPORTED_PTX_VERSION
      return MOEQ_STATUS_CODE_INVALID_ARGUMENT;
    case 500:  // CUDA_ERROR_NOT_FOUND
      return MOEQ_STATUS_CODE_NOT_FOUND;
    default:
      return MOEQ_STATUS_CODE_INTERNAL;
  }
}

struct ProcessDriver {
  DriverLoad load;
  ProcessDriver() : load(load_driver("libcuda.so.1")) {}
};

const ProcessDriver& process_driver() {
  static const ProcessDriver d;  // NOTE: C++ magic statics make the first open thread-safe
  return d;
}

}  // namespace

DriverLoad load_driver(const char* library) {
  DriverLoad out;
  // NOTE: RTLD_LOCAL keeps the driver's symbols out of the global namespace, so a plugin or
  // host application that links its own CUDA runtime sees no clash.
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    out.error = prefixed(std::string(library) + " not found: " + (why ? why : "dlopen failed"));
    return out;
  }
  auto api = std::make_unique<DriverApi>();
  DriverApi& a = *api;
  const Symbol symbols[] = {
      {reinterpret_cast<void**>(&a.cuInit), {"cuInit", nullptr}},
      {reinterpret_cast<void**>(&a.cuDriverGetVersion), {"cuDriverGetVersion", nullptr}},
      {reinterpret_cast<void**>(&a.cuGetErrorString), {"cuGetErrorString", nullptr}},
      {reinterpret_cast<void**>(&a.cuGetErrorName), {"cuGetErrorName", nullptr}},
      {reinterpret_cast<void**>(&a.cuDeviceGetCount), {"cuDeviceGetCount", nullptr}},
      {reinterpret_cast<void**>(&a.cuDeviceGet), {"cuDeviceGet", nullptr}},
      {reinterpret_cast<void**>(&a.cuDeviceGetName), {"cuDeviceGetName", nullptr}},
      {reinterpret_cast<void**>(&a.cuDeviceGetAttribute), {"cuDeviceGetAttribute", nullptr}},
      {reinterpret_cast<void**>(&a.cuDeviceTotalMem_v2), {"cuDeviceTotalMem_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuDevicePrimaryCtxRetain), {"cuDevicePrimaryCtxRetain", nullptr}},
      {reinterpret_cast<void**>(&a.cuCtxSetCurrent), {"cuCtxSetCurrent", nullptr}},
      {reinterpret_cast<void**>(&a.cuCtxSynchronize), {"cuCtxSynchronize", nullptr}},
      {reinterpret_cast<void**>(&a.cuModuleLoadData), {"cuModuleLoadData", nullptr}},
      {reinterpret_cast<void**>(&a.cuModuleUnload), {"cuModuleUnload", nullptr}},
      {reinterpret_cast<void**>(&a.cuModuleGetFunction), {"cuModuleGetFunction", nullptr}},
      {reinterpret_cast<void**>(&a.cuFuncSetAttribute), {"cuFuncSetAttribute", nullptr}},
      {reinterpret_cast<void**>(&a.cuLaunchKernel), {"cuLaunchKernel", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemAlloc_v2), {"cuMemAlloc_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemFree_v2), {"cuMemFree_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemGetInfo_v2), {"cuMemGetInfo_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemsetD8_v2), {"cuMemsetD8_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemcpyHtoDAsync_v2), {"cuMemcpyHtoDAsync_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemcpyDtoHAsync_v2), {"cuMemcpyDtoHAsync_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemcpyDtoDAsync_v2), {"cuMemcpyDtoDAsync_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemHostAlloc), {"cuMemHostAlloc", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemFreeHost), {"cuMemFreeHost", nullptr}},
      {reinterpret_cast<void**>(&a.cuMemHostRegister), {"cuMemHostRegister_v2", "cuMemHostRegister"}},
      {reinterpret_cast<void**>(&a.cuMemHostUnregister), {"cuMemHostUnregister", nullptr}},
      {reinterpret_cast<void**>(&a.cuStreamCreate), {"cuStreamCreate", nullptr}},
      {reinterpret_cast<void**>(&a.cuStreamDestroy_v2), {"cuStreamDestroy_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuStreamSynchronize), {"cuStreamSynchronize", nullptr}},
      {reinterpret_cast<void**>(&a.cuEventCreate), {"cuEventCreate", nullptr}},
      {reinterpret_cast<void**>(&a.cuEventDestroy_v2), {"cuEventDestroy_v2", nullptr}},
      {reinterpret_cast<void**>(&a.cuEventRecord), {"cuEventRecord", nullptr}},
      {reinterpret_cast<void**>(&a.cuEventSynchronize), {"cuEventSynchronize", nullptr}},
      {reinterpret_cast<void**>(&a.cuEventElapsedTime), {"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
      {reinterpret_cast<void**>(&a.cuStreamBeginCapture), {"cuStreamBeginCapture_v2", "cuStreamBeginCapture"}},
      {reinterpret_cast<void**>(&a.cuStreamEndCapture), {"cuStreamEndCapture", nullptr}},
      {reinterpret_cast<void**>(&a.cuGraphInstantiate), {"cuGraphInstantiateWithFlags", nullptr}},
      {reinterpret_cast<void**>(&a.cuGraphLaunch), {"cuGraphLaunch", nullptr}},
      {reinterpret_cast<void**>(&a.cuGraphExecDestroy), {"cuGraphExecDestroy", nullptr}},
      {reinterpret_cast<void**>(&a.cuGraphDestroy), {"cuGraphDestroy", nullptr}},
  };
  for (const Symbol& s : symbols) {
    for (const char* name : s.names) {
      if (name == nullptr) break;
      if ((*s.slot = dlsym(handle, name)) != nullptr) break;
    }
    if (*s.slot == nullptr) {
      // NOTE: the library stays open (never dlclose a driver: its static destructors and
      // threads do not expect it); we only refuse to use it.
      out.error = prefixed(std::string(library) + " lacks " + s.names[0] + ": the driver is too old");
      return out;
    }
  }
  const CUresult init = a.cuInit(0);
  if (init != kSuccess) {
    out.error = prefixed("cuInit failed: " + describe(&a, init));
    return out;
  }
  a.cuDriverGetVersion(&a.driver_version);
  out.api = std::move(api);
  return out;
}

bool available() { return process_driver().load.api != nullptr; }

const std::string& unavailable_reason() { return process_driver().load.error; }

const DriverApi& require() {
  const ProcessDriver& d = process_driver();
  if (!d.load.api) fail(MOEQ_STATUS_CODE_UNAVAILABLE, d.load.error);
  return *d.load.api;
}

std::string describe(const DriverApi* api, CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (api != nullptr) {
    if (api->cuGetErrorName(result, &name) != kSuccess) name = nullptr;
    if (api->cuGetErrorString(result, &text) != kSuccess) text = nullptr;
  }
  std::string s = name ? name : "CUresult " + std::to_string(result);
  if (text) s += std::string(": ") + text;
  return s;
}

void throw_driver_error(CUresult result, const char* call, const char* file, int line) {
  const DriverApi* api = process_driver().load.api.get();
  fail(code_for(result),
       std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + describe(api, result));
}

int device_count() {
  const DriverApi& d = require();
  int n = 0;
  MOEQ_CU_CHECK(d.cuDeviceGetCount(&n));
  return n;
}

DeviceProperties device_properties(int ordinal) {
  const DriverApi& d = require();
  CUdevice dev = 0;
  MOEQ_CU_CHECK(d.cuDeviceGet(&dev, ordinal));
  DeviceProperties p;
  p.ordinal = ordinal;
  char name[256] = {};
  MOEQ_CU_CHECK(d.cuDeviceGetName(name, sizeof(name) - 1, dev));
  p.name = name;
  MOEQ_CU_CHECK(d.cuDeviceGetAttribute(&p.sm_major, kAttrComputeCapabilityMajor, dev));
  MOEQ_CU_CHECK(d.cuDeviceGetAttribute(&p.sm_minor, kAttrComputeCapabilityMinor, dev));
  MOEQ_CU_CHECK(d.cuDeviceGetAttribute(&p.multiprocessors, kAttrMultiprocessorCount, dev));
  MOEQ_CU_CHECK(d.cuDeviceGetAttribute(&p.max_shared_memory_per_block_optin, kAttrMaxSharedMemoryPerBlockOptin, dev));
  MOEQ_CU_CHECK(d.cuDeviceTotalMem_v2(&p.total_memory, dev));
  return p;
}

CUcontext use_primary_context(int ordinal) {
  const DriverApi& d = require();
  static std::mutex mutex;
  static std::map<int, CUcontext> retained;  // NOTE: never released; modules may live as long
  CUcontext ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = retained.find(ordinal);
    if (it == retained.end()) {
      CUdevice dev = 0;
      MOEQ_CU_CHECK(d.cuDeviceGet(&dev, ordinal));
      MOEQ_CU_CHECK(d.cuDevicePrimaryCtxRetain(&ctx, dev));
      retained.emplace(ordinal, ctx);
    } else {
      ctx = it->second;
    }
  }
  MOEQ_CU_CHECK(d.cuCtxSetCurrent(ctx));
  return ctx;
}

Module Module::load(int ordinal, std::span<const uint8_t> cubin) {
  const DriverApi& d = require();
  Module m;
  m.context_ = use_primary_context(ordinal);
  MOEQ_CU_CHECK(d.cuModuleLoadData(&m.module_, cubin.data()));
  return m;
}

Module::Module(Module&& other) noexcept
    : context_(std::exchange(other.context_, nullptr)), module_(std::exchange(other.module_, nullptr)) {}

Module& Module::operator=(Module&& other) noexcept {
  if (this != &other) {
    Module old(std::move(*this));
    context_ = std::exchange(other.context_, nullptr);
    module_ = std::exchange(other.module_, nullptr);
  }
  return *this;
}

Module::~Module() {
  if (module_ == nullptr) return;
  const DriverApi& d = *process_driver().load.api;  // a module exists only with a driver
  d.cuCtxSetCurrent(context_);
  d.cuModuleUnload(module_);
}

CUfunction Module::function(const char* name) const {
  const DriverApi& d = require();
  CUfunction f = nullptr;
  const CUresult r = d.cuModuleGetFunction(&f, module_, name);
  if (r != kSuccess)
    fail(r == 500 ? MOEQ_STATUS_CODE_NOT_FOUND : code_for(r),
         std::string("kernel '") + name + "' not in the module: " + describe(&d, r));
  return f;
}

}  // namespace moeq::cuda
