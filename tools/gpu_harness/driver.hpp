// The driver entry points the harness uses (allocation, copies, events, graphs, modules),
// opened at run time from libcuda.so.1 so that the binary starts on machines without a GPU
// and says so. Errors throw moeq::Error naming the call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

using DevPtr = unsigned long long;
using Stream = void*;
using Event = void*;
using Module = void*;
using Graph = void*;
using GraphExec = void*;

struct DeviceInfo {
  std::string name;
  int sm_major = 0, sm_minor = 0, multiprocessors = 0, l2_bytes = 0, smem_optin = 0;
  size_t total_memory = 0;
  int driver_version = 0;
};

class Driver {
 public:
  // Opens the driver and makes device `ordinal`'s primary context current. Throws
  // moeq::Error(UNAVAILABLE) "no CUDA driver ..." or "no CUDA device ...".
  static Driver& open(int ordinal = 0);
  // Why open() would fail, or empty when a device is usable; never throws.
  static std::string unavailable_reason();

  const DeviceInfo& info() const { return info_; }
  std::string arch() const;  // "sm_90a" on Hopper

  DevPtr alloc(size_t bytes);
  void free(DevPtr p);
  void upload(DevPtr dst, const void* src, size_t bytes);
  void download(void* dst, DevPtr src, size_t bytes);
  void copy_async(DevPtr dst, DevPtr src, size_t bytes, Stream s);
  void memset_async(DevPtr dst, unsigned char value, size_t bytes, Stream s);
  size_t free_memory();

  Stream stream();  // a non-blocking stream, kept for the process
  void sync(Stream s);
  Event event();
  void record(Event e, Stream s);
  float elapsed_ms(Event a, Event b);  // synchronizes on b

  Module load(std::span<const uint8_t> cubin);
  void launch(Module m, const char* kernel, unsigned gx, unsigned block, void** params, Stream s);

  void begin_capture(Stream s);
  GraphExec end_capture(Stream s);  // instantiated; the graph itself is destroyed
  void graph_launch(GraphExec g, Stream s);
  void graph_destroy(GraphExec g);

 private:
  Driver() = default;
  DeviceInfo info_;
};

// Owns a device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : ptr_(bytes ? Driver::open().alloc(bytes) : 0), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = 0, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  DevPtr get() const { return ptr_; }
  template <class T>
  T* as() const { return reinterpret_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  DevPtr ptr_ = 0;
  size_t bytes_ = 0;
};

}  // namespace moeq::gpu_harness
