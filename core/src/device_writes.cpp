#include "device_writes.hpp"

#include <moeq/error.hpp>
#include <moeq/staged_upload.hpp>

#include <map>
#include <memory>
#include <mutex>

namespace moeq::host {

using cuda::CUdeviceptr;
using cuda::CUresult;
using cuda::kSuccess;

namespace {

constexpr std::size_t kChunkBytes = std::size_t{8} << 20;

}  // namespace

// Two pinned chunks, their events and one stream. Sets are pooled per device for the life of
// the process (a layer load takes one, its finish gives it back), so concurrent layer loads
// each have their own and no load pays for page-locking memory twice.
struct DeviceWrites::Set {
  cuda::PinnedBuffer chunk[2];
  cuda::CUevent done[2] = {nullptr, nullptr};
  cuda::CUstream stream = nullptr;
  Set() = default;
  Set(const Set&) = delete;
  Set& operator=(const Set&) = delete;
  ~Set() {  // only a set whose construction failed part way is destroyed; pooled ones live on
    const cuda::DriverApi& d = cuda::require();
    for (cuda::CUevent e : done)
      if (e != nullptr) d.cuEventDestroy_v2(e);
    if (stream != nullptr) d.cuStreamDestroy_v2(stream);
  }
};

namespace {

std::mutex g_pool_mutex;
std::map<int, std::vector<DeviceWrites::Set*>>& pool() {
  static auto* p = new std::map<int, std::vector<DeviceWrites::Set*>>();  // NOTE: lives to exit
  return *p;
}

}  // namespace

CUdeviceptr device_allocate(int ordinal, std::size_t bytes, const std::string& what) {
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(ordinal);
  CUdeviceptr p = 0;
  const CUresult r = d.cuMemAlloc_v2(&p, bytes == 0 ? 1 : bytes);
  if (r != kSuccess)
    fail(r == 2 ? MOEQ_STATUS_CODE_OUT_OF_MEMORY : MOEQ_STATUS_CODE_INTERNAL,
         what + ": " + std::to_string(bytes) + " bytes on cuda:" + std::to_string(ordinal) + ": " +
             cuda::describe(&d, r));
  return p;
}

void device_release(int ordinal, CUdeviceptr ptr) noexcept {
  if (ptr == 0 || !cuda::available()) return;
  try {
    cuda::use_primary_context(ordinal);
    cuda::require().cuMemFree_v2(ptr);
  } catch (...) {
  }
}

void device_read(int ordinal, void* dst, CUdeviceptr src, std::size_t bytes) {
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(ordinal);
  cuda::CUstream s = nullptr;
  MOEQ_CU_CHECK(d.cuStreamCreate(&s, cuda::kStreamNonBlocking));
  const CUresult copy = d.cuMemcpyDtoHAsync_v2(dst, src, bytes, s);
  const CUresult sync = copy == kSuccess ? d.cuStreamSynchronize(s) : copy;
  d.cuStreamDestroy_v2(s);
  MOEQ_CU_CHECK(sync);
}

DeviceWrites::DeviceWrites(int ordinal) : ordinal_(ordinal) {
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(ordinal);
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    auto& free = pool()[ordinal];
    if (!free.empty()) {
      set_ = free.back();
      free.pop_back();
    }
  }
  if (set_ == nullptr) {
    auto s = std::make_unique<Set>();
    for (int i = 0; i < 2; ++i) {
      s->chunk[i] = cuda::PinnedBuffer(kChunkBytes);
      MOEQ_CU_CHECK(d.cuEventCreate(&s->done[i], cuda::kEventDefault));
    }
    MOEQ_CU_CHECK(d.cuStreamCreate(&s->stream, cuda::kStreamNonBlocking));
    set_ = s.release();
  }
}

DeviceWrites::~DeviceWrites() {
  if (set_ == nullptr) return;
  if (cuda::available()) cuda::require().cuStreamSynchronize(set_->stream);
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  pool()[ordinal_].push_back(set_);
}

std::size_t DeviceWrites::chunk_bytes() const { return kChunkBytes; }

std::byte* DeviceWrites::reserve(CUdeviceptr dst, std::size_t bytes) {
  if (bytes > kChunkBytes) fail(MOEQ_STATUS_CODE_INTERNAL, "device staging: a piece larger than a chunk");
  if (used_ + bytes > kChunkBytes) submit();
  if (pending_[current_]) {
    MOEQ_CU_CHECK(cuda::require().cuEventSynchronize(set_->done[current_]));
    pending_[current_] = false;
  }
  std::byte* p = set_->chunk[current_].data() + used_;
  if (!segments_.empty() && segments_.back().dst + segments_.back().bytes == dst &&
      segments_.back().offset + segments_.back().bytes == used_)
    segments_.back().bytes += bytes;
  else
    segments_.push_back({dst, used_, bytes});
  used_ += bytes;
  return p;
}

void DeviceWrites::submit() {
  if (segments_.empty()) return;
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(ordinal_);
  const std::byte* base = set_->chunk[current_].data();
  for (const Segment& s : segments_)
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(s.dst, base + s.offset, s.bytes, set_->stream));
  MOEQ_CU_CHECK(d.cuEventRecord(set_->done[current_], set_->stream));
  pending_[current_] = true;
  segments_.clear();
  used_ = 0;
  current_ ^= 1;
}

void DeviceWrites::copy_from_device(const std::vector<DevicePiece>& pieces) {
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(ordinal_);
  for (const DevicePiece& p : pieces) MOEQ_CU_CHECK(d.cuMemcpyDtoDAsync_v2(p.dst, p.src, p.bytes, set_->stream));
  MOEQ_CU_CHECK(d.cuStreamSynchronize(set_->stream));
}

void DeviceWrites::finish() {
  submit();
  MOEQ_CU_CHECK(cuda::require().cuStreamSynchronize(set_->stream));
  pending_[0] = pending_[1] = false;
}

}  // namespace moeq::host
