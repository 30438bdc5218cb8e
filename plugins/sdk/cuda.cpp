#include <moeq/error.hpp>
#include <moeq/sdk/cuda.hpp>

#include <dlfcn.h>

#include <cstddef>

#include <map>
#include <mutex>

namespace moeq::sdk::cuda {

DriverLoad load_driver(const char* library) {
  DriverLoad out;
  // RTLD_LOCAL: the driver's symbols stay out of the global namespace. The library is never
  // closed (a driver's destructors and threads do not expect it).
  void* lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    out.error = std::string("no CUDA driver (") + library + ": " + (why ? why : "not found") + ")";
    return out;
  }
  auto d = std::make_unique<Driver>();
  const std::pair<void**, const char*> symbols[] = {
      {reinterpret_cast<void**>(&d->cuInit), "cuInit"},
      {reinterpret_cast<void**>(&d->cuGetErrorName), "cuGetErrorName"},
      {reinterpret_cast<void**>(&d->cuDeviceGet), "cuDeviceGet"},
      {reinterpret_cast<void**>(&d->cuDeviceGetAttribute), "cuDeviceGetAttribute"},
      {reinterpret_cast<void**>(&d->cuDevicePrimaryCtxRetain), "cuDevicePrimaryCtxRetain"},
      {reinterpret_cast<void**>(&d->cuCtxSetCurrent), "cuCtxSetCurrent"},
      {reinterpret_cast<void**>(&d->cuModuleGetFunction), "cuModuleGetFunction"},
      {reinterpret_cast<void**>(&d->cuFuncSetAttribute), "cuFuncSetAttribute"},
      {reinterpret_cast<void**>(&d->cuLaunchKernel), "cuLaunchKernel"},
      {reinterpret_cast<void**>(&d->cuMemAlloc), "cuMemAlloc_v2"},
      {reinterpret_cast<void**>(&d->cuMemFree), "cuMemFree_v2"},
      {reinterpret_cast<void**>(&d->cuMemcpyDtoHAsync), "cuMemcpyDtoHAsync_v2"},
      {reinterpret_cast<void**>(&d->cuMemcpyHtoDAsync), "cuMemcpyHtoDAsync_v2"},
      {reinterpret_cast<void**>(&d->cuStreamCreate), "cuStreamCreate"},
      {reinterpret_cast<void**>(&d->cuStreamDestroy), "cuStreamDestroy_v2"},
      {reinterpret_cast<void**>(&d->cuStreamSynchronize), "cuStreamSynchronize"},
      {reinterpret_cast<void**>(&d->cuTensorMapEncodeTiled), "cuTensorMapEncodeTiled"},
  };
  for (const auto& [slot, name] : symbols) {
    *slot = dlsym(lib, name);
    if (*slot == nullptr) {
      out.error = std::string(library) + " lacks " + name + ": the driver is too old";
      return out;
    }
  }
  // Optional entry points: absent from older drivers, their callers fall back.
  d->cuLaunchKernelEx = reinterpret_cast<decltype(d->cuLaunchKernelEx)>(dlsym(lib, "cuLaunchKernelEx"));
  out.driver = std::move(d);
  return out;
}

namespace {

DriverLoad load_and_init() {
  DriverLoad l = load_driver("libcuda.so.1");
  if (l.driver) {
    if (const int r = l.driver->cuInit(0); r != 0) {
      const char* name = nullptr;
      l.driver->cuGetErrorName(r, &name);
      l.error = std::string("no CUDA driver (cuInit failed: ") + (name ? name : std::to_string(r)) + ")";
      l.driver.reset();
    }
  }
  return l;
}

}  // namespace

const Driver& driver() {
  static const DriverLoad loaded = load_and_init();  // C++ magic statics: one thread loads
  if (!loaded.driver) fail(MOEQ_STATUS_CODE_UNAVAILABLE, loaded.error);
  return *loaded.driver;
}

namespace {

// The driver's CUlaunchAttribute and CUlaunchConfig (cuda.h, CUDA 12 on), spelled here so the
// SDK needs no CUDA header.
struct alignas(8) LaunchAttribute {  // the driver's value union holds pointers: 8-byte aligned
  int id;
  char pad[4];
  union {
    char bytes[64];
    int programmatic_stream_serialization_allowed;
  } value;
};
static_assert(sizeof(LaunchAttribute) == 72 && alignof(LaunchAttribute) == 8, "CUlaunchAttribute is 72 bytes, 8-aligned");
struct LaunchConfig {
  unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, smem;
  Stream stream;
  LaunchAttribute* attrs;
  unsigned num_attrs;
};
static_assert(sizeof(LaunchConfig) == 56 && offsetof(LaunchConfig, stream) == 32 && offsetof(LaunchConfig, num_attrs) == 48,
              "CUlaunchConfig layout");
constexpr int kAttributeProgrammaticStreamSerialization = 6;  // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION

}  // namespace

void launch(Function f, const unsigned grid[3], const unsigned block[3], unsigned smem, Stream stream, void** params,
            bool programmatic, const char* what) {
  const Driver& d = driver();
  if (!programmatic || d.cuLaunchKernelEx == nullptr) {
    check(d.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, stream, params, nullptr),
          what);
    return;
  }
  LaunchAttribute attr{};
  attr.id = kAttributeProgrammaticStreamSerialization;
  attr.value.programmatic_stream_serialization_allowed = 1;
  LaunchConfig config{grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, stream, &attr, 1};
  check(d.cuLaunchKernelEx(&config, f, params, nullptr), what);
}

void check(int result, const char* what) {
  if (result == 0) return;
  const char* name = nullptr;
  driver().cuGetErrorName(result, &name);
  fail(MOEQ_STATUS_CODE_INTERNAL, std::string(what) + ": " + (name ? name : "CUDA error " + std::to_string(result)));
}

void use_device(int ordinal) {
  const Driver& d = driver();
  static std::mutex mutex;
  static std::map<int, Context> retained;  // kept for the life of the process, like the host's
  Context ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = retained.find(ordinal);
    if (it == retained.end()) {
      int dev = 0;
      check(d.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
      check(d.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
      retained.emplace(ordinal, ctx);
    } else {
      ctx = it->second;
    }
  }
  check(d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

OwnStream::OwnStream() {
  constexpr unsigned kNonBlocking = 1;  // CU_STREAM_NON_BLOCKING
  check(driver().cuStreamCreate(&stream_, kNonBlocking), "cuStreamCreate");
}

OwnStream::~OwnStream() {
  if (stream_ == nullptr) return;
  driver().cuStreamSynchronize(stream_);
  driver().cuStreamDestroy(stream_);
}

void OwnStream::sync(const char* what) const { check(driver().cuStreamSynchronize(stream_), what); }

void read_device(int ordinal, void* dst, DevicePtr src, size_t bytes, const char* what) {
  if (bytes == 0) return;
  use_device(ordinal);
  OwnStream s;
  check(driver().cuMemcpyDtoHAsync(dst, src, bytes, s.get()), what);
  s.sync(what);
}

}  // namespace moeq::sdk::cuda
