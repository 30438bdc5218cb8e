// Pinned staging pool, reader threads with one stream each, chunks recycled through events.
#include <moeq/staged_upload.hpp>
#include <moeq/stream_copy.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include <sys/mman.h>

namespace moeq::cuda {

std::vector<ChunkPlan> plan_chunks(std::span<const std::size_t> job_bytes, std::size_t chunk_bytes,
                                   std::size_t align) {
  if (chunk_bytes == 0) fail("plan_chunks: chunk size must be positive");
  if (align == 0 || (align & (align - 1)) != 0)
    fail("plan_chunks: alignment must be a power of two, found " + std::to_string(align));
  std::vector<ChunkPlan> plans;
  ChunkPlan current;
  std::size_t used = 0;  // aligned end of the last piece in `current`
  auto close = [&] {
    if (!current.pieces.empty()) plans.push_back(std::move(current));
    current = ChunkPlan{};
    used = 0;
  };
  for (std::size_t j = 0; j < job_bytes.size(); ++j) {
    std::size_t done = 0;
    while (done < job_bytes[j]) {
      const std::size_t start = (used + align - 1) & ~(align - 1);
      if (start >= chunk_bytes) {
        close();
        continue;
      }
      const std::size_t take = std::min(job_bytes[j] - done, chunk_bytes - start);
      current.pieces.push_back({j, done, start, take});
      current.bytes += take;
      used = start + take;
      done += take;
      if (used >= chunk_bytes) close();
    }
  }
  close();
  return plans;
}

PinnedBuffer::PinnedBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const DriverApi& d = require();
  void* p = nullptr;
  MOEQ_CU_CHECK(d.cuMemHostAlloc(&p, bytes, kMemHostAllocPortable));
  data_ = static_cast<std::byte*>(p);
}
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    PinnedBuffer old(std::move(*this));
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) require().cuMemFreeHost(data_);
}

std::byte* map_page_locked(std::size_t bytes, bool huge_pages, double* touch_ms) {
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  if (bytes == 0) return nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  void* raw = ::mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  // Only the aligned `bytes` stay mapped.
  const auto lo = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t at = (lo + kHuge - 1) & ~(kHuge - 1);
  if (at > lo) ::munmap(raw, at - lo);
  if (lo + bytes + kHuge > at + bytes) ::munmap(reinterpret_cast<void*>(at + bytes), lo + bytes + kHuge - at - bytes);
  auto* p = reinterpret_cast<std::byte*>(at);
  ::madvise(p, bytes, huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);  // advice: small pages where huge ones are off
  // A forked child gets no copy: a page the copy engine reads must never be copied on write.
  ::madvise(p, bytes, MADV_DONTFORK);
  std::memset(p, 0, bytes);
  if (touch_ms != nullptr)
    *touch_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (require().cuMemHostRegister(p, bytes, kMemHostRegisterPortable) != kSuccess) {
    ::munmap(p, bytes);
    return nullptr;
  }
  return p;
}

void unmap_page_locked(std::byte* p, std::size_t bytes) {
  if (p == nullptr) return;
  require().cuMemHostUnregister(p);
  ::munmap(p, bytes);
}

DeviceMemory::DeviceMemory(std::size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const DriverApi& d = require();
  const CUresult r = d.cuMemAlloc_v2(&ptr_, bytes);
  if (r != kSuccess)
    throw_driver_error(r, ("cuMemAlloc_v2(" + std::to_string(bytes) + " bytes)").c_str(), __FILE__, __LINE__);
}
DeviceMemory::DeviceMemory(DeviceMemory&& o) noexcept
    : ptr_(std::exchange(o.ptr_, 0)), bytes_(std::exchange(o.bytes_, 0)) {}
DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    DeviceMemory old(std::move(*this));
    ptr_ = std::exchange(o.ptr_, 0);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
DeviceMemory::~DeviceMemory() {
  if (ptr_ != 0) require().cuMemFree_v2(ptr_);
}

MemoryInfo memory_info() {
  const DriverApi& d = require();
  MemoryInfo m;
  MOEQ_CU_CHECK(d.cuMemGetInfo_v2(&m.free, &m.total));
  return m;
}

struct StagedUploader::Slot {
  PinnedBuffer buffer;
  CUevent done = nullptr;
  bool pending = false;  // copies queued from this buffer; wait on `done` before refilling
};

struct StagedUploader::Worker {
  CUstream stream = nullptr;
};

StagedUploader::StagedUploader(StagingConfig config) : config_(config) {
  if (config_.threads == 0) config_.threads = 1;
  if (config_.chunk_bytes == 0) fail("staged upload: chunk size must be positive");
  if (config_.chunks == 0) config_.chunks = std::max(8u, 2 * config_.threads);
  const DriverApi& d = require();
  context_ = use_primary_context(config_.device);
  try {
    slots_.resize(config_.chunks);
    for (Slot& s : slots_) {
      s.buffer = PinnedBuffer(config_.chunk_bytes);
      MOEQ_CU_CHECK(d.cuEventCreate(&s.done, kEventDefault));
    }
    workers_.resize(config_.threads);
    for (Worker& w : workers_) MOEQ_CU_CHECK(d.cuStreamCreate(&w.stream, kStreamNonBlocking));
  } catch (...) {
    release();
    throw;
  }
}

StagedUploader::~StagedUploader() { release(); }

void StagedUploader::release() {
  if (!available()) return;
  const DriverApi& d = require();
  d.cuCtxSetCurrent(context_);
  for (Worker& w : workers_)
    if (w.stream != nullptr) {
      d.cuStreamSynchronize(w.stream);
      d.cuStreamDestroy_v2(w.stream);
      w.stream = nullptr;
    }
  for (Slot& s : slots_)
    if (s.done != nullptr) {
      d.cuEventDestroy_v2(s.done);
      s.done = nullptr;
    }
  workers_.clear();
  slots_.clear();  // frees the pinned buffers
}

