#include "device_writes.hpp"

#include <moeq/error.hpp>
#include <moeq/staged_upload.hpp>
#include <moeq/stream_copy.hpp>
#include <moeq/task_pool.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace moeq::host {

using cuda::CUdeviceptr;
using cuda::CUresult;
using cuda::kSuccess;

// ------------------------------------------------------------------ the CUDA backend
namespace {

class CudaBackend final : public StagingBackend {
 public:
  std::byte* allocate_pinned(std::size_t bytes) override {
    // NOTE: kept to the end of the process, like the pool that holds it. On huge pages where the
    // kernel gives them: cuMemHostAlloc zeroes and pins 4 KiB pages under the driver's lock
    // (256 MiB in about 77 ms on the H100's host, one chunk after another); here the threads that
    // need chunks fault theirs in at once, and registering 2 MiB pages is quick (256 MiB: about
    // 5 ms). cuMemHostAlloc where that is refused, and under MOEQ_LOAD_PINNED=alloc.
    if (!pinned_by_host_alloc())
      if (std::byte* p = cuda::map_page_locked(bytes, true)) return p;
    auto* b = new cuda::PinnedBuffer(bytes);
    return b->data();
  }
  static bool pinned_by_host_alloc() {
    const char* v = std::getenv("MOEQ_LOAD_PINNED");
    return v != nullptr && std::string(v) == "alloc";
  }
  void* create_stream() override {
    cuda::CUstream s = nullptr;
    MOEQ_CU_CHECK(cuda::require().cuStreamCreate(&s, cuda::kStreamNonBlocking));
    return s;
  }
  void* create_event() override {
    cuda::CUevent e = nullptr;
    MOEQ_CU_CHECK(cuda::require().cuEventCreate(&e, cuda::kEventDefault));
    return e;
  }
  void bind(int ordinal) override { cuda::use_primary_context(ordinal); }
  void copy(uint64_t dst, const std::byte* src, std::size_t bytes, void* stream) override {
    MOEQ_CU_CHECK(cuda::require().cuMemcpyHtoDAsync_v2(dst, src, bytes, static_cast<cuda::CUstream>(stream)));
  }
  void copy_device(uint64_t dst, uint64_t src, std::size_t bytes, void* stream) override {
    MOEQ_CU_CHECK(cuda::require().cuMemcpyDtoDAsync_v2(dst, src, bytes, static_cast<cuda::CUstream>(stream)));
  }
  void record(void* event, void* stream) override {
    MOEQ_CU_CHECK(cuda::require().cuEventRecord(static_cast<cuda::CUevent>(event), static_cast<cuda::CUstream>(stream)));
  }
  void wait(void* event) override { MOEQ_CU_CHECK(cuda::require().cuEventSynchronize(static_cast<cuda::CUevent>(event))); }
};

}  // namespace

std::unique_ptr<StagingBackend> cuda_staging_backend() { return std::make_unique<CudaBackend>(); }

StagingShape default_staging_shape() {
  StagingShape s;
  if (const char* v = std::getenv("MOEQ_LOAD_CHUNK_MIB")) {  // a measuring knob: 1..256 MiB chunks
    char* end = nullptr;
    const long mib = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && mib >= 1 && mib <= 256) {
      s.chunk_bytes = static_cast<std::size_t>(mib) << 20;
      s.chunks = static_cast<unsigned>(std::max<long>(1, 256 / mib));
    }
  }
  if (const char* v = std::getenv("MOEQ_LOAD_STAGING_MIB")) {
    char* end = nullptr;
    const long mib = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && mib >= 16 && mib <= 65536)
      s.chunks = static_cast<unsigned>(std::max<long>(1, mib / static_cast<long>(s.chunk_bytes >> 20)));
  }
  return s;
}

// ------------------------------------------------------------------ scans while packing
PackScans::PackScans(std::vector<Source> sources) : sources_(std::move(sources)) {
  std::sort(sources_.begin(), sources_.end(), [](const Source& a, const Source& b) { return a.lo < b.lo; });
  sources_.erase(std::unique(sources_.begin(), sources_.end(),
                             [](const Source& a, const Source& b) { return a.lo == b.lo && a.hi == b.hi; }),
                 sources_.end());
  for (std::size_t i = 1; i < sources_.size(); ++i)
    if (sources_[i].lo < sources_[i - 1].hi) fail(MOEQ_STATUS_CODE_INTERNAL, "PackScans: overlapping sources");
}

