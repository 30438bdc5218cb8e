// Parameters on a CUDA device (host services, host_services.cpp): device allocations in the
// primary context, and the per-layer writer that carries copy_to_param / param_fill bytes to
// the device through pinned staging. Rows are packed (and cast) into one of two page-locked
// chunks while the other chunk's copies run; a chunk is reused once the event recorded after
// its copies has completed. finish() queues what is left and waits, so that the plugin's
// process_after_loading sees every byte.
#pragma once
#include <moeq/cuda_driver.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace moeq::host {

// cuMemAlloc on device `ordinal`; Error(OUT_OF_MEMORY / UNAVAILABLE) naming `what`.
cuda::CUdeviceptr device_allocate(int ordinal, std::size_t bytes, const std::string& what);
void device_release(int ordinal, cuda::CUdeviceptr ptr) noexcept;
// Device-to-host read on a stream of its own, waited for (read_param, scale checks).
void device_read(int ordinal, void* dst, cuda::CUdeviceptr src, std::size_t bytes);

class DeviceWrites {
 public:
  explicit DeviceWrites(int ordinal);
  ~DeviceWrites();  // waits for queued copies (errors ignored: finish() reports them)
  DeviceWrites(const DeviceWrites&) = delete;
  DeviceWrites& operator=(const DeviceWrites&) = delete;

  // Bytes one reserve() may ask for at most.
  std::size_t chunk_bytes() const;
  // Room for `bytes` staged bytes bound for device address `dst`; the caller fills them before
  // the next call. May queue the full chunk and wait for the other one.
  std::byte* reserve(cuda::CUdeviceptr dst, std::size_t bytes);
  // Queues every staged byte and waits until the device holds them. Throws naming the call.
  void finish();
  // Device-to-device copies on the writer's stream, waited for before returning (the source is
  // the plugin's, reused as soon as copy_to_param returns).
  struct DevicePiece {
    cuda::CUdeviceptr dst, src;
    std::size_t bytes;
  };
  void copy_from_device(const std::vector<DevicePiece>& pieces);

  struct Set;  // pooled staging (device_writes.cpp)

 private:
  struct Segment {
    cuda::CUdeviceptr dst;
    std::size_t offset, bytes;
  };
  void submit();  // queue the current chunk's segments, record its event, switch chunks

  int ordinal_;
  Set* set_ = nullptr;  // from the process-wide pool; returned on destruction
  int current_ = 0;
  std::size_t used_ = 0;
  std::vector<Segment> segments_;
  bool pending_[2] = {false, false};
};

}  // namespace moeq::host
