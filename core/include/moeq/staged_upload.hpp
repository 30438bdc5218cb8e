// Host-to-device upload through pinned staging: reader threads copy host bytes (a mapped
// checkpoint, host parameters) into a pool of page-locked chunks, each thread queues
// cuMemcpyHtoDAsync on its own stream, and a chunk is reused once the event recorded after
// its copies has completed. Every byte crosses once; the planning is pure host code.
#pragma once
#include <moeq/cuda_driver.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moeq::cuda {

// One transfer: `bytes` from host `src` to device `dst`. `name` labels errors.
struct UploadJob {
  const std::byte* src = nullptr;
  CUdeviceptr dst = 0;
  std::size_t bytes = 0;
  std::string name;
};

// A run of one job's bytes placed in a staging chunk.
struct ChunkPiece {
  std::size_t job = 0;           // index into the job list
  std::size_t job_offset = 0;    // first byte of the job this piece carries
  std::size_t chunk_offset = 0;  // where it lies in the chunk
  std::size_t bytes = 0;
};

struct ChunkPlan {
  std::vector<ChunkPiece> pieces;
  std::size_t bytes = 0;  // sum of the pieces, at most the chunk size
};

// Packs jobs of `job_bytes` (in order) into chunks of at most `chunk_bytes`: small jobs share
// a chunk, large ones are cut across several; every byte of every job lands in exactly one
// piece, and pieces of one chunk do not overlap. Empty jobs get no piece. Each piece starts
// `align`-aligned inside its chunk (a power of two; 1 = packed). Throws on chunk_bytes == 0.
std::vector<ChunkPlan> plan_chunks(std::span<const std::size_t> job_bytes, std::size_t chunk_bytes,
                                   std::size_t align = 256);

// Page-locked host memory (cuMemHostAlloc), freed on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t bytes);
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();
  std::byte* data() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Page-locked host memory made the other way: an anonymous mapping on 2 MiB boundaries, asked
// for transparent huge pages (`huge_pages`; else for 4 KiB pages), not inherited by a fork,
// touched by the calling thread, then registered with the driver (cuMemHostRegister). NULL where
// the mapping or the registration is refused. `touch_ms`, when given, receives the touch's
// milliseconds. Released (unregistered and unmapped) by unmap_page_locked.
std::byte* map_page_locked(std::size_t bytes, bool huge_pages, double* touch_ms = nullptr);
void unmap_page_locked(std::byte* p, std::size_t bytes);

// A device allocation (cuMemAlloc) in the current context, freed on destruction.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(std::size_t bytes);
  DeviceMemory(DeviceMemory&& o) noexcept;
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();
  CUdeviceptr get() const { return ptr_; }
  std::size_t size() const { return bytes_; }

 private:
  CUdeviceptr ptr_ = 0;
  std::size_t bytes_ = 0;
};

// Free and total device memory of the current context's device (cuMemGetInfo).
struct MemoryInfo {
  std::size_t free = 0, total = 0;
};
MemoryInfo memory_info();

struct StagingConfig {
  int device = 0;
  unsigned threads = 4;                     // reader threads, one stream each
  std::size_t chunk_bytes = std::size_t{16} << 20;
  unsigned chunks = 0;                      // staging chunks; 0 = max(8, 2 x threads)
};

struct UploadStats {
  std::size_t bytes = 0;   // job bytes moved
  std::size_t chunks = 0;  // staging chunks filled
  std::size_t copies = 0;  // cuMemcpy*Async calls
  double seconds = 0;      // wall time, first read to last copy complete
};

// The staging pool and streams of one device; reusable for many uploads, one at a time.
class StagedUploader {
 public:
  // Allocates the pinned pool, the streams and the events. Error(UNAVAILABLE) without a driver.
  explicit StagedUploader(StagingConfig config);
  ~StagedUploader();
  StagedUploader(const StagedUploader&) = delete;
  StagedUploader& operator=(const StagedUploader&) = delete;

  const StagingConfig& config() const { return config_; }
  std::size_t pinned_bytes() const;

  // Uploads every job and returns when the device holds every byte. Throws moeq::Error
  // naming the job and the driver call that failed.
  UploadStats upload(std::span<const UploadJob> jobs);
  // Downloads every job's device bytes through the same pool and compares them with the
  // host bytes. Returns "" when all match, else the first difference (job, byte offset).
  std::string verify(std::span<const UploadJob> jobs);

 private:
  struct Slot;
  struct Worker;
  // Uploads, or (with `mismatch`) downloads and compares.
  UploadStats transfer(std::span<const UploadJob> jobs, std::string* mismatch);
  void release();  // streams, events, pinned pool

  StagingConfig config_;
  CUcontext context_ = nullptr;
  std::vector<Slot> slots_;
  std::vector<Worker> workers_;
};

}  // namespace moeq::cuda