bool PackScans::covers(const std::byte* src, int64_t count, DType dtype) const {
  if (count <= 0) return false;
  const std::byte* end = src + static_cast<std::size_t>(count) * dtype_size(dtype);
  auto it = std::upper_bound(sources_.begin(), sources_.end(), src,
                             [](const std::byte* v, const Source& s) { return v < s.lo; });
  if (it == sources_.begin()) return false;
  --it;
  return it->dtype == dtype && src >= it->lo && end <= it->hi;
}

void PackScans::copy_scanning(std::byte* out, const std::byte* src, int64_t count, DType dtype, bool streaming) {
  // Into staging the check rides on the copy's own loads (stream_copy.hpp); elsewhere (the small
  // writes' buffer, read again soon) a plain copy, then the scan of what was just written.
  const std::size_t esize = dtype_size(dtype);
  int64_t at = -1;
  if (streaming) {
    at = stream_copy_checking(out, src, count, dtype);
  } else {
    std::memcpy(out, src, static_cast<std::size_t>(count) * esize);
    at = first_non_finite(out, static_cast<std::size_t>(count), dtype);
  }
  const std::byte* bad = at >= 0 ? src + static_cast<std::size_t>(at) * esize : nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  const std::byte* end = bad != nullptr ? bad + esize : src + static_cast<std::size_t>(count) * esize;
  scanned_.insert(reinterpret_cast<std::intptr_t>(src), reinterpret_cast<std::intptr_t>(end));
  if (bad != nullptr) bad_.push_back(bad);
}

namespace {
std::vector<PackScans::Range> as_ranges(const std::vector<std::pair<int64_t, int64_t>>& v) {
  std::vector<PackScans::Range> out;
  out.reserve(v.size());
  for (const auto& [b, e] : v)
    out.emplace_back(reinterpret_cast<const std::byte*>(b), reinterpret_cast<const std::byte*>(e));
  return out;
}
}  // namespace

std::vector<PackScans::Range> PackScans::scanned() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return as_ranges(scanned_.ranges());
}

std::vector<PackScans::Range> PackScans::unscanned(const std::byte* lo, const std::byte* hi) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return as_ranges(scanned_.gaps(reinterpret_cast<std::intptr_t>(lo), reinterpret_cast<std::intptr_t>(hi)));
}

std::vector<const std::byte*> PackScans::non_finite() const {
  std::vector<const std::byte*> b;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    b = bad_;
  }
  std::sort(b.begin(), b.end());
  return b;
}

// ------------------------------------------------------------------ the chunk pool of a device
namespace {

// Page-locked chunks, each with its own stream and event, allocated as needed up to the
// shape's count and kept for the life of the pool (the process, but for the tests' pools).
class ChunkPool {
 public:
  struct Chunk {
    std::byte* data = nullptr;
    void* stream = nullptr;
    void* event = nullptr;
    bool recorded = false;  // copies were queued on it (the event marks their end)
    uint64_t generation = 0;
    std::size_t index = 0;  // in the pool
  };
  ChunkPool(int ordinal, std::unique_ptr<StagingBackend> backend, StagingShape shape)
      : ordinal_(ordinal), backend_(std::move(backend)), shape_(shape) {}

  StagingBackend& backend() { return *backend_; }
  const StagingShape& shape() const { return shape_; }
  int ordinal() const { return ordinal_; }

