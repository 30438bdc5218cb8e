#include "driver.hpp"

#include <moeq/error.hpp>

#include <cuda.h>
#include <dlfcn.h>

#include <mutex>

namespace moeq::gpu_harness {
namespace {

// NOTE: cuda.h maps the plain names to their _v2 (_v3, _ptsz...) symbols through macros, so
// each entry is resolved under the exact versioned name the header declares.
struct Api {
  decltype(&::cuInit) init;
  decltype(&::cuGetErrorName) error_name;
  decltype(&::cuDriverGetVersion) driver_version;
  decltype(&::cuDeviceGet) device_get;
  decltype(&::cuDeviceGetCount) device_count;
  decltype(&::cuDeviceGetName) device_name;
  decltype(&::cuDeviceGetAttribute) attribute;
  decltype(&::cuDeviceTotalMem) total_mem;
  decltype(&::cuDevicePrimaryCtxRetain) retain;
  decltype(&::cuCtxSetCurrent) set_current;
  decltype(&::cuMemAlloc) mem_alloc;
  decltype(&::cuMemFree) mem_free;
  decltype(&::cuMemGetInfo) mem_info;
  decltype(&::cuMemcpyHtoD) htod;
  decltype(&::cuMemcpyDtoH) dtoh;
  decltype(&::cuMemcpyDtoDAsync) dtod_async;
  decltype(&::cuMemsetD8Async) memset_async;
  decltype(&::cuStreamCreate) stream_create;
  decltype(&::cuStreamSynchronize) stream_sync;
  decltype(&::cuEventCreate) event_create;
  decltype(&::cuEventRecord) event_record;
  decltype(&::cuEventSynchronize) event_sync;
  decltype(&::cuEventElapsedTime) event_elapsed;
  decltype(&::cuModuleLoadData) module_load;
  decltype(&::cuModuleGetFunction) get_function;
  decltype(&::cuLaunchKernel) launch;
  decltype(&::cuStreamBeginCapture) begin_capture;
  decltype(&::cuStreamEndCapture) end_capture;
  decltype(&::cuGraphInstantiateWithFlags) instantiate;
  decltype(&::cuGraphLaunch) graph_launch;
  decltype(&::cuGraphExecDestroy) graph_exec_destroy;
  decltype(&::cuGraphDestroy) graph_destroy;
};

#define MOEQ_STR2(x) #x
#define MOEQ_STR(x) MOEQ_STR2(x)

struct Opened {
  Api api{};
  std::string error;
};

const Opened& opened() {
  static const Opened o = [] {
    Opened r;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      r.error = std::string("no CUDA driver (libcuda.so.1: ") + (why ? why : "not found") + ")";
      return r;
    }
    auto sym = [&](auto& slot, const char* name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(lib, name));
      if (slot == nullptr && r.error.empty()) r.error = std::string("libcuda.so.1 lacks ") + name;
    };
    Api& a = r.api;
    sym(a.init, MOEQ_STR(cuInit));
    sym(a.error_name, MOEQ_STR(cuGetErrorName));
    sym(a.driver_version, MOEQ_STR(cuDriverGetVersion));
    sym(a.device_get, MOEQ_STR(cuDeviceGet));
    sym(a.device_count, MOEQ_STR(cuDeviceGetCount));
    sym(a.device_name, MOEQ_STR(cuDeviceGetName));
    sym(a.attribute, MOEQ_STR(cuDeviceGetAttribute));
    sym(a.total_mem, MOEQ_STR(cuDeviceTotalMem));
    sym(a.retain, MOEQ_STR(cuDevicePrimaryCtxRetain));
    sym(a.set_current, MOEQ_STR(cuCtxSetCurrent));
    sym(a.mem_alloc, MOEQ_STR(cuMemAlloc));
    sym(a.mem_free, MOEQ_STR(cuMemFree));
    sym(a.mem_info, MOEQ_STR(cuMemGetInfo));
    sym(a.htod, MOEQ_STR(cuMemcpyHtoD));
    sym(a.dtoh, MOEQ_STR(cuMemcpyDtoH));
    sym(a.dtod_async, MOEQ_STR(cuMemcpyDtoDAsync));
    sym(a.memset_async, MOEQ_STR(cuMemsetD8Async));
    sym(a.stream_create, MOEQ_STR(cuStreamCreate));
    sym(a.stream_sync, MOEQ_STR(cuStreamSynchronize));
    sym(a.event_create, MOEQ_STR(cuEventCreate));
    sym(a.event_record, MOEQ_STR(cuEventRecord));
    sym(a.event_sync, MOEQ_STR(cuEventSynchronize));
    sym(a.event_elapsed, MOEQ_STR(cuEventElapsedTime));
    sym(a.module_load, MOEQ_STR(cuModuleLoadData));
    sym(a.get_function, MOEQ_STR(cuModuleGetFunction));
    sym(a.launch, MOEQ_STR(cuLaunchKernel));
    sym(a.begin_capture, MOEQ_STR(cuStreamBeginCapture));
    sym(a.end_capture, MOEQ_STR(cuStreamEndCapture));
    sym(a.instantiate, MOEQ_STR(cuGraphInstantiateWithFlags));
    sym(a.graph_launch, MOEQ_STR(cuGraphLaunch));
    sym(a.graph_exec_destroy, MOEQ_STR(cuGraphExecDestroy));
    sym(a.graph_destroy, MOEQ_STR(cuGraphDestroy));
    if (r.error.empty() && a.init(0) != CUDA_SUCCESS) r.error = "no CUDA device (cuInit failed)";
    int n = 0;
    if (r.error.empty() && (a.device_count(&n) != CUDA_SUCCESS || n == 0)) r.error = "no CUDA device";
    return r;
  }();
  return o;
}