std::size_t StagedUploader::pinned_bytes() const { return slots_.size() * config_.chunk_bytes; }

UploadStats StagedUploader::upload(std::span<const UploadJob> jobs) { return transfer(jobs, nullptr); }

std::string StagedUploader::verify(std::span<const UploadJob> jobs) {
  std::string mismatch;
  transfer(jobs, &mismatch);
  return mismatch;
}

UploadStats StagedUploader::transfer(std::span<const UploadJob> jobs, std::string* mismatch) {
  const DriverApi& d = require();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::size_t> sizes;
  sizes.reserve(jobs.size());
  for (const UploadJob& j : jobs) {
    if (j.bytes != 0 && (j.src == nullptr || j.dst == 0))
      fail("staged upload of '" + j.name + "': null source or destination for " + std::to_string(j.bytes) + " bytes");
    sizes.push_back(j.bytes);
  }
  const std::vector<ChunkPlan> plans = plan_chunks(sizes, config_.chunk_bytes);

  std::mutex mutex;
  std::condition_variable freed;
  std::deque<std::size_t> free_slots;
  for (std::size_t i = 0; i < slots_.size(); ++i) free_slots.push_back(i);
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> copies{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;

  auto worker = [&](Worker& w) {
    try {
      MOEQ_CU_CHECK(d.cuCtxSetCurrent(context_));
      for (std::size_t c = next.fetch_add(1); c < plans.size() && !stop.load(); c = next.fetch_add(1)) {
        std::size_t si;
        {
          std::unique_lock<std::mutex> lock(mutex);
          freed.wait(lock, [&] { return !free_slots.empty() || stop.load(); });
          if (stop.load()) return;
          si = free_slots.front();
          free_slots.pop_front();
        }
        Slot& slot = slots_[si];
        // NOTE: the event was recorded after the last copies out of this buffer (on whichever
        // stream queued them); refilling before it completes would race the DMA engine.
        if (slot.pending) MOEQ_CU_CHECK(d.cuEventSynchronize(slot.done));
        const ChunkPlan& plan = plans[c];
        if (mismatch == nullptr) {
          for (const ChunkPiece& p : plan.pieces)
            stream_copy(slot.buffer.data() + p.chunk_offset, jobs[p.job].src + p.job_offset, p.bytes);
          for (const ChunkPiece& p : plan.pieces) {
            const UploadJob& j = jobs[p.job];
            const CUresult r =
                d.cuMemcpyHtoDAsync_v2(j.dst + p.job_offset, slot.buffer.data() + p.chunk_offset, p.bytes, w.stream);
            if (r != kSuccess)
              throw_driver_error(r, ("cuMemcpyHtoDAsync_v2 of '" + j.name + "'").c_str(), __FILE__, __LINE__);
          }
          MOEQ_CU_CHECK(d.cuEventRecord(slot.done, w.stream));
          slot.pending = true;
        } else {
          for (const ChunkPiece& p : plan.pieces) {
            const UploadJob& j = jobs[p.job];
            const CUresult r =
                d.cuMemcpyDtoHAsync_v2(slot.buffer.data() + p.chunk_offset, j.dst + p.job_offset, p.bytes, w.stream);
            if (r != kSuccess)
              throw_driver_error(r, ("cuMemcpyDtoHAsync_v2 of '" + j.name + "'").c_str(), __FILE__, __LINE__);
          }
          MOEQ_CU_CHECK(d.cuEventRecord(slot.done, w.stream));
          MOEQ_CU_CHECK(d.cuEventSynchronize(slot.done));
          slot.pending = false;
          for (const ChunkPiece& p : plan.pieces) {
            const std::byte* got = slot.buffer.data() + p.chunk_offset;
            const std::byte* want = jobs[p.job].src + p.job_offset;
            if (std::memcmp(got, want, p.bytes) == 0) continue;
            std::size_t k = 0;
            while (got[k] == want[k]) ++k;
            std::lock_guard<std::mutex> lock(mutex);
            if (mismatch->empty())
              *mismatch = "tensor '" + jobs[p.job].name + "': device byte " + std::to_string(p.job_offset + k) +
                          " is " + std::to_string(static_cast<int>(got[k])) + ", expected " +
                          std::to_string(static_cast<int>(want[k])) + " (host copy)";
            break;
          }
        }
        copies.fetch_add(plan.pieces.size());
        {
          std::lock_guard<std::mutex> lock(mutex);
          free_slots.push_back(si);
        }
        freed.notify_one();
      }
      MOEQ_CU_CHECK(d.cuStreamSynchronize(w.stream));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      stop.store(true);
      freed.notify_all();
    }
  };
  std::vector<std::thread> threads;
  const std::size_t n = std::min<std::size_t>(workers_.size(), std::max<std::size_t>(plans.size(), 1));
  for (std::size_t t = 1; t < n; ++t) threads.emplace_back(worker, std::ref(workers_[t]));
  worker(workers_[0]);
  for (auto& t : threads) t.join();
  if (error) {
    // Leave no copy in flight out of the pool before the caller may free anything.
    for (Worker& w : workers_) d.cuStreamSynchronize(w.stream);
    for (Slot& s : slots_) s.pending = false;
    std::rethrow_exception(error);
  }
  UploadStats st;
  for (std::size_t s : sizes) st.bytes += s;
  st.chunks = plans.size();
  st.copies = copies.load();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace moeq::cuda