  // A free chunk whose earlier copies have completed; waits for one when all are taken.
  // NOTE: a new chunk (up to the shape's count) is preferred to a free one whose copies may
  // still run, and of the free ones the one given back first is taken, whose copies were queued
  // first: taking the one given back last waited for the newest copy, so that every refill
  // waited for the copy engine to drain and only a few chunks were ever in flight.
  // New chunks are allocated outside the lock, so that the threads of a first load fault in
  // their chunks' pages at once instead of one after another.
  Chunk& acquire() {
    Chunk* taken = nullptr;
    uint64_t epoch = 0;  // the failures seen when this call began
    {
      std::lock_guard<std::mutex> lock(mutex_);
      epoch = failures_;
    }
    while (taken == nullptr) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        bool grow = false;
        for (;;) {
          const bool room = chunks_.size() + allocating_ < limit_;
          if (!free_.empty() && (!room || !chunks_[free_.front()].recorded)) {
            taken = &chunks_[free_.front()];
            free_.pop_front();
            break;
          }
          if (room) {
            ++allocating_;
            grow = true;
            break;
          }
          // Every allocation failed while this call waited, and no chunk exists: nothing will be
          // free. (Each waiter throws an error of its own: an exception object is not shared
          // between threads.)
          if (chunks_.empty() && failures_ != epoch) throw Error(alloc_code_, alloc_message_);
          cv_.wait(lock);
        }
        if (!grow) break;
      }
      Chunk c;
      try {
        backend_->bind(ordinal_);
        c.data = backend_->allocate_pinned(shape_.chunk_bytes);
        c.stream = backend_->create_stream();
        c.event = backend_->create_event();
      } catch (...) {
        // Page-locked memory runs out (a memlock limit, a busy host): the chunks there are
        // will do, one at a time if need be; with none there is nothing to stage through.
        std::lock_guard<std::mutex> lock(mutex_);
        --allocating_;
        limit_ = chunks_.size() + allocating_;
        if (chunks_.empty() && allocating_ == 0) {
          // None at all: this call and those waiting fail; a later one may try again (the
          // memory may be there by then).
          limit_ = shape_.chunks;
          try {
            throw;
          } catch (const Error& e) {
            alloc_code_ = e.code();
            alloc_message_ = std::string(e.what());  // a copy of the text, not of the exception
          } catch (const std::exception& e) {
            alloc_code_ = MOEQ_STATUS_CODE_INTERNAL;
            alloc_message_ = std::string(e.what());
          } catch (...) {
            alloc_code_ = MOEQ_STATUS_CODE_INTERNAL;
            alloc_message_ = "page-locked staging memory: unknown error";
          }
          ++failures_;
          cv_.notify_all();
          throw;
        }
        continue;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      --allocating_;
      c.index = chunks_.size();
      chunks_.push_back(c);
      taken = &chunks_.back();
    }
    Chunk& c = *taken;
    if (c.recorded) {
      try {
        backend_->wait(c.event);
      } catch (...) {
        release(c, false);
        throw;
      }
    }
    return c;
  }
  // Gives a chunk back; `recorded`: copies were queued on it since acquire(). Returns the
  // chunk's generation, which finish() checks against.
  uint64_t release(Chunk& c, bool recorded) {
    uint64_t g;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      c.recorded = recorded;
      g = recorded ? ++c.generation : c.generation;
      free_.push_back(c.index);
    }
    cv_.notify_one();
    return g;
  }
  // Waits for the copies queued on chunk `i` at `generation`, unless the chunk was taken again
  // since (whoever took it waited for them).
  void wait_for(std::size_t i, uint64_t generation) {
    void* event = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (chunks_[i].generation == generation && chunks_[i].recorded) event = chunks_[i].event;
    }
    if (event != nullptr) backend_->wait(event);
  }

 private:
  int ordinal_;
  std::unique_ptr<StagingBackend> backend_;
  StagingShape shape_;
  std::size_t limit_ = shape_.chunks;  // lowered when page-locked memory runs out
  std::size_t allocating_ = 0;          // chunks being allocated (outside the lock)
  uint64_t failures_ = 0;               // times every allocation failed with no chunk made
  moeq_status_code alloc_code_ = MOEQ_STATUS_CODE_OK;  // the last such failure's error
  std::string alloc_message_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Chunk> chunks_;  // NOTE: a deque, so that a Chunk& stays valid as chunks are added
  std::deque<std::size_t> free_;  // oldest given back first
};

std::mutex g_pools_mutex;
std::map<int, std::shared_ptr<ChunkPool>>& pools() {
  static auto* p = new std::map<int, std::shared_ptr<ChunkPool>>();  // NOTE: lives to exit
  return *p;
}
std::map<int, std::shared_ptr<ChunkPool>>& test_pools() {
  static auto* p = new std::map<int, std::shared_ptr<ChunkPool>>();
  return *p;
}

std::shared_ptr<ChunkPool> pool_of(int ordinal) {
  std::lock_guard<std::mutex> lock(g_pools_mutex);
  if (auto it = test_pools().find(ordinal); it != test_pools().end()) return it->second;
  auto& p = pools()[ordinal];
  if (!p) p = std::make_shared<ChunkPool>(ordinal, cuda_staging_backend(), default_staging_shape());
  return p;
}

