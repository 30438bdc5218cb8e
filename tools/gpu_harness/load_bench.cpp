#include "load_bench.hpp"

#include "bench.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/cuda_driver.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/jit.hpp>
#include <moeq/staged_upload.hpp>

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <thread>
#include <vector>

namespace moeq::gpu_harness {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double mib(double bytes) { return bytes / double(1 << 20); }

// The compressed_tensors int8 W8A16 repack (kernels/moe_repack.cuh) on the host: in every
// 16-byte group, new bytes [4t, 4t+4) = old bytes {2t, 2t+1, 2t+8, 2t+9}.
void repack_w8a16(std::vector<std::byte>& codes) {
  std::byte tmp[16];
  for (std::size_t g = 0; g + 16 <= codes.size(); g += 16) {
    for (int t = 0; t < 4; ++t) {
      tmp[4 * t] = codes[g + 2 * t];
      tmp[4 * t + 1] = codes[g + 2 * t + 1];
      tmp[4 * t + 2] = codes[g + 2 * t + 8];
      tmp[4 * t + 3] = codes[g + 2 * t + 9];
    }
    std::memcpy(codes.data() + g, tmp, 16);
  }
}
double gbps(double bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e9 : 0; }

// A non-blocking stream of the current context, destroyed with the object.
class Stream {
 public:
  Stream() { MOEQ_CU_CHECK(cuda::require().cuStreamCreate(&s_, cuda::kStreamNonBlocking)); }
  ~Stream() {
    cuda::require().cuStreamSynchronize(s_);
    cuda::require().cuStreamDestroy_v2(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cuda::CUstream get() const { return s_; }

 private:
  cuda::CUstream s_ = nullptr;
};

// GB/s of one host buffer copied to the device: one untimed copy, then the median of `reps`.
double h2d_rate(const std::byte* host, std::size_t bytes, cuda::CUdeviceptr dst, int reps) {
  const cuda::DriverApi& d = cuda::require();
  Stream s;
  std::vector<double> secs;
  for (int i = 0; i <= reps; ++i) {
    const auto t0 = Clock::now();
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(dst, host, bytes, s.get()));
    MOEQ_CU_CHECK(d.cuStreamSynchronize(s.get()));
    if (i > 0) secs.push_back(seconds_since(t0));
  }
  return gbps(double(bytes), median(secs));
}

// A new read-only mapping of the whole of `f` (its size in `size`); nullptr for an empty file.
// The caller unmaps it.
std::byte* map_file(const fs::path& f, std::size_t& size) {
  const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("bench load: cannot open '" + f.string() + "': " + std::strerror(errno));
  size = fs::file_size(f);
  void* base = size ? ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : nullptr;
  ::close(fd);
  if (base == MAP_FAILED) fail("bench load: cannot mmap '" + f.string() + "': " + std::strerror(errno));
  return static_cast<std::byte*>(base);
}

// Fraction of the files' pages in the page cache (mincore on a mapping of each).
double resident_fraction(const std::vector<fs::path>& files) {
  const long page = ::sysconf(_SC_PAGESIZE);
  uint64_t total = 0, resident = 0;
  for (const fs::path& f : files) {
    std::size_t size = 0;
    std::byte* base = map_file(f, size);
    if (size == 0) continue;
    std::vector<unsigned char> vec((size + page - 1) / page);
    if (::mincore(base, size, vec.data()) == 0) {
      for (unsigned char c : vec) resident += c & 1;
      total += vec.size();
    }
    ::munmap(base, size);
  }
  return total ? double(resident) / double(total) : 1.0;
}

// Unmaps the pages of `ck`'s tensors from this process (MADV_DONTNEED on its read-only
// mappings: a later read faults them in again from the file), so that the page cache may drop
// them: the kernel keeps any page a process still maps.
void unmap_pages(const Checkpoint& ck) {
  static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (const auto& [name, t] : ck.tensors()) {
    if (t.nbytes() == 0) continue;
    const auto b = reinterpret_cast<std::uintptr_t>(t.data);
    const std::uintptr_t lo = b & ~(page - 1);
    ::madvise(reinterpret_cast<void*>(lo), b + t.nbytes() - lo, MADV_DONTNEED);
  }
}

// Drops the files' pages from the page cache (POSIX_FADV_DONTNEED, which any user may ask for
// clean pages no process maps) and returns the fraction still resident.
double evict(const std::vector<fs::path>& files) {
  for (const fs::path& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("bench load: cannot open '" + f.string() + "': " + std::strerror(errno));
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  return resident_fraction(files);
}

// The disk's own read rate: every file read once in 16 MiB requests by `threads` threads at
// once, with O_DIRECT (past the page cache) where the file system allows it, else buffered
// reads of evicted files (`direct` says which).
struct DiskRead {
  double gbps = 0, seconds = 0;
  std::size_t bytes = 0;
  bool direct = true;
};
DiskRead disk_read(const std::vector<fs::path>& files, unsigned threads) {
  constexpr std::size_t kBlock = std::size_t{16} << 20;
  DiskRead r;
  std::vector<int> fds;
  std::vector<std::pair<std::size_t, std::size_t>> blocks;  // (file, offset)
  for (std::size_t i = 0; i < files.size(); ++i) {
    int fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (fd < 0) {
      r.direct = false;
      fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) fail("bench load: cannot open '" + files[i].string() + "': " + std::strerror(errno));
    fds.push_back(fd);
    const std::size_t size = fs::file_size(files[i]);
    r.bytes += size;
    for (std::size_t off = 0; off < size; off += kBlock) blocks.emplace_back(i, off);
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&] {
    void* buf = std::aligned_alloc(4096, kBlock);
    if (buf == nullptr) {
      failed = true;
      return;
    }
    for (std::size_t b = next.fetch_add(1); b < blocks.size() && !failed; b = next.fetch_add(1)) {
      const auto [f, off] = blocks[b];
      if (::pread(fds[f], buf, kBlock, static_cast<off_t>(off)) < 0) failed = true;
    }
    std::free(buf);
  };
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < std::max(1u, threads); ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  r.seconds = seconds_since(t0);
  for (int fd : fds) ::close(fd);
  if (failed) fail("bench load: reading the checkpoint's files for the disk rate failed: " + std::string(std::strerror(errno)));
  r.gbps = gbps(double(r.bytes), r.seconds);
  return r;
}

// Reads every file once through read(2), several files at a time, so that the page cache
// holds them; the checkpoint's own mappings are not touched (their first use still faults,
// as in a fresh process).
void warm_page_cache(const std::vector<fs::path>& files, unsigned threads) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  auto worker = [&] {
    std::vector<char> buf(std::size_t{16} << 20);
    for (std::size_t i = next.fetch_add(1); i < files.size(); i = next.fetch_add(1)) {
      const int fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        if (!failed.exchange(true)) error = "bench load: cannot open '" + files[i].string() + "'";
        continue;
      }
      while (::read(fd, buf.data(), buf.size()) > 0) {
      }
      ::close(fd);
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < std::max(1u, threads); ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (failed) fail(error);
}

// Device space for `sizes`, each 256-byte aligned inside one allocation.
struct Arena {
  cuda::DeviceMemory memory;
  std::vector<cuda::CUdeviceptr> at;
};
Arena make_arena(const std::vector<std::size_t>& sizes) {
  std::vector<std::size_t> offsets;
  std::size_t total = 0;
  for (std::size_t s : sizes) {
    offsets.push_back(total);
    total += (s + 255) & ~std::size_t{255};
  }
  Arena a;
  a.memory = cuda::DeviceMemory(std::max<std::size_t>(total, 256));
  for (std::size_t o : offsets) a.at.push_back(a.memory.get() + o);
  return a;
}

// The lowest free device memory seen while it lives: a thread polls cuMemGetInfo every 100 us in
// the primary context of device 0. It sees every allocation that lives longer than a poll,
// whoever makes it (the host's parameters, a plugin's scratch and workspaces, the JIT's modules).
class FreeMemoryLow {
 public:
  FreeMemoryLow() : low_(cuda::memory_info().free) {
    poller_ = std::thread([this] {
      cuda::use_primary_context(0);
      while (!stop_.load(std::memory_order_relaxed)) {
        std::size_t free_bytes = 0, total = 0;
        if (cuda::require().cuMemGetInfo_v2(&free_bytes, &total) == 0)
          low_.store(std::min(low_.load(), free_bytes));
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    });
  }
  ~FreeMemoryLow() { stop(); }
  FreeMemoryLow(const FreeMemoryLow&) = delete;
  FreeMemoryLow& operator=(const FreeMemoryLow&) = delete;
  // Stops polling, takes one last reading, and returns the lowest free figure seen.
  std::size_t stop() {
    if (poller_.joinable()) {
      stop_ = true;
      poller_.join();
      low_.store(std::min(low_.load(), cuda::memory_info().free));
    }
    return low_.load();
  }

 private:
  std::atomic<std::size_t> low_;
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

// What 256 MiB of page-locked host memory (the loader's default staging) costs to get, four
// ways, each freed before the next: sixteen cuMemHostAlloc of 16 MiB (the staging pool's
// chunks), one of 256 MiB, and cuda::map_page_locked (the pool's way) with transparent huge
// pages asked for and refused. Milliseconds, or -1
// where the way failed (`why` says how).
struct PinnedCosts {
  double chunks_ms = -1, whole_ms = -1, huge_ms = -1, small_ms = -1;
  double huge_touch_ms = -1, small_touch_ms = -1;  // of which the first touch of the pages
  std::string why;
};
PinnedCosts pinned_costs(std::size_t bytes, std::size_t chunk) {
  PinnedCosts c;
  auto t = Clock::now();
  {
    std::vector<cuda::PinnedBuffer> held;
    for (std::size_t at = 0; at < bytes; at += chunk) held.emplace_back(chunk);
    c.chunks_ms = 1e3 * seconds_since(t);
  }
  t = Clock::now();
  {
    cuda::PinnedBuffer one(bytes);
    c.whole_ms = 1e3 * seconds_since(t);
  }
  for (const bool huge : {true, false}) {
    t = Clock::now();
    double touch = 0;
    std::byte* p = cuda::map_page_locked(bytes, huge, &touch);
    const double all = 1e3 * seconds_since(t);
    if (p == nullptr) {
      c.why += std::string(huge ? "huge" : "small") + " pages: mapping or cuMemHostRegister refused; ";
      continue;
    }
    (huge ? c.huge_ms : c.small_ms) = all;
    (huge ? c.huge_touch_ms : c.small_touch_ms) = touch;
    cuda::unmap_page_locked(p, bytes);
  }
  return c;
}

// The page cache straight to the device, no staging copy: each file mapped afresh and
// page-locked where it lies (cuMemHostRegister, read-only) a piece of `piece` bytes at a time
// by `threads` threads, each piece copied from its own pages on the thread's stream and
// unregistered once its copy is done. `register_s`: the registrations and unregistrations
// alone (no copies), a second pass. Empty `error` when it ran.
struct DirectFigures {
  double seconds = 0, register_s = 0;
  std::size_t bytes = 0;
  std::string error;
};
DirectFigures direct_from_page_cache(const std::vector<fs::path>& files, unsigned threads, std::size_t piece) {
  const cuda::DriverApi& d = cuda::require();
  DirectFigures f;
  struct Mapped {
    std::byte* base;
    std::size_t size;
  };
  std::vector<Mapped> maps;
  struct Piece {
    std::byte* src;
    std::size_t bytes, offset;  // offset in the device arena
  };
  std::vector<Piece> pieces;
  for (const fs::path& p : files) {
    std::size_t size = 0;
    std::byte* base = map_file(p, size);
    if (size == 0) continue;
    maps.push_back({base, size});
    for (std::size_t at = 0; at < size; at += piece)
      pieces.push_back({maps.back().base + at, std::min(piece, size - at), f.bytes + at});
    f.bytes += size;
  }
  cuda::DeviceMemory arena(std::max<std::size_t>(f.bytes, 256));
  const cuda::CUcontext ctx = cuda::use_primary_context(0);
  for (const bool copy : {true, false}) {
    std::atomic<std::size_t> next{0};
    std::mutex mutex;
    std::string error;
    auto worker = [&] {
      cuda::CUstream s = nullptr;
      try {
        MOEQ_CU_CHECK(d.cuCtxSetCurrent(ctx));
        MOEQ_CU_CHECK(d.cuStreamCreate(&s, cuda::kStreamNonBlocking));
        std::vector<std::pair<std::byte*, cuda::CUevent>> pending;
        auto retire = [&](std::size_t keep) {
          while (pending.size() > keep) {
            MOEQ_CU_CHECK(d.cuEventSynchronize(pending.front().second));
            d.cuEventDestroy_v2(pending.front().second);
            d.cuMemHostUnregister(pending.front().first);
            pending.erase(pending.begin());
          }
        };
        for (std::size_t i = next.fetch_add(1); i < pieces.size(); i = next.fetch_add(1)) {
          const Piece& p = pieces[i];
          const cuda::CUresult r =
              d.cuMemHostRegister(p.src, p.bytes, cuda::kMemHostRegisterPortable | cuda::kMemHostRegisterReadOnly);
          if (r != cuda::kSuccess) fail("cuMemHostRegister of a file's mapping (read-only): " + cuda::describe(&d, r));
          if (!copy) {
            d.cuMemHostUnregister(p.src);
            continue;
          }
          MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(arena.get() + p.offset, p.src, p.bytes, s));
          cuda::CUevent e = nullptr;
          MOEQ_CU_CHECK(d.cuEventCreate(&e, cuda::kEventDefault));
          MOEQ_CU_CHECK(d.cuEventRecord(e, s));
          pending.emplace_back(p.src, e);
          retire(2);
        }
        retire(0);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        if (error.empty()) error = e.what();
        next.store(pieces.size());
      }
      if (s != nullptr) {
        d.cuStreamSynchronize(s);
        d.cuStreamDestroy_v2(s);
      }
    };
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < std::max(1u, threads); ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    (copy ? f.seconds : f.register_s) = seconds_since(t0);
    if (!error.empty()) {
      f.error = error;
      break;
    }
  }
  // NOTE: a failed piece may leave others registered; unregistering what is not is harmless.
  if (!f.error.empty())
    for (const Piece& p : pieces) d.cuMemHostUnregister(p.src);
  for (const Mapped& m : maps) ::munmap(m.base, m.size);
  return f;
}

struct Figures {
  double first_s = 0, median_s = 0;
  std::size_t bytes = 0, chunks = 0, copies = 0;
};

}  // namespace

int run_load_bench(const LoadBenchOptions& opt, const Registry& registry, std::ostream& out) {
  const cuda::DriverApi& d = cuda::require();
  const cuda::DeviceProperties dev = cuda::device_properties(0);
  cuda::use_primary_context(0);
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  cuda::StagingConfig sc;
  sc.threads = opt.threads ? opt.threads : std::min(12u, hw);
  sc.chunk_bytes = opt.chunk_bytes;
  sc.chunks = opt.chunks;
  const int repeat = std::max(1, opt.repeat);
  auto say = [&](const std::string& line) {
    if (!opt.json) out << line << "\n" << std::flush;
  };
  say("device: " + dev.name + " (sm_" + std::to_string(dev.sm_major) + std::to_string(dev.sm_minor) + ", " +
      fmt(mib(double(dev.total_memory)), 0) + " MiB), driver " + std::to_string(d.driver_version));

  // -- floors: pinned and pageable host-to-device, same size, same stream discipline.
  double pinned_gbps = 0, pageable_gbps = 0;
  {
    cuda::DeviceMemory dst(opt.floor_bytes);
    cuda::PinnedBuffer pinned(opt.floor_bytes);
    std::memset(pinned.data(), 0x5a, opt.floor_bytes);
    pinned_gbps = h2d_rate(pinned.data(), opt.floor_bytes, dst.get(), 5);
    std::vector<std::byte> pageable(opt.floor_bytes, std::byte{0x5a});
    pageable_gbps = h2d_rate(pageable.data(), opt.floor_bytes, dst.get(), 5);
  }
  say("floors (" + fmt(mib(double(opt.floor_bytes)), 0) + " MiB, median of 5): pinned H2D " + fmt(pinned_gbps) +
      " GB/s, pageable H2D " + fmt(pageable_gbps) + " GB/s");
  {
    const PinnedCosts pc = pinned_costs(std::size_t{256} << 20, std::size_t{16} << 20);
    say("page-locking 256 MiB: 16 cuMemHostAlloc of 16 MiB " + fmt(pc.chunks_ms, 1) + " ms, one of 256 MiB " +
        fmt(pc.whole_ms, 1) + " ms; anonymous mapping touched and cuMemHostRegister'ed, huge pages " +
        fmt(pc.huge_ms, 1) + " ms (touch " + fmt(pc.huge_touch_ms, 1) + "), small pages " + fmt(pc.small_ms, 1) +
        " ms (touch " + fmt(pc.small_touch_ms, 1) + ")" + (pc.why.empty() ? "" : "; " + pc.why));
  }

  // -- the checkpoint's files: page-cache state before and after an untimed warm read.
  const Checkpoint ck = Checkpoint::open(opt.dir);
  std::vector<fs::path> files;
  for (const auto& f : ck.files()) files.push_back(f->path());
  const double cached_before = resident_fraction(files);
  const auto tw = Clock::now();
  warm_page_cache(files, sc.threads);
  const double warm_s = seconds_since(tw);
  const double cached_after = resident_fraction(files);
  say("checkpoint: " + opt.dir.string() + ", " + std::to_string(files.size()) + " files, " +
      std::to_string(ck.tensors().size()) + " tensors; page cache " + fmt(100 * cached_before, 0) +
      "% before the warm read (" + fmt(warm_s, 2) + " s), " + fmt(100 * cached_after, 0) + "% after");
  if (cached_after < 0.99)
    say("warning: the files do not stay in the page cache; the figures below include disk reads");

  cuda::StagedUploader uploader(sc);
  say("pipeline: " + std::to_string(sc.threads) + " reader threads (one stream each), " +
      std::to_string(uploader.config().chunks) + " pinned chunks of " + fmt(mib(double(sc.chunk_bytes)), 0) + " MiB");
  const cuda::MemoryInfo mem_start = cuda::memory_info();
  bool ok = true;

  // -- raw: every tensor of the files, in file order.
  Figures raw;
  {
    std::vector<const TensorInfo*> order;
    for (const auto& [name, t] : ck.tensors()) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->file != b->file ? a->file < b->file : a->begin < b->begin;
    });
    std::vector<std::size_t> sizes;
    for (const TensorInfo* t : order) sizes.push_back(t->nbytes());
    Arena arena = make_arena(sizes);
    std::vector<cuda::UploadJob> jobs;
    for (std::size_t i = 0; i < order.size(); ++i)
      jobs.push_back({order[i]->data, arena.at[i], order[i]->nbytes(), order[i]->file.filename().string() + ": " + order[i]->name});
    std::vector<double> secs;
    for (int r = 0; r < repeat; ++r) {
      const cuda::UploadStats st = uploader.upload(jobs);
      secs.push_back(st.seconds);
      raw.bytes = st.bytes, raw.chunks = st.chunks, raw.copies = st.copies;
    }
    raw.first_s = secs.front();
    raw.median_s = median(secs);
    const std::string bad = uploader.verify(jobs);
    if (!bad.empty()) {
      ok = false;
      out << "MISMATCH (raw pipeline): " << bad << "\n";
    }
  }
  say("raw pipeline: " + fmt(mib(double(raw.bytes)), 0) + " MiB in " + std::to_string(raw.chunks) + " chunks, " +
      std::to_string(raw.copies) + " copies; first pass " + fmt(gbps(double(raw.bytes), raw.first_s)) +
      " GB/s (fresh mapping), median of " + std::to_string(repeat) + " " +
      fmt(gbps(double(raw.bytes), raw.median_s)) + " GB/s; device bytes " + (ok ? "match" : "DIFFER"));
  {
    std::size_t piece_mib = 64;
    if (const char* v = std::getenv("MOEQ_BENCH_DIRECT_MIB")) piece_mib = std::clamp<std::size_t>(std::strtoul(v, nullptr, 10), 1, 4096);
    const DirectFigures df = direct_from_page_cache(files, sc.threads, piece_mib << 20);
    if (df.error.empty())
      say("page cache straight to the device (each file's mapping page-locked in " + std::to_string(piece_mib) +
          " MiB pieces by " + std::to_string(sc.threads) + " threads, no staging copy): " + fmt(mib(double(df.bytes)), 0) +
          " MiB in " + fmt(1e3 * df.seconds, 1) + " ms = " + fmt(gbps(double(df.bytes), df.seconds)) + " GB/s = " +
          fmt(pinned_gbps > 0 ? 100 * gbps(double(df.bytes), df.seconds) / pinned_gbps : 0, 0) +
          "% of pinned; registering and unregistering alone " + fmt(1e3 * df.register_s, 1) + " ms");
    else
      say("page cache straight to the device: not possible here: " + df.error);
  }