const Api& api() {
  const Opened& o = opened();
  if (!o.error.empty()) fail(MOEQ_STATUS_CODE_UNAVAILABLE, o.error);
  return o.api;
}

void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* name = nullptr;
  api().error_name(r, &name);
  fail(MOEQ_STATUS_CODE_INTERNAL, std::string(what) + ": " + (name ? name : std::to_string(r)));
}

}  // namespace

std::string Driver::unavailable_reason() { return opened().error; }

Driver& Driver::open(int ordinal) {
  static std::once_flag once;
  static Driver d;
  std::call_once(once, [&] {
    const Api& a = api();
    CUdevice dev;
    check(a.device_get(&dev, ordinal), "cuDeviceGet");
    CUcontext ctx;
    check(a.retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(a.set_current(ctx), "cuCtxSetCurrent");
    char name[256] = {};
    a.device_name(name, sizeof(name), dev);
    d.info_.name = name;
    a.attribute(&d.info_.sm_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    a.attribute(&d.info_.sm_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    a.attribute(&d.info_.multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    a.attribute(&d.info_.l2_bytes, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev);
    a.attribute(&d.info_.smem_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev);
    a.total_mem(&d.info_.total_memory, dev);
    a.driver_version(&d.info_.driver_version);
  });
  // NOTE: the context is made current on every thread that opens the driver.
  CUcontext ctx;
  CUdevice dev;
  check(api().device_get(&dev, ordinal), "cuDeviceGet");
  check(api().retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
  check(api().set_current(ctx), "cuCtxSetCurrent");
  return d;
}

std::string Driver::arch() const {
  const int cc = info_.sm_major * 10 + info_.sm_minor;
  return "sm_" + std::to_string(cc) + (cc >= 90 ? "a" : "");
}

DevPtr Driver::alloc(size_t bytes) {
  CUdeviceptr p = 0;
  check(api().mem_alloc(&p, bytes), ("cuMemAlloc(" + std::to_string(bytes) + " bytes)").c_str());
  return p;
}
void Driver::free(DevPtr p) {
  if (p) api().mem_free(p);
}
void Driver::upload(DevPtr dst, const void* src, size_t bytes) {
  if (bytes) check(api().htod(dst, src, bytes), "cuMemcpyHtoD");
}
void Driver::download(void* dst, DevPtr src, size_t bytes) {
  if (bytes) check(api().dtoh(dst, src, bytes), "cuMemcpyDtoH");
}
void Driver::copy_async(DevPtr dst, DevPtr src, size_t bytes, Stream s) {
  check(api().dtod_async(dst, src, bytes, static_cast<CUstream>(s)), "cuMemcpyDtoDAsync");
}
void Driver::memset_async(DevPtr dst, unsigned char value, size_t bytes, Stream s) {
  check(api().memset_async(dst, value, bytes, static_cast<CUstream>(s)), "cuMemsetD8Async");
}
size_t Driver::free_memory() {
  size_t f = 0, t = 0;
  check(api().mem_info(&f, &t), "cuMemGetInfo");
  return f;
}
Stream Driver::stream() {
  CUstream s;
  check(api().stream_create(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  return s;
}
void Driver::sync(Stream s) { check(api().stream_sync(static_cast<CUstream>(s)), "cuStreamSynchronize"); }
Event Driver::event() {
  CUevent e;
  check(api().event_create(&e, CU_EVENT_DEFAULT), "cuEventCreate");
  return e;
}
void Driver::record(Event e, Stream s) {
  check(api().event_record(static_cast<CUevent>(e), static_cast<CUstream>(s)), "cuEventRecord");
}
float Driver::elapsed_ms(Event a, Event b) {
  check(api().event_sync(static_cast<CUevent>(b)), "cuEventSynchronize");
  float ms = 0;
  check(api().event_elapsed(&ms, static_cast<CUevent>(a), static_cast<CUevent>(b)), "cuEventElapsedTime");
  return ms;
}
Module Driver::load(std::span<const uint8_t> cubin) {
  CUmodule m;
  check(api().module_load(&m, cubin.data()), "cuModuleLoadData");
  return m;
}
void Driver::launch(Module m, const char* kernel, unsigned gx, unsigned block, void** params, Stream s) {
  CUfunction f;
  check(api().get_function(&f, static_cast<CUmodule>(m), kernel), kernel);
  check(api().launch(f, gx, 1, 1, block, 1, 1, 0, static_cast<CUstream>(s), params, nullptr), kernel);
}
void Driver::begin_capture(Stream s) {
  check(api().begin_capture(static_cast<CUstream>(s), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
}
GraphExec Driver::end_capture(Stream s) {
  CUgraph g;
  check(api().end_capture(static_cast<CUstream>(s), &g), "cuStreamEndCapture");
  CUgraphExec e;
  check(api().instantiate(&e, g, 0), "cuGraphInstantiate");
  api().graph_destroy(g);
  return e;
}
void Driver::graph_launch(GraphExec g, Stream s) {
  check(api().graph_launch(static_cast<CUgraphExec>(g), static_cast<CUstream>(s)), "cuGraphLaunch");
}
void Driver::graph_destroy(GraphExec g) { api().graph_exec_destroy(static_cast<CUgraphExec>(g)); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) Driver::open().free(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = 0;
    o.bytes_ = 0;
  }
  return *this;
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) Driver::open().free(ptr_);
}

}  // namespace moeq::gpu_harness