// Elements [first, first + n) of a run, packed (and cast) at `out`; scanned on the way when the
// run asks for it. `streaming`: `out` is a staging chunk, which only the copy engine reads next.
void pack(const StagingRun& r, int64_t first, int64_t n, std::byte* out, bool streaming) {
  if (r.scan != nullptr && !r.fill && r.src_dtype == r.dst_dtype && (r.stride == 1 || n == 1)) {
    r.scan->copy_scanning(out, r.src + first * r.stride * static_cast<int64_t>(dtype_size(r.src_dtype)), n, r.src_dtype,
                          streaming);
    return;
  }
  const std::size_t de = dtype_size(r.dst_dtype);
  if (r.fill) {
    for (int64_t j = 0; j < n; ++j) std::memcpy(out + j * static_cast<int64_t>(de), r.pattern.data(), de);
    return;
  }
  const std::size_t se = dtype_size(r.src_dtype);
  const int64_t step = r.stride * static_cast<int64_t>(se);
  const std::byte* s = r.src + first * step;
  if (r.src_dtype == r.dst_dtype) {
    if (r.stride == 1) {
      if (streaming)
        stream_copy(out, s, static_cast<std::size_t>(n) * de);
      else
        std::memcpy(out, s, static_cast<std::size_t>(n) * de);
      return;
    }
    for (int64_t j = 0; j < n; ++j, s += step) std::memcpy(out + j * static_cast<int64_t>(de), s, de);
    return;
  }
  for (int64_t j = 0; j < n; ++j, s += step)
    store_from_float(out, r.dst_dtype, static_cast<std::size_t>(j), load_as_float(s, r.src_dtype, 0));
}

// `e` as an Error whose message starts with `what`.
Error named(const std::string& what, const std::exception& e) {
  const auto* me = dynamic_cast<const Error*>(&e);
  return Error(me ? me->code() : MOEQ_STATUS_CODE_INTERNAL, what + ": copy to the device: " + e.what());
}

// A copy of `bytes` from chunk offset `offset` to device address `dst`.
struct Segment {
  uint64_t dst;
  std::size_t offset, bytes;
};
void add_segment(std::vector<Segment>& segs, uint64_t dst, std::size_t offset, std::size_t bytes) {
  if (!segs.empty() && segs.back().dst + segs.back().bytes == dst && segs.back().offset + segs.back().bytes == offset)
    segs.back().bytes += bytes;
  else
    segs.push_back({dst, offset, bytes});
}

std::size_t bytes_of(const StagingRun& r) { return static_cast<std::size_t>(r.count) * dtype_size(r.dst_dtype); }

// The part of run `r` that carries its destination bytes [first_byte, first_byte + bytes),
// whole elements of the destination.
StagingRun sub_run(const StagingRun& r, std::size_t first_byte, std::size_t bytes) {
  const auto de = static_cast<int64_t>(dtype_size(r.dst_dtype));
  const int64_t first = static_cast<int64_t>(first_byte) / de;
  StagingRun s = r;
  s.dst = r.dst + first_byte;
  s.count = static_cast<int64_t>(bytes) / de;
  if (!r.fill) s.src = r.src + first * r.stride * static_cast<int64_t>(dtype_size(r.src_dtype));
  return s;
}

// Runs waiting to be packed, each labelled (for errors) by the write it came from.
struct LabelledRuns {
  std::vector<StagingRun> runs;
  std::vector<std::size_t> label;  // a run each, into `labels`
  std::vector<std::string> labels;
  std::size_t bytes = 0;
  void add(const std::vector<StagingRun>& more, const std::string& what) {
    labels.push_back(what);
    for (const StagingRun& r : more) {
      runs.push_back(r);
      label.push_back(labels.size() - 1);
      bytes += bytes_of(r);
    }
  }
};

// One chunk's work: runs packed at their offsets, and the writes they came from, in words.
struct ChunkWork {
  std::vector<std::pair<StagingRun, std::size_t>> runs;  // (run, offset in the chunk)
  std::string what;
};

// "tensor a", "tensor a and tensor b", "tensor a, tensor b, tensor c and 4 more writes".
std::string name_writes(const std::vector<std::size_t>& label, const std::vector<std::string>& labels) {
  std::vector<std::size_t> seen;
  for (std::size_t l : label)
    if (std::find(seen.begin(), seen.end(), l) == seen.end()) seen.push_back(l);
  std::string out;
  const std::size_t shown = std::min<std::size_t>(seen.size(), 3);
  for (std::size_t i = 0; i < shown; ++i)
    out += (i == 0 ? "" : i + 1 == seen.size() ? " and " : ", ") + labels[seen[i]];
  if (seen.size() > shown) out += " and " + std::to_string(seen.size() - shown) + " more writes";
  return out;
}