  // -- real: the strict load through the plugins, then the final parameters to the device.
  LoadOptions lo = opt.load;
  lo.strict = true;
  lo.collect_errors = false;
  const cuda::MemoryInfo mem_before_real = cuda::memory_info();
  const auto th = Clock::now();
  const Checkpoint ck2 = Checkpoint::open(opt.dir);
  LoadedModel model = load_model(ck2, registry, lo);
  const double host_s = seconds_since(th);
  std::vector<const ParamRecord*> params;
  std::size_t consumed = 0, skipped = 0;
  for (const auto& l : model.layers) {
    for (const auto& p : l->layer->params) params.push_back(p.get());
    consumed += static_cast<std::size_t>(l->report.count(LedgerEntry::State::kConsumed));
    skipped += static_cast<std::size_t>(l->report.count(LedgerEntry::State::kSkipped));
  }
  std::size_t checkpoint_bytes = 0;
  for (const auto& [name, t] : ck2.tensors()) checkpoint_bytes += t.nbytes();
  std::vector<std::size_t> psizes;
  std::size_t final_bytes = 0;
  for (const ParamRecord* p : params) {
    psizes.push_back(p->storage.size());
    final_bytes += p->storage.size();
  }
  std::vector<double> upload_secs;
  std::size_t pipeline_peak = 0, min_free = mem_before_real.free;
  bool real_ok = true;
  for (int r = 0; r < repeat; ++r) {
    const auto tu = Clock::now();
    Arena arena = make_arena(psizes);  // allocation is part of a real upload
    pipeline_peak = std::max(pipeline_peak, arena.memory.size());
    std::vector<cuda::UploadJob> jobs;
    for (std::size_t i = 0; i < params.size(); ++i)
      jobs.push_back({params[i]->storage.data(), arena.at[i], params[i]->storage.size(), params[i]->name});
    uploader.upload(jobs);
    upload_secs.push_back(seconds_since(tu));
    min_free = std::min(min_free, cuda::memory_info().free);
    if (r == 0) {
      const std::string bad = uploader.verify(jobs);
      if (!bad.empty()) {
        real_ok = false;
        out << "MISMATCH (loaded parameters): " << bad << "\n";
      }
    }
  }
  ok = ok && real_ok;
  const double upload_s = median(upload_secs);
  const std::size_t peak_info = mem_before_real.free - min_free;
  const MoeConfig& cfg = model.config;
  const std::size_t expert_bf16 = static_cast<std::size_t>(3 * cfg.hidden_size * cfg.intermediate_size * 2);
  const std::size_t goal = final_bytes + expert_bf16 + (std::size_t{64} << 20);
  const std::string plugin = model.layers.empty() ? "-" : model.layers.front()->report.plugin;
  say("real path: strict load of " + std::to_string(model.layers.size()) + " MoE layers through " + plugin +
      (lo.online_scheme.empty() ? "" : " (--online " + lo.online_scheme + ")") + ", " + std::to_string(consumed) +
      " tensors consumed, " + std::to_string(skipped) + " skipped; device bytes " + (real_ok ? "match" : "DIFFER"));
  say("  (the loader fills host parameters and quantizes on the host in this build; the device holds only what the "
      "upload allocates)");

