// The writer that carries copy_to_param / param_fill bytes to device parameters (host
// services). Rows are packed (and cast) into page-locked chunks by the shared task pool's
// threads (task_pool.hpp), each chunk's copies are queued on a stream of its own, and a chunk is
// reused once the event recorded after its copies has completed; so the bytes of one layer
// move on every pool thread and several copies are in flight at once.
//
// A write whose source stays valid for the whole load (the checkpoint's mapped bytes: see
// `stable`) returns at once: such writes are gathered until they fill a chunk, which is then
// queued, so that the chunks in flight are full ones. Any other source (a plugin's own buffer,
// valid only during its call) is packed before write() returns, its copies still running.
// finish() sends what is still gathered and waits for everything queued, so that
// process_after_loading sees every byte, and throws the first error of any of them, naming the
// tensors of its chunk.
//
// The device side is a StagingBackend: the CUDA driver in the library, a host-memory fake in the
// tests (then a device address is a host address).
#pragma once
#include <moeq/dtype.hpp>
#include <moeq/host.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace moeq::host {

class StagingBackend {
 public:
  virtual ~StagingBackend() = default;
  // Page-locked host memory, kept to the end of the process.
  virtual std::byte* allocate_pinned(std::size_t bytes) = 0;
  virtual void* create_stream() = 0;
  virtual void* create_event() = 0;
  // Makes device `ordinal` current on the calling thread.
  virtual void bind(int ordinal) = 0;
  // Host-to-device and device-to-device copies queued on `stream`.
  virtual void copy(uint64_t dst, const std::byte* src, std::size_t bytes, void* stream) = 0;
  virtual void copy_device(uint64_t dst, uint64_t src, std::size_t bytes, void* stream) = 0;
  virtual void record(void* event, void* stream) = 0;
  // Blocks until the work before the event's last record has completed; throws its error.
  virtual void wait(void* event) = 0;
};

// The CUDA driver's backend (the default).
std::unique_ptr<StagingBackend> cuda_staging_backend();

// The NaN/Inf scan of expert weights done while their bytes are packed into staging (the loader's
// choice for a load onto a device: the bytes are then read from the page cache once, not twice).
// `sources` are the checkpoint's float weights, each with its dtype. A run whose source lies in
// one, read as that dtype, contiguous and not cast, is scanned as it is copied; the scan stops at
// the first non-finite element, which is recorded with the bytes before it as scanned. What no
// pack scanned (a strided or cast copy, bytes a plugin read but never copied, the rest of a run
// after a non-finite element) the loader scans on the host afterwards, so that every byte the
// rank uses is checked exactly once or twice, never skipped.
class PackScans {
 public:
  struct Source {
    const std::byte* lo;
    const std::byte* hi;
    DType dtype;
  };
  using Range = std::pair<const std::byte*, const std::byte*>;
  explicit PackScans(std::vector<Source> sources);  // any order, repeats allowed; else no overlaps
  PackScans(const PackScans&) = delete;
  PackScans& operator=(const PackScans&) = delete;

  // Whether `count` contiguous elements of `dtype` at `src` lie in a source of that dtype.
  bool covers(const std::byte* src, int64_t count, DType dtype) const;
  // Copies `count` elements of `dtype` from `src` to `out` (as memcpy), scanning them on the
  // way, and records what was scanned (and the first non-finite element, if any). `streaming`:
  // `out` is staging that only the copy engine reads next (non-temporal stores, stream_copy.hpp).
  void copy_scanning(std::byte* out, const std::byte* src, int64_t count, DType dtype, bool streaming);

  // The scanned ranges, sorted and merged; the parts of [lo, hi) no pack scanned; the non-finite
  // elements found, ascending.
  std::vector<Range> scanned() const;
  std::vector<Range> unscanned(const std::byte* lo, const std::byte* hi) const;
  std::vector<const std::byte*> non_finite() const;

 private:
  std::vector<Source> sources_;  // sorted by lo
  mutable std::mutex mutex_;
  IntervalSet scanned_;  // byte addresses
  std::vector<const std::byte*> bad_;
};

// One stretch of a write: `count` elements to device address `dst` (contiguous, of `dst_dtype`),
// from `src` every `stride` source elements (of `src_dtype`, cast when they differ), or with
// `fill` every element equal to `pattern`'s first dtype_size(dst_dtype) bytes.
struct StagingRun {
  uint64_t dst = 0;
  const std::byte* src = nullptr;
  int64_t count = 0;
  int64_t stride = 1;
  DType src_dtype = DType::U8, dst_dtype = DType::U8;
  bool fill = false;
  std::array<std::byte, 8> pattern{};
  // Set: the source is scanned for non-finite values as it is packed (PackScans::covers held).
  PackScans* scan = nullptr;
};


class DeviceWrites {
 public:
  explicit DeviceWrites(int ordinal);
  // Waits for what is queued (errors ignored: finish() reports them); writes still gathered
  // (small ones, stable ones short of a chunk) are dropped: only finish() sends them.
  ~DeviceWrites();
  DeviceWrites(const DeviceWrites&) = delete;
  DeviceWrites& operator=(const DeviceWrites&) = delete;

  // Queues `runs`, labelled `what` in errors. `stable`: the sources stay valid until finish().
  void write(std::vector<StagingRun> runs, bool stable, const std::string& what);
  // Waits until the device holds every byte queued; throws the first error.
  void finish();
  // Device-to-device copies, waited for before returning (the source is the plugin's, reused
  // as soon as copy_to_param returns).
  struct DevicePiece {
    uint64_t dst, src;
    std::size_t bytes;
  };
  void copy_from_device(const std::vector<DevicePiece>& pieces);

  struct State;  // shared with the queued tasks

 private:
  int ordinal_;
  std::shared_ptr<State> state_;
};

// The chunk pool's shape: chunks of `chunk_bytes` (a multiple of 256), at most `chunks` of them
// per device (allocated as needed). Defaults: 16 MiB chunks, MOEQ_LOAD_STAGING_MIB (default 256)
// MiB in all. Writes of fewer than `small_bytes` are gathered per layer and sent together.
struct StagingShape {
  std::size_t chunk_bytes = std::size_t{16} << 20;
  unsigned chunks = 16;
  std::size_t small_bytes = std::size_t{256} << 10;
};
StagingShape default_staging_shape();

// Tests: while alive, every DeviceWrites made for device `ordinal` uses `backend` and `shape`
// (a pool of its own, dropped with this object once its writers are gone).
class ScopedStagingBackend {
 public:
  ScopedStagingBackend(int ordinal, std::unique_ptr<StagingBackend> backend, StagingShape shape);
  ~ScopedStagingBackend();
  ScopedStagingBackend(const ScopedStagingBackend&) = delete;
  ScopedStagingBackend& operator=(const ScopedStagingBackend&) = delete;

 private:
  int ordinal_;
};

}  // namespace moeq::host