// Cuts `pending` into chunks planned as the upload pipeline plans them (plan_chunks). With
// `keep_tail`, the last chunk, unless full, stays in `pending` (the next write tops it up);
// otherwise `pending` is emptied. NOTE: with pieces aligned to the largest element size (a
// power of two dividing the chunk size), every cut falls on an element of every run.
std::vector<ChunkWork> plan_work(LabelledRuns& pending, std::size_t chunk_bytes, bool keep_tail) {
  std::vector<std::size_t> bytes;
  std::size_t align = 1;
  for (const StagingRun& r : pending.runs) {
    bytes.push_back(bytes_of(r));
    align = std::max(align, dtype_size(r.dst_dtype));
  }
  const std::vector<cuda::ChunkPlan> plans = cuda::plan_chunks(bytes, chunk_bytes, align);
  std::vector<ChunkWork> work;
  LabelledRuns tail;
  for (std::size_t c = 0; c < plans.size(); ++c) {
    if (keep_tail && c + 1 == plans.size() && plans[c].bytes < chunk_bytes) {
      std::size_t last = SIZE_MAX;
      for (const cuda::ChunkPiece& p : plans[c].pieces) {
        if (pending.label[p.job] != last) tail.labels.push_back(pending.labels[pending.label[p.job]]);
        last = pending.label[p.job];
        tail.runs.push_back(sub_run(pending.runs[p.job], p.job_offset, p.bytes));
        tail.label.push_back(tail.labels.size() - 1);
        tail.bytes += p.bytes;
      }
      break;
    }
    ChunkWork w;
    std::vector<std::size_t> label;
    for (const cuda::ChunkPiece& p : plans[c].pieces) {
      w.runs.emplace_back(sub_run(pending.runs[p.job], p.job_offset, p.bytes), p.chunk_offset);
      label.push_back(pending.label[p.job]);
    }
    w.what = name_writes(label, pending.labels);
    work.push_back(std::move(w));
  }
  pending = std::move(tail);
  return work;
}

}  // namespace

// ------------------------------------------------------------------ a layer's writer
struct DeviceWrites::State {
  std::shared_ptr<ChunkPool> pool;
  TaskPool::Group group;  // queued writes whose sources are stable
  std::mutex mutex;
  std::vector<std::pair<std::size_t, uint64_t>> queued;  // (chunk, generation) of copies in flight
  // Small writes, packed here at once and sent together (one chunk's worth at most).
  std::vector<std::byte> small;
  std::vector<Segment> small_segments;
  // Stable writes gathered until they fill a chunk (a tensor of an expert is often a tenth of
  // one): sent a chunk at a time, so that every chunk in flight is a full one.
  LabelledRuns gathered;