  // -- what the device loads' parameter allocations cost by themselves: every host parameter's
  // size allocated with cuMemAlloc and freed, one layer's on one thread, then every layer's on
  // a thread of its own at once (as the loader's layer threads do), median of 3 each.
  {
    std::vector<std::vector<std::size_t>> sizes;
    for (const auto& l : model.layers) {
      sizes.emplace_back();
      for (const auto& p : l->layer->params) sizes.back().push_back(std::max<std::size_t>(p->storage.size(), 1));
    }
    auto alloc_all = [](const std::vector<std::size_t>& sz) {
      std::vector<cuda::DeviceMemory> held;
      for (std::size_t b : sz) held.emplace_back(b);
    };
    std::vector<double> one, all;
    cuda::use_primary_context(0);
    for (int r = 0; r < 3 && !sizes.empty(); ++r) {
      auto t = Clock::now();
      alloc_all(sizes.front());
      one.push_back(seconds_since(t));
      t = Clock::now();
      std::vector<std::thread> th;
      std::vector<std::exception_ptr> failed(sizes.size());
      for (std::size_t i = 0; i < sizes.size(); ++i)
        th.emplace_back([&, i] {
          try {
            cuda::use_primary_context(0);
            alloc_all(sizes[i]);
          } catch (...) {  // an allocation refused: reported below, after every thread is joined
            failed[i] = std::current_exception();
          }
        });
      for (auto& x : th) x.join();
      for (const std::exception_ptr& e : failed)
        if (e) std::rethrow_exception(e);
      all.push_back(seconds_since(t));
    }
    if (!one.empty())
      say("parameter allocations alone (cuMemAlloc and cuMemFree, median of 3): one layer's " +
          std::to_string(sizes.front().size()) + " on one thread " + fmt(1e3 * median(one), 2) + " ms; " +
          std::to_string(sizes.size()) + " layers' on " + std::to_string(sizes.size()) + " threads at once " +
          fmt(1e3 * median(all), 2) + " ms");
  }

