#include "cuda_launch.hpp"

#include <moeq/error.hpp>

#include <dlfcn.h>

#include <map>
#include <mutex>

namespace moeq::ct::gpu {
namespace {

struct Loaded {
  LaunchApi api;
  std::string error;
};

Loaded load() {
  Loaded l;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    l.error = std::string("no CUDA driver (libcuda.so.1: ") + (why ? why : "not found") + ")";
    return l;
  }
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(lib, name);
    if (p == nullptr && l.error.empty()) l.error = std::string("libcuda.so.1 lacks ") + name;
    return p;
  };
  l.api.cuModuleGetFunction = reinterpret_cast<decltype(l.api.cuModuleGetFunction)>(sym("cuModuleGetFunction"));
  l.api.cuFuncSetAttribute = reinterpret_cast<decltype(l.api.cuFuncSetAttribute)>(sym("cuFuncSetAttribute"));
  l.api.cuLaunchKernel = reinterpret_cast<decltype(l.api.cuLaunchKernel)>(sym("cuLaunchKernel"));
  l.api.cuGetErrorName = reinterpret_cast<decltype(l.api.cuGetErrorName)>(sym("cuGetErrorName"));
  l.api.cuDeviceGet = reinterpret_cast<decltype(l.api.cuDeviceGet)>(sym("cuDeviceGet"));
  l.api.cuDeviceGetAttribute = reinterpret_cast<decltype(l.api.cuDeviceGetAttribute)>(sym("cuDeviceGetAttribute"));
  l.api.cuDevicePrimaryCtxRetain =
      reinterpret_cast<decltype(l.api.cuDevicePrimaryCtxRetain)>(sym("cuDevicePrimaryCtxRetain"));
  l.api.cuCtxSetCurrent = reinterpret_cast<decltype(l.api.cuCtxSetCurrent)>(sym("cuCtxSetCurrent"));
  l.api.cuMemAlloc = reinterpret_cast<decltype(l.api.cuMemAlloc)>(sym("cuMemAlloc_v2"));
  l.api.cuMemFree = reinterpret_cast<decltype(l.api.cuMemFree)>(sym("cuMemFree_v2"));
  l.api.cuMemcpyDtoHAsync = reinterpret_cast<decltype(l.api.cuMemcpyDtoHAsync)>(sym("cuMemcpyDtoHAsync_v2"));
  l.api.cuMemcpyHtoDAsync = reinterpret_cast<decltype(l.api.cuMemcpyHtoDAsync)>(sym("cuMemcpyHtoDAsync_v2"));
  l.api.cuStreamCreate = reinterpret_cast<decltype(l.api.cuStreamCreate)>(sym("cuStreamCreate"));
  l.api.cuStreamDestroy = reinterpret_cast<decltype(l.api.cuStreamDestroy)>(sym("cuStreamDestroy_v2"));
  l.api.cuStreamSynchronize = reinterpret_cast<decltype(l.api.cuStreamSynchronize)>(sym("cuStreamSynchronize"));
  return l;
}

}  // namespace

const LaunchApi& launch_api() {
  static const Loaded loaded = load();
  if (!loaded.error.empty()) fail(MOEQ_STATUS_CODE_UNAVAILABLE, loaded.error);
  return loaded.api;
}

void check_cu(int result, const char* what) {
  if (result == 0) return;
  const char* name = nullptr;
  if (launch_api().cuGetErrorName) launch_api().cuGetErrorName(result, &name);
  fail(MOEQ_STATUS_CODE_INTERNAL, std::string(what) + ": " + (name ? name : "CUDA error " + std::to_string(result)));
}

void use_device(int ordinal) {
  const LaunchApi& api = launch_api();
  static std::mutex mutex;
  static std::map<int, CuContext> retained;  // NOTE: kept for the life of the process, like the host's
  CuContext ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = retained.find(ordinal);
    if (it == retained.end()) {
      int dev = 0;
      check_cu(api.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
      check_cu(api.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
      retained.emplace(ordinal, ctx);
    } else {
      ctx = it->second;
    }
  }
  check_cu(api.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

OwnStream::OwnStream() {
  constexpr unsigned kNonBlocking = 1;  // CU_STREAM_NON_BLOCKING
  check_cu(launch_api().cuStreamCreate(&stream_, kNonBlocking), "cuStreamCreate");
}

OwnStream::~OwnStream() {
  if (stream_ == nullptr) return;
  launch_api().cuStreamSynchronize(stream_);
  launch_api().cuStreamDestroy(stream_);
}

void OwnStream::sync(const char* what) const { check_cu(launch_api().cuStreamSynchronize(stream_), what); }

void read_device(int ordinal, void* dst, CuDevicePtr src, size_t bytes, const char* what) {
  if (bytes == 0) return;
  use_device(ordinal);
  OwnStream s;
  check_cu(launch_api().cuMemcpyDtoHAsync(dst, src, bytes, s.get()), what);
  s.sync(what);
}

}  // namespace moeq::ct::gpu
