#include "cuda_launch.hpp"

#include <moeq/error.hpp>

#include <dlfcn.h>

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

}  // namespace moeq::ct::gpu