  // -- device: the same strict load straight onto cuda:0. copy_to_param is the transfer engine
  // (rows packed into pinned staging, async copies, one pass per tensor), and each layer's
  // process_after_loading compiles its kernels through the JIT cache, allocates the apply
  // workspace and repacks int8 codes. Twice: the first pass may compile (cold JIT cache), the
  // second reads every kernel from the disk cache. The device bytes are read back and compared
  // with the host load's parameters (int8 weights after the same repack).
  // Device memory: "held" is what the loaded model keeps (parameters, apply workspaces, kernel
  // modules), "peak" the most it used at any time during the load (polled); the difference is
  // the load's own transient (an online quantizer's scratch, staging leftovers).
  std::vector<double> device_secs;
  std::size_t device_held = 0, device_load_peak = 0;
  int64_t expert_bytes = 0, expert_bytes_handed = 0;  // of the checkpoint, and handed to the plugins (EP: local)
  LayerReport::Phases phases;  // summed over the layers of the last warm pass
  int64_t scanned_packing = 0, scanned_after = 0;  // weight bytes, the last warm pass
  bool device_ok = true;
  for (int pass = 0; pass < 1 + repeat; ++pass) {
    const cuda::MemoryInfo before = cuda::memory_info();
    LoadOptions ld = lo;
    ld.device = {kDLCUDA, 0};
    // The pass's timeline: when the checkpoint was open, when the first expert tensor and half
    // and all of the bytes had been handed to the plugins, when each layer was done.
    std::vector<double> layer_done;
    double opened = 0, first = -1, half = -1, all = -1;
    FreeMemoryLow low;
    const auto td = Clock::now();
    ld.progress = [&](const LoadProgress& p) {
      const double t = seconds_since(td);
      if (first < 0 && p.bytes_done > 0) first = t;
      if (half < 0 && 2 * p.bytes_done >= p.bytes_total) half = t;
      if (all < 0 && p.bytes_done >= p.bytes_total) all = t;
      if (static_cast<int>(layer_done.size()) < p.layers_done) layer_done.push_back(t);
    };
    const jit::Stats jit_before = jit::JitService::process().stats();
    const Checkpoint ck3 = Checkpoint::open(opt.dir);
    opened = seconds_since(td);
    LoadedModel dm = load_model(ck3, registry, ld);
    device_secs.push_back(seconds_since(td));
    if (pass == 0) {
      const jit::Stats j = jit::JitService::process().stats();
      say("  first pass's JIT: " + std::to_string(j.compiled - jit_before.compiled) + " kernel sets compiled (" +
          fmt(j.compile_ms - jit_before.compile_ms, 0) + " ms of NVRTC summed), " +
          std::to_string(j.disk_hits - jit_before.disk_hits) + " read from the disk cache (" +
          fmt(j.cache_read_ms - jit_before.cache_read_ms, 1) + " ms summed), " +
          std::to_string(j.memory_hits - jit_before.memory_hits) + " from this process; options and keys " +
          fmt(j.keys_ms - jit_before.keys_ms, 1) + " ms summed");
    }
    // The first pass (kernels compiled when the JIT cache is empty) and the last warm one.
    if (pass == 0 || pass == repeat) {
      std::string line = std::string(pass == 0 ? "  first pass" : "  last warm pass") +
                         ", ms from its start: checkpoint open " + fmt(1e3 * opened, 1) +
                         ", first tensor handed " + fmt(1e3 * first, 1) + ", half the bytes " + fmt(1e3 * half, 1) +
                         ", all " + fmt(1e3 * all, 1) + "; layers done at";
      for (double t : layer_done) line += " " + fmt(1e3 * t, 1);
      say(line + "; returned " + fmt(1e3 * device_secs.back(), 1));
      // Where the start and the end go: load_model's own marks (from its start, after the open),
      // then each layer's, in ms.
      auto ms = [](double s) { return s < 0 ? std::string("-") : fmt(1e3 * s, 1); };
      say("  load_model marks, ms from its call: names routed " + ms(dm.at.routed) + ", scratch " + ms(dm.at.scratch) +
          ", layers' threads done " + ms(dm.at.layers));
      for (const auto& l : dm.layers) {
        const LayerReport::Marks& a = l->report.at;
        say("    " + l->report.prefix + ": start " + ms(a.start) + ", plugin chosen " + ms(a.selected) +
            ", weights created " + ms(a.created) + ", first piece " + ms(a.first_piece) + ", all handed " +
            ms(a.handed) + ", copies done " + ms(a.copied) + ", prepared " + ms(a.prepared));
      }
    }
    const std::size_t lowest_free = low.stop();
    device_held = std::max(device_held, before.free - cuda::memory_info().free);
    device_load_peak = std::max(device_load_peak, before.free - std::min(lowest_free, before.free));
    if (pass >= 1) {
      phases = {};
      scanned_packing = scanned_after = 0;
      for (const auto& l : dm.layers) {
        scanned_packing += l->report.bytes_scanned_packing;
        scanned_after += l->report.bytes_scanned_after;
        phases.setup += l->report.seconds.setup;
        phases.scan += l->report.seconds.scan;
        phases.hand += l->report.seconds.hand;
        phases.copies += l->report.seconds.copies;
        phases.prepare += l->report.seconds.prepare;
      }
      continue;
    }
    for (const auto& l : dm.layers) {
      expert_bytes += l->report.expert_bytes;
      expert_bytes_handed += l->report.expert_bytes_handed;
    }
    for (std::size_t li = 0; li < dm.layers.size() && li < model.layers.size(); ++li) {
      const moeq_layer& dl = *dm.layers[li]->layer;
      const moeq_layer& hl = *model.layers[li]->layer;
      for (std::size_t pi = 0; pi < dl.params.size() && pi < hl.params.size(); ++pi) {
        const ParamRecord& dp = *dl.params[pi];
        const ParamRecord& hp = *hl.params[pi];
        std::vector<std::byte> got(hp.storage.size()), want = hp.storage;
        host::read_param(dl, dp, got.data(), got.size());
        if (hp.dtype == DType::I8 && (hp.name == "w13_weight" || hp.name == "w2_weight")) repack_w8a16(want);
        if (got != want && device_ok) {
          device_ok = false;
          out << "MISMATCH (device load): layer " << dm.layers[li]->report.prefix << " parameter " << hp.name << "\n";
        }
      }
    }
  }
  ok = ok && device_ok;
  const double device_cold_s = device_secs[0];
  const double device_s = median(std::vector<double>(device_secs.begin() + 1, device_secs.end()));
  say("device path: strict load onto cuda:0 through copy_to_param, " + fmt(device_cold_s, 2) + " s first pass, " +
      fmt(device_s, 2) + " s with the JIT cache warm (median of " + std::to_string(repeat) + "); device bytes " +
      (device_ok ? "match" : "DIFFER"));
  say("  weights scanned for NaN/Inf while packed: " + std::to_string(scanned_packing >> 20) + " MiB, afterwards: " +
      std::to_string(scanned_after >> 20) + " MiB (MOEQ_LOAD_SCAN=" +
      (std::getenv("MOEQ_LOAD_SCAN") ? std::getenv("MOEQ_LOAD_SCAN") : "pack") + ")");
  const std::string phase_text = "setup " + fmt(phases.setup, 3) + " s, scan waits " + fmt(phases.scan, 3) +
                                 " s, handing " + fmt(phases.hand, 3) +
                                 " s, copy waits " + fmt(phases.copies, 3) + " s, process_after_loading " +
                                 fmt(phases.prepare, 3) + " s";
  say("  warm pass, summed over the layers' threads: " + phase_text);