  // Fills a chunk through `fill_chunk(data)`, queues `segs` from it, records its event.
  template <class Fill>
  void send(const std::vector<Segment>& segs, Fill&& fill_chunk) {
    StagingBackend& be = pool->backend();
    be.bind(pool->ordinal());
    ChunkPool::Chunk& c = pool->acquire();
    try {
      fill_chunk(c.data);
      for (const Segment& s : segs) be.copy(s.dst, c.data + s.offset, s.bytes, c.stream);
      be.record(c.event, c.stream);
    } catch (...) {
      pool->release(c, false);
      throw;
    }
    const std::size_t i = c.index;
    const uint64_t g = pool->release(c, true);
    std::lock_guard<std::mutex> lock(mutex);
    queued.emplace_back(i, g);
  }
  // Queues, as tasks of `g`, the packing and sending of each chunk of `work`.
  void submit(TaskPool::Group& g, std::vector<ChunkWork> work) {
    for (ChunkWork& w : work)
      TaskPool::shared().submit(g, [this, w = std::move(w)] {
        std::vector<Segment> segs;
        for (const auto& [r, offset] : w.runs) add_segment(segs, r.dst, offset, bytes_of(r));
        try {
          send(segs, [&](std::byte* chunk) {
            for (const auto& [r, offset] : w.runs) pack(r, 0, r.count, chunk + offset, true);
          });
        } catch (const std::exception& e) {
          throw named(w.what, e);
        }
      });
  }
  void flush_gathered(bool keep_tail) {
    if (!gathered.runs.empty()) submit(group, plan_work(gathered, pool->shape().chunk_bytes, keep_tail));
  }
  void flush_small() {
    if (small.empty()) return;
    auto bytes = std::make_shared<std::vector<std::byte>>(std::move(small));
    auto segs = std::make_shared<std::vector<Segment>>(std::move(small_segments));
    small.clear();
    small_segments.clear();
    TaskPool::shared().submit(group, [this, bytes, segs] {
      try {
        send(*segs, [&](std::byte* chunk) { std::memcpy(chunk, bytes->data(), bytes->size()); });
      } catch (const std::exception& e) {
        throw named("the layer's small writes (tensors under " + std::to_string(pool->shape().small_bytes >> 10) +
                        " KiB, gathered: scales and the like)",
                    e);
      }
    });
  }
  // Waits for every copy queued so far (errors thrown unless `quiet`).
  void wait_queued(bool quiet) {
    std::vector<std::pair<std::size_t, uint64_t>> q;
    {
      std::lock_guard<std::mutex> lock(mutex);
      q.swap(queued);
    }
    std::exception_ptr first;
    try {
      pool->backend().bind(pool->ordinal());
    } catch (...) {
      first = std::current_exception();
    }
    for (auto [i, g] : q) {
      try {
        pool->wait_for(i, g);
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
    if (first && !quiet) std::rethrow_exception(first);
  }
};

DeviceWrites::DeviceWrites(int ordinal) : ordinal_(ordinal), state_(std::make_shared<State>()) {
  state_->pool = pool_of(ordinal);
}

DeviceWrites::~DeviceWrites() {
  try {
    TaskPool::shared().wait(state_->group);
  } catch (...) {
  }
  state_->wait_queued(true);
}

void DeviceWrites::write(std::vector<StagingRun> runs, bool stable, const std::string& what) {
  State& st = *state_;
  const StagingShape& shape = st.pool->shape();
  std::size_t total = 0;
  for (const StagingRun& r : runs) total += bytes_of(r);
  if (total == 0) return;
  if (total < shape.small_bytes) {
    if (st.small.size() + total > shape.chunk_bytes) st.flush_small();
    std::size_t at = st.small.size();
    st.small.resize(at + total);
    for (const StagingRun& r : runs) {
      pack(r, 0, r.count, st.small.data() + at, false);
      add_segment(st.small_segments, r.dst, at, bytes_of(r));
      at += bytes_of(r);
    }
    return;
  }
  if (stable) {
    st.gathered.add(runs, what);
    if (st.gathered.bytes >= shape.chunk_bytes) st.flush_gathered(true);
    return;
  }
  LabelledRuns own;
  own.add(runs, what);
  TaskPool::Group local;
  const TaskPool::Join join_local(TaskPool::shared(), local);  // tasks of `local` use this frame
  st.submit(local, plan_work(own, shape.chunk_bytes, false));
  TaskPool::shared().wait(local);
}

void DeviceWrites::copy_from_device(const std::vector<DevicePiece>& pieces) {
  State& st = *state_;
  StagingBackend& be = st.pool->backend();
  be.bind(ordinal_);
  ChunkPool::Chunk& c = st.pool->acquire();
  try {
    for (const DevicePiece& p : pieces) be.copy_device(p.dst, p.src, p.bytes, c.stream);
    be.record(c.event, c.stream);
    be.wait(c.event);
  } catch (...) {
    st.pool->release(c, false);
    throw;
  }
  st.pool->release(c, false);
}

void DeviceWrites::finish() {
  State& st = *state_;
  std::exception_ptr first;
  try {
    st.flush_small();
    st.flush_gathered(false);
    TaskPool::shared().wait(st.group);
  } catch (...) {
    first = std::current_exception();
  }
  st.wait_queued(first != nullptr);
  if (first) std::rethrow_exception(first);
}

ScopedStagingBackend::ScopedStagingBackend(int ordinal, std::unique_ptr<StagingBackend> backend, StagingShape shape)
    : ordinal_(ordinal) {
  if (shape.chunk_bytes == 0 || shape.chunk_bytes % 256 != 0 || shape.chunks == 0)
    fail("staging: a pool needs chunks, of a multiple of 256 bytes");
  std::lock_guard<std::mutex> lock(g_pools_mutex);
  test_pools()[ordinal] = std::make_shared<ChunkPool>(ordinal, std::move(backend), shape);
}
ScopedStagingBackend::~ScopedStagingBackend() {
  std::lock_guard<std::mutex> lock(g_pools_mutex);
  test_pools().erase(ordinal_);
}

// ------------------------------------------------------------------ allocation, reads
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

}  // namespace moeq::host