  // -- cold: the files dropped from the page cache; the disk's own read; the device load again.
  double evicted_resident = -1, cold_s = 0, cold_resident = -1;
  DiskRead disk;
  std::size_t file_bytes = 0;
  for (const fs::path& f : files) file_bytes += fs::file_size(f);
  if (opt.cold) {
    // NOTE: the checkpoints this run still holds (the raw pass's and the host load's) map pages
    // the first passes touched; those pages stay cached, whatever the advice, until unmapped.
    unmap_pages(ck);
    unmap_pages(ck2);
    evicted_resident = evict(files);
    disk = disk_read(files, sc.threads);
    evict(files);
    LoadOptions ld = lo;
    ld.device = {kDLCUDA, 0};
    const auto tc = Clock::now();
    const Checkpoint ck4 = Checkpoint::open(opt.dir);
    LoadedModel cm = load_model(ck4, registry, ld);
    cold_s = seconds_since(tc);
    cold_resident = resident_fraction(files);
    say("cold: page cache " + fmt(100 * evicted_resident, 1) + "% after dropping the files; disk read " +
        fmt(disk.gbps) + " GB/s (" + (disk.direct ? "O_DIRECT" : "buffered: O_DIRECT refused") + ", " +
        fmt(mib(double(disk.bytes)), 0) + " MiB in " + fmt(disk.seconds, 2) + " s); device load from the disk " +
        fmt(cold_s, 2) + " s = " + fmt(gbps(double(checkpoint_bytes), cold_s)) + " GB/s, " +
        fmt(100 * cold_resident, 1) + "% of the files' pages read");
  }
  const double cold_gbps = cold_s > 0 ? gbps(double(checkpoint_bytes), cold_s) : 0;

  if (opt.json) {
    json::object o{
        {"device", dev.name},
        {"checkpoint", opt.dir.string()},
        {"files", files.size()},
        {"tensors", ck.tensors().size()},
        {"page_cache_before", cached_before},
        {"page_cache_after", cached_after},
        {"threads", sc.threads},
        {"chunks", uploader.config().chunks},
        {"chunk_bytes", sc.chunk_bytes},
        {"pinned_h2d_gbps", pinned_gbps},
        {"pageable_h2d_gbps", pageable_gbps},
        {"raw_bytes", raw.bytes},
        {"raw_first_gbps", gbps(double(raw.bytes), raw.first_s)},
        {"raw_gbps", gbps(double(raw.bytes), raw.median_s)},
        {"raw_vs_pinned", pinned_gbps > 0 ? gbps(double(raw.bytes), raw.median_s) / pinned_gbps : 0},
        {"plugin", plugin},
        {"online", lo.online_scheme},
        {"layers", model.layers.size()},
        {"host_load_s", host_s},
        {"upload_s", upload_s},
        {"checkpoint_bytes", checkpoint_bytes},
        {"end_to_end_gbps", gbps(double(checkpoint_bytes), host_s + upload_s)},
        {"final_param_bytes", final_bytes},
        {"upload_gbps", gbps(double(final_bytes), upload_s)},
        {"device_peak_pipeline_bytes", pipeline_peak},
        {"device_peak_meminfo_bytes", peak_info},
        {"device_load_s", device_s},
        {"device_load_cold_jit_s", device_cold_s},
        {"device_load_warm_s", json::array(device_secs.begin() + 1, device_secs.end())},
        {"weight_bytes_scanned_packing", scanned_packing},
        {"weight_bytes_scanned_after", scanned_after},
        {"device_load_gbps", gbps(double(checkpoint_bytes), device_s)},
        {"device_load_resident_bytes", device_held},
        {"device_load_peak_bytes", device_load_peak},
        {"device_load_transient_bytes", device_load_peak - std::min(device_load_peak, device_held)},
        {"within_device_online_goal", device_load_peak <= device_held + expert_bf16 + (std::size_t{64} << 20)},
        {"device_free_at_start", mem_start.free},
        {"online_goal_bytes", goal},
        {"within_online_goal", peak_info <= goal},
        {"verified", ok},
        {"tp", lo.placement.tp_size},
        {"ep", lo.placement.ep_size},
        {"expert_bytes", expert_bytes},
        {"expert_bytes_handed", expert_bytes_handed},
        {"device_load_phase_seconds",
         json::object{{"setup", phases.setup},
                      {"scan", phases.scan},
                      {"hand", phases.hand},
                      {"copies", phases.copies},
                      {"prepare", phases.prepare}}},
    };
    if (opt.cold) {
      o["cold_page_cache_after_drop"] = evicted_resident;
      o["disk_read_gbps"] = disk.gbps;
      o["disk_read_direct"] = disk.direct;
      o["cold_device_load_s"] = cold_s;
      o["cold_device_load_gbps"] = cold_gbps;
      o["cold_vs_disk"] = disk.gbps > 0 ? cold_gbps / disk.gbps : 0;
      o["cold_bytes_read"] = cold_resident * double(file_bytes);
      o["file_bytes"] = file_bytes;
    }
    out << json::serialize(o) << "\n";
    return ok ? 0 : 1;
  }
  const double raw_gbps = gbps(double(raw.bytes), raw.median_s);
  out << "\n| measure | value |\n|---|---:|\n";
  out << "| pinned H2D floor | " << fmt(pinned_gbps) << " GB/s |\n";
  out << "| pageable H2D | " << fmt(pageable_gbps) << " GB/s |\n";
  out << "| raw pipeline, page cache -> device (median) | " << fmt(raw_gbps) << " GB/s = "
      << fmt(pinned_gbps > 0 ? 100 * raw_gbps / pinned_gbps : 0, 0) << "% of pinned (goal >= 70%) |\n";
  out << "| raw pipeline, first pass | " << fmt(gbps(double(raw.bytes), raw.first_s)) << " GB/s |\n";
  out << "| strict host load (" << plugin << (lo.online_scheme.empty() ? "" : ", online " + lo.online_scheme)
      << ") | " << fmt(host_s, 2) << " s |\n";
  out << "| upload of final parameters (median) | " << fmt(upload_s, 3) << " s, "
      << fmt(gbps(double(final_bytes), upload_s)) << " GB/s |\n";
  out << "| end to end, checkpoint bytes / (load + upload) | " << fmt(gbps(double(checkpoint_bytes), host_s + upload_s))
      << " GB/s (" << fmt(mib(double(checkpoint_bytes)), 0) << " MiB) |\n";
  out << "| strict load straight to cuda:0 (copy_to_param staging; JIT cache warm) | " << fmt(device_s, 2) << " s, "
      << fmt(gbps(double(checkpoint_bytes), device_s)) << " GB/s end to end = "
      << fmt(pinned_gbps > 0 ? 100 * gbps(double(checkpoint_bytes), device_s) / pinned_gbps : 0, 0)
      << "% of pinned |\n";
  out << "| same, first pass (kernels compiled or read from the disk cache) | " << fmt(device_cold_s, 2) << " s |\n";
  out << "| warm pass by phase, summed over the layers' threads | " << phase_text << " |\n";
  out << "| expert bytes handed to the plugins / in the checkpoint (tp " << lo.placement.tp_size << ", ep "
      << lo.placement.ep_size << ") | " << fmt(mib(double(expert_bytes_handed)), 0) << " / "
      << fmt(mib(double(expert_bytes)), 0) << " MiB = "
      << fmt(expert_bytes > 0 ? 100.0 * double(expert_bytes_handed) / double(expert_bytes) : 0, 1) << "% |\n";
  if (opt.cold) {
    out << "| disk's raw read (" << (disk.direct ? "O_DIRECT" : "buffered, O_DIRECT refused") << ", " << sc.threads
        << " threads, 16 MiB requests) | " << fmt(disk.gbps) << " GB/s |\n";
    out << "| strict load to cuda:0 from the disk (page cache dropped: " << fmt(100 * evicted_resident, 1)
        << "% left; JIT cache warm) | " << fmt(cold_s, 2) << " s, " << fmt(cold_gbps) << " GB/s = "
        << fmt(disk.gbps > 0 ? 100 * cold_gbps / disk.gbps : 0, 0) << "% of the disk's read |\n";
    out << "| bytes read from the disk by that load (pages resident after) | "
        << fmt(mib(cold_resident * double(file_bytes)), 0) << " of " << fmt(mib(double(file_bytes)), 0) << " MiB = "
        << fmt(100 * cold_resident, 1) << "% |\n";
  }
  const std::size_t transient = device_load_peak - std::min(device_load_peak, device_held);
  out << "| device memory held after the device load (parameters + apply workspaces + kernels) | "
      << fmt(mib(double(device_held)), 1) << " MiB |\n";
  out << "| device peak during the device load (cuMemGetInfo polled every 100 us) | "
      << fmt(mib(double(device_load_peak)), 1) << " MiB = held + " << fmt(mib(double(transient)), 1)
      << " MiB transient (goal: transient <= one bf16 expert + 64 MiB = "
      << fmt(mib(double(expert_bf16 + (std::size_t{64} << 20))), 1) << " MiB: "
      << (transient <= expert_bf16 + (std::size_t{64} << 20) ? "within" : "OVER") << ") |\n";
  out << "| final parameters | " << fmt(mib(double(final_bytes)), 1) << " MiB |\n";
  out << "| device peak, pipeline allocations | " << fmt(mib(double(pipeline_peak)), 1) << " MiB |\n";
  out << "| device peak, cuMemGetInfo delta | " << fmt(mib(double(peak_info)), 1) << " MiB |\n";
  out << "| goal: final + one bf16 expert (" << fmt(mib(double(expert_bf16)), 1) << " MiB) + 64 MiB | "
      << fmt(mib(double(goal)), 1) << " MiB: " << (peak_info <= goal ? "within" : "OVER") << " |\n";
  out << (ok ? "ALL DEVICE BYTES MATCH\n" : "DEVICE BYTES DIFFER\n");
  return ok ? 0 : 1;
}

}  // namespace moeq::gpu_harness
