// The device writer (moeq/device_staging.hpp) against a host-memory device whose copies run
// only when an event after them is waited for, as a GPU's run when the stream gets to them: a
// chunk packed again before its copies ran, a write that returned before its unstable source was
// read, or a finish() that missed a copy leaves wrong bytes here. Run under TSan in CI
// (suite "concurrency").
#include <moeq/device_staging.hpp>
#include <moeq/host.hpp>
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/task_pool.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

using namespace moeq;
using host::DeviceWrites;
using host::StagingRun;

namespace {

// Copies queue per stream and run when an event recorded after them is waited for.
class DeferredDevice final : public host::StagingBackend {
 public:
  struct Copy {
    uint64_t dst;
    uint64_t src;  // host address of the chunk bytes, or of device bytes
    std::size_t bytes;
  };
  struct Stream {
    std::vector<Copy> queued;
    std::size_t ran = 0;
  };
  struct Event {
    Stream* stream = nullptr;
    std::size_t upto = 0;
  };

  std::byte* allocate_pinned(std::size_t bytes) override {
    if (rendezvous > 0) meet();
    std::lock_guard<std::mutex> lock(mutex_);
    if (pinned_limit >= 0 && pinned_allocations >= pinned_limit) {
      ++pinned_refusals;
      throw Error(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "fake driver: no more page-locked memory");
    }
    chunks_.push_back(std::make_unique<std::byte[]>(bytes));
    ++pinned_allocations;
    return chunks_.back().get();
  }
  void* create_stream() override {
    std::lock_guard<std::mutex> lock(mutex_);
    streams_.push_back(std::make_unique<Stream>());
    return streams_.back().get();
  }
  void* create_event() override {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::make_unique<Event>());
    return events_.back().get();
  }
  // The events waited for, as indices in the order they were created (a chunk each).
  std::vector<std::size_t> waits() {
    std::lock_guard<std::mutex> lock(mutex_);
    return waits_;
  }
  void bind(int ordinal) override { CHECK(ordinal == kOrdinal); }
  void copy(uint64_t dst, const std::byte* src, std::size_t bytes, void* stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (dst == poisoned_dst) throw Error(MOEQ_STATUS_CODE_INTERNAL, "fake driver: copy refused");
    static_cast<Stream*>(stream)->queued.push_back({dst, reinterpret_cast<uint64_t>(src), bytes});
    ++copies;
  }
  void copy_device(uint64_t dst, uint64_t src, std::size_t bytes, void* stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    static_cast<Stream*>(stream)->queued.push_back({dst, src, bytes});
  }
  void record(void* event, void* stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto* e = static_cast<Event*>(event);
    e->stream = static_cast<Stream*>(stream);
    e->upto = e->stream->queued.size();
    ++records;
  }
  void wait(void* event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto* e = static_cast<Event*>(event);
    for (std::size_t i = 0; i < events_.size(); ++i)
      if (events_[i].get() == e) waits_.push_back(i);
    if (e->stream == nullptr) return;
    Stream& s = *e->stream;
    for (; s.ran < e->upto; ++s.ran) {
      const Copy& c = s.queued[s.ran];
      std::memcpy(reinterpret_cast<void*>(c.dst), reinterpret_cast<const void*>(c.src), c.bytes);
    }
  }

  // With `rendezvous` set, an allocation waits (up to 5 s) until that many are in flight at
  // once, and `most_in_flight` records the most there were: allocations made one at a time
  // (under a lock) never get past one.
  void meet() {
    std::unique_lock<std::mutex> lock(meet_mutex_);
    const int now = ++in_flight_;
    most_in_flight = std::max(most_in_flight.load(), now);
    met_.notify_all();
    met_.wait_for(lock, std::chrono::seconds(5), [&] { return in_flight_ >= rendezvous || reached_; });
    reached_ = reached_ || in_flight_ >= rendezvous;
    --in_flight_;
  }
  int rendezvous = 0;
  std::atomic<int> most_in_flight{0};

  static constexpr int kOrdinal = 7;
  std::atomic<int> pinned_allocations{0};
  std::atomic<int> pinned_limit{-1};  // allocations after this many fail
  std::atomic<int> pinned_refusals{0};
  std::atomic<int> copies{0};
  std::atomic<int> records{0};  // chunks sent: copies queued from a chunk, then its event
  std::atomic<uint64_t> poisoned_dst{0};

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<std::byte[]>> chunks_;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::vector<std::unique_ptr<Event>> events_;
  std::vector<std::size_t> waits_;
  std::mutex meet_mutex_;
  std::condition_variable met_;
  int in_flight_ = 0;
  bool reached_ = false;
};

host::StagingShape small_shape() {
  host::StagingShape s;
  s.chunk_bytes = 64 << 10;  // many chunks a write, and chunks reused many times
  s.chunks = 4;
  s.small_bytes = 4 << 10;
  return s;
}

uint64_t addr(const std::vector<std::byte>& v, std::size_t at = 0) { return reinterpret_cast<uint64_t>(v.data() + at); }

// One layer's worth of writes into `dev` (its "device memory"), with what the bytes must be.
// Four kinds: a large contiguous stable source, a large source the caller overwrites as soon as
// write() returns, small writes (scales), and a strided bf16 source cast to f32; plus a fill.
void one_layer(uint32_t seed, std::vector<std::byte>& dev, std::vector<std::byte>& want) {
  std::mt19937 rng(seed);
  auto random_bytes = [&](std::size_t n) {
    std::vector<std::byte> b(n);
    for (auto& x : b) x = static_cast<std::byte>(rng() & 0xff);
    return b;
  };
  const std::size_t big = (300 << 10) + 4 * (seed % 7), cast_rows = 24, cast_cols = 500;
  const std::size_t small_n = 40, small_each = 96;
  const std::size_t fill_n = 3000;
  const std::size_t total = 2 * big + small_n * small_each + cast_rows * cast_cols * 4 + fill_n * 2;
  dev.assign(total, std::byte{0});
  want.assign(total, std::byte{0});
  std::size_t at = 0;

  DeviceWrites w(DeferredDevice::kOrdinal);
  // Stable: the bytes stay until finish().
  const std::vector<std::byte> stable = random_bytes(big);
  StagingRun r;
  r.dst = addr(dev, at);
  r.src = stable.data();
  r.count = static_cast<int64_t>(big);
  w.write({r}, true, "stable");
  std::memcpy(want.data() + at, stable.data(), big);
  at += big;
  // Unstable: overwritten the moment write() returns.
  std::vector<std::byte> scratch = random_bytes(big);
  std::memcpy(want.data() + at, scratch.data(), big);
  r.dst = addr(dev, at);
  r.src = scratch.data();
  w.write({r}, false, "unstable");
  std::fill(scratch.begin(), scratch.end(), std::byte{0xee});
  at += big;
  // Small writes, each from a buffer reused at once.
  for (std::size_t i = 0; i < small_n; ++i) {
    std::vector<std::byte> s = random_bytes(small_each);
    std::memcpy(want.data() + at, s.data(), small_each);
    r.dst = addr(dev, at);
    r.src = s.data();
    r.count = static_cast<int64_t>(small_each);
    w.write({r}, false, "small");
    std::fill(s.begin(), s.end(), std::byte{0xdd});
    at += small_each;
  }
  // Strided bf16 source (every other column of a [rows, 2 * cols] matrix) cast to f32, a run a
  // row, from a stable buffer.
  std::vector<uint16_t> bf(cast_rows * cast_cols * 2);
  for (auto& v : bf) v = static_cast<uint16_t>(0x3f00 + (rng() & 0xff));  // finite, near 0.5
  std::vector<StagingRun> rows;
  for (std::size_t i = 0; i < cast_rows; ++i) {
    StagingRun c;
    c.dst = addr(dev, at + i * cast_cols * 4);
    c.src = reinterpret_cast<const std::byte*>(bf.data() + i * cast_cols * 2);
    c.count = static_cast<int64_t>(cast_cols);
    c.stride = 2;
    c.src_dtype = DType::BF16;
    c.dst_dtype = DType::F32;
    rows.push_back(c);
    for (std::size_t j = 0; j < cast_cols; ++j)
      store_from_float(want.data() + at + i * cast_cols * 4, DType::F32, j,
                       load_as_float(bf.data() + i * cast_cols * 2 + 2 * j, DType::BF16, 0));
  }
  w.write(rows, true, "cast");
  at += cast_rows * cast_cols * 4;
  // A fill of a 2-byte pattern.
  StagingRun f;
  f.dst = addr(dev, at);
  f.count = static_cast<int64_t>(fill_n);
  f.src_dtype = f.dst_dtype = DType::BF16;
  f.fill = true;
  f.pattern[0] = std::byte{0x80};
  f.pattern[1] = std::byte{0x3f};
  w.write({f}, true, "fill");
  for (std::size_t i = 0; i < fill_n; ++i) {
    want[at + 2 * i] = std::byte{0x80};
    want[at + 2 * i + 1] = std::byte{0x3f};
  }
  at += fill_n * 2;
  REQUIRE(at == total);
  w.finish();
}

// one_layer on `n` threads at once (seeds seed0, seed0 + 1, ...); returns how many threw.
int run_layers(int n, uint32_t seed0, std::vector<std::vector<std::byte>>& dev, std::vector<std::vector<std::byte>>& want) {
  dev.assign(n, {});
  want.assign(n, {});
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int l = 0; l < n; ++l)
    threads.emplace_back([&, l] {
      try {
        one_layer(seed0 + static_cast<uint32_t>(l), dev[l], want[l]);
      } catch (const std::exception& e) {
        ++failures;
        MESSAGE("layer " << l << ": " << e.what());
      }
    });
  for (auto& t : threads) t.join();
  return failures.load();
}

}  // namespace

TEST_SUITE("concurrency") {
  TEST_CASE("device staging: twelve layers at once on the task pool, every byte where it belongs") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), small_shape());
    constexpr int kLayers = 12;
    std::vector<std::vector<std::byte>> dev, want;
    CHECK(run_layers(kLayers, 1000, dev, want) == 0);
    for (int l = 0; l < kLayers; ++l) {
      INFO("layer " << l);
      REQUIRE(dev[l].size() == want[l].size());
      std::size_t first_bad = dev[l].size();
      for (std::size_t i = 0; i < dev[l].size(); ++i)
        if (dev[l][i] != want[l][i]) {
          first_bad = i;
          break;
        }
      CHECK(first_bad == dev[l].size());
    }
    // Never more chunks than the shape allows, and the work went through several copies.
    CHECK(d.pinned_allocations.load() <= 4);
    CHECK(d.pinned_allocations.load() >= 1);
    CHECK(d.copies.load() > kLayers * 10);
  }

  TEST_CASE("device staging: a copy the driver refuses fails finish() naming the write, and nothing hangs") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), small_shape());
    std::vector<std::byte> dev(1 << 20), src(1 << 20, std::byte{1});
    d.poisoned_dst = addr(dev, 0);
    {
      DeviceWrites w(DeferredDevice::kOrdinal);
      StagingRun r;
      r.dst = addr(dev, 0);
      r.src = src.data();
      r.count = static_cast<int64_t>(src.size());
      w.write({r}, true, "tensor model.layers.0.mlp.experts.3.down_proj.weight");
      try {
        w.finish();
        FAIL("finish() did not throw");
      } catch (const Error& e) {
        CHECK(std::string(e.what()).find("tensor model.layers.0.mlp.experts.3.down_proj.weight") != std::string::npos);
        CHECK(std::string(e.what()).find("copy refused") != std::string::npos);
      }
    }
    // An unstable write is packed before write() returns, so write() itself reports it; and a
    // writer destroyed without finish() waits for its work.
    {
      DeviceWrites w(DeferredDevice::kOrdinal);
      StagingRun r;
      r.dst = addr(dev, 0);
      r.src = src.data();
      r.count = 1 << 19;
      CHECK_THROWS_WITH_AS(w.write({r}, false, "unstable"), doctest::Contains("unstable: copy to the device"), Error);
      CHECK_NOTHROW(w.finish());
    }
    // A small write is sent with the layer's other small ones at finish(), which names them.
    {
      DeviceWrites w(DeferredDevice::kOrdinal);
      StagingRun r;
      r.dst = addr(dev, 0);
      r.src = src.data();
      r.count = 100;
      w.write({r}, false, "tensor experts.3.w2.weight_scale");
      CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("small writes"), Error);
    }
    d.poisoned_dst = 0;
    {
      DeviceWrites w(DeferredDevice::kOrdinal);
      StagingRun r;
      r.dst = addr(dev, 4096);
      r.src = src.data();
      r.count = 1 << 18;
      w.write({r}, true, "left to the destructor");
    }
    std::vector<std::byte> ran(dev.begin() + 4096, dev.begin() + 4096 + (1 << 18));
    CHECK(ran == std::vector<std::byte>(1 << 18, std::byte{1}));
  }

  TEST_CASE("device staging: page-locked memory that runs out leaves the chunks already there to carry every byte") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    d.pinned_limit = 2;
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), small_shape());
    std::vector<std::vector<std::byte>> dev, want;
    CHECK(run_layers(4, 77, dev, want) == 0);
    for (int l = 0; l < 4; ++l) CHECK(dev[l] == want[l]);
    // Never past the limit. Whether a third chunk was asked for depends on how the writers
    // interleave (a fast pool recycles the first chunk before it needs a second); when one
    // was refused, both allowed ones exist.
    CHECK(d.pinned_allocations.load() >= 1);
    CHECK(d.pinned_allocations.load() <= 2);
    if (d.pinned_refusals.load() > 0) CHECK(d.pinned_allocations.load() == 2);
  }

  TEST_CASE("device staging: layers that need chunks at once allocate them at once, outside the pool's lock") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    d.rendezvous = 2;
    const host::StagingShape shape = small_shape();  // 4 chunks
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), shape);
    constexpr int kLayers = 4;
    std::vector<std::vector<std::byte>> dev(kLayers, std::vector<std::byte>(shape.chunk_bytes));
    std::vector<std::thread> threads;
    for (int l = 0; l < kLayers; ++l)
      threads.emplace_back([&, l] {
        std::vector<std::byte> src(shape.chunk_bytes, static_cast<std::byte>(l + 1));
        DeviceWrites w(DeferredDevice::kOrdinal);
        StagingRun r;
        r.dst = addr(dev[l]);
        r.src = src.data();
        r.count = static_cast<int64_t>(src.size());
        w.write({r}, false, "layer " + std::to_string(l));
        w.finish();
      });
    for (auto& t : threads) t.join();
    CHECK(d.most_in_flight.load() >= 2);
    CHECK(d.pinned_allocations.load() <= 4);
    for (int l = 0; l < kLayers; ++l) CHECK(dev[l] == std::vector<std::byte>(shape.chunk_bytes, static_cast<std::byte>(l + 1)));
  }

  TEST_CASE("device staging: with no page-locked memory at all the write fails naming the tensor") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    device->pinned_limit = 0;
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), small_shape());
    std::vector<std::byte> dev(1 << 20), src(1 << 20, std::byte{3});
    DeviceWrites w(DeferredDevice::kOrdinal);
    StagingRun r;
    r.dst = addr(dev, 0);
    r.src = src.data();
    r.count = static_cast<int64_t>(src.size());
    CHECK_THROWS_WITH_AS(w.write({r}, false, "tensor experts.0.w1"),
                         doctest::Contains("tensor experts.0.w1: copy to the device: fake driver: no more page-locked"),
                         Error);
    w.write({r}, true, "tensor experts.0.w3");
    CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("tensor experts.0.w3"), Error);
    // The failure does not stay with the pool: once memory can be had, a later load stages.
    d.pinned_limit = -1;
    DeviceWrites later(DeferredDevice::kOrdinal);
    later.write({r}, false, "tensor experts.1.w1");
    later.finish();
    CHECK(d.pinned_allocations.load() >= 1);
    CHECK(dev == src);
  }

  TEST_CASE("device staging: stable writes a fraction of a chunk each travel in full chunks") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    const host::StagingShape shape = small_shape();
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), shape);
    // 40 writes of an eighth of a chunk (each above the small-write size), from one stable
    // source into one device buffer, and a plugin's buffer of a third of a chunk in between.
    const std::size_t each = shape.chunk_bytes / 8, n = 40;
    std::vector<std::byte> src(n * each), dev(n * each + shape.chunk_bytes / 3), want(dev.size());
    std::mt19937 rng(5);
    for (auto& b : src) b = static_cast<std::byte>(rng() & 0xff);
    std::memcpy(want.data(), src.data(), src.size());
    std::vector<std::byte> scratch(shape.chunk_bytes / 3, std::byte{0x42});
    std::memcpy(want.data() + src.size(), scratch.data(), scratch.size());
    {
      DeviceWrites w(DeferredDevice::kOrdinal);
      for (std::size_t i = 0; i < n; ++i) {
        StagingRun r;
        r.dst = addr(dev, i * each);
        r.src = src.data() + i * each;
        r.count = static_cast<int64_t>(each);
        w.write({r}, true, "tensor experts." + std::to_string(i) + ".w1");
        if (i == n / 2) {
          StagingRun u;
          u.dst = addr(dev, src.size());
          u.src = scratch.data();
          u.count = static_cast<int64_t>(scratch.size());
          w.write({u}, false, "plugin buffer");
          std::fill(scratch.begin(), scratch.end(), std::byte{0xee});
        }
      }
      w.finish();
    }
    CHECK(dev == want);
    // n / 8 = 5 full chunks of stable bytes and one for the plugin's buffer (a chunk a write
    // would be 41).
    CHECK(d.records.load() == static_cast<int>(n / 8) + 1);
  }

  // The NaN/Inf scan that rides on packing: runs of a scanned source (its dtype, contiguous, not
  // cast) are scanned as they are copied, through every path of write() (gathered stable writes
  // cut across chunks, small writes, a plugin's own buffer); a scan stops at the first non-finite
  // element and records the bytes before it; other runs are copied unscanned. Every byte still
  // lands where it belongs.
  TEST_CASE("device staging: weights scanned while packed: what was scanned, the first non-finite element of each run") {
    auto device = std::make_unique<DeferredDevice>();
    const host::StagingShape shape = small_shape();
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), shape);
    std::mt19937 rng(11);
    // Three bf16 "weights" in one buffer (as a mapped checkpoint holds them) and an f32 one.
    const std::size_t n = 3 * 100000;  // bf16 elements, 600 KB: about ten chunks
    std::vector<uint16_t> w(n);
    for (auto& v : w) v = static_cast<uint16_t>(0x3c00 + (rng() & 0x3ff));  // finite
    w[70000] = 0x7fc0;                                                      // NaN in weight 0
    w[70010] = 0xff80;                                                      // -inf after it
    w[250001] = 0x7f80;                                                     // +inf in weight 2
    std::vector<float> f(5000, 0.25f);
    f[4999] = std::numeric_limits<float>::infinity();
    const auto* wb = reinterpret_cast<const std::byte*>(w.data());
    const auto* fb = reinterpret_cast<const std::byte*>(f.data());
    host::PackScans scans({{wb + 200000 * 2, wb + n * 2, DType::BF16},
                           {wb, wb + 100000 * 2, DType::BF16},
                           {fb, fb + f.size() * 4, DType::F32}});  // weight 1 ([100000, 200000)) is not scanned
    CHECK(scans.covers(wb, 100000, DType::BF16));
    CHECK_FALSE(scans.covers(wb, 100001, DType::BF16));          // runs into an unscanned source
    CHECK_FALSE(scans.covers(wb + 2, 50, DType::F16));          // another dtype
    CHECK_FALSE(scans.covers(wb + 150000 * 2, 10, DType::BF16));  // not a scanned source
    CHECK_FALSE(scans.covers(wb + 199990 * 2, 20, DType::BF16));  // straddles two
    CHECK(scans.covers(fb, 5000, DType::F32));

    std::vector<std::byte> dev(n * 2 + f.size() * 4 + 64 * 2);
    {
      DeviceWrites wr(DeferredDevice::kOrdinal);
      auto run = [&](std::size_t first, std::size_t count, std::size_t dst_at) {
        StagingRun r;
        r.dst = addr(dev, dst_at);
        r.src = wb + first * 2;
        r.count = static_cast<int64_t>(count);
        r.src_dtype = r.dst_dtype = DType::BF16;
        r.scan = scans.covers(r.src, r.count, DType::BF16) ? &scans : nullptr;
        return r;
      };
      // Weight 0 in rows of 1000 (gathered, cut across chunks); weight 1 whole; weight 2 as a
      // plugin's unstable copy; the f32 weight gathered whole.
      for (std::size_t row = 0; row < 100; ++row) wr.write({run(row * 1000, 1000, row * 2000)}, true, "weight 0");
      wr.write({run(100000, 100000, 200000)}, true, "weight 1");
      wr.write({run(200000, 100000, 400000)}, false, "weight 2");
      StagingRun fr;
      fr.dst = addr(dev, n * 2);
      fr.src = fb;
      fr.count = static_cast<int64_t>(f.size());
      fr.src_dtype = fr.dst_dtype = DType::F32;
      fr.scan = &scans;
      wr.write({fr}, true, "weight f32");
      // A small write (64 bf16 of weight 2, under small_bytes) scanned inline.
      wr.write({run(260000, 64, n * 2 + f.size() * 4)}, true, "small");
      wr.finish();
    }
    CHECK(std::memcmp(dev.data(), w.data(), n * 2) == 0);  // every byte copied, scanned or not
    CHECK(std::memcmp(dev.data() + n * 2, f.data(), f.size() * 4) == 0);
    CHECK(std::memcmp(dev.data() + n * 2 + f.size() * 4, w.data() + 260000, 128) == 0);
    // The first non-finite element of each run that met one.
    std::vector<const std::byte*> bad_want = {wb + 70000 * 2, wb + 250001 * 2, fb + 4999 * 4};
    std::sort(bad_want.begin(), bad_want.end());  // ascending addresses (the buffers in either order)
    CHECK(scans.non_finite() == bad_want);
    // Scanned: weight 0 up to and including its NaN (the row of 1000 holding it stops there; the
    // rows after it are scanned); weight 2, cut into chunks of 32768 elements, up to its +inf (in
    // its second chunk, [232768, 265536)), then its third and fourth chunks, and the small run;
    // the f32 weight whole (its +inf is its last element).
    const std::vector<host::PackScans::Range> got = scans.scanned();
    std::vector<host::PackScans::Range> want = {
        {wb, wb + 70001 * 2},       {wb + 71000 * 2, wb + 100000 * 2}, {wb + 200000 * 2, wb + 250002 * 2},
        {wb + 260000 * 2, wb + 260064 * 2}, {wb + 265536 * 2, wb + n * 2}, {fb, fb + 5000 * 4}};
    std::sort(want.begin(), want.end());
    CHECK(got == want);
  }

  TEST_CASE("device staging: a chunk is refilled oldest first, after the pool has grown to its size") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    const host::StagingShape shape = small_shape();  // 4 chunks
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), shape);
    std::vector<std::byte> dev(10 * shape.chunk_bytes), src(shape.chunk_bytes);
    DeviceWrites w(DeferredDevice::kOrdinal);
    for (int i = 0; i < 10; ++i) {
      std::fill(src.begin(), src.end(), static_cast<std::byte>(i + 1));
      StagingRun r;
      r.dst = addr(dev, static_cast<std::size_t>(i) * shape.chunk_bytes);
      r.src = src.data();
      r.count = static_cast<int64_t>(src.size());
      w.write({r}, false, "write " + std::to_string(i));  // packed (one chunk) before it returns
    }
    // Four chunks before any is refilled; the refills wait for the chunks' copies in the order
    // they were queued (the newest-first reuse waited on the copy just queued, every time).
    CHECK(d.pinned_allocations.load() == 4);
    const std::vector<std::size_t> waits = d.waits();
    CHECK(waits == std::vector<std::size_t>{0, 1, 2, 3, 0, 1});
    w.finish();
    for (int i = 0; i < 10; ++i)
      CHECK(dev[static_cast<std::size_t>(i) * shape.chunk_bytes + 7] == static_cast<std::byte>(i + 1));
  }

  TEST_CASE("device staging: a copy refused in a chunk of several writes names the writes of that chunk") {
    auto device = std::make_unique<DeferredDevice>();
    DeferredDevice& d = *device;
    const host::StagingShape shape = small_shape();
    host::ScopedStagingBackend scoped(DeferredDevice::kOrdinal, std::move(device), shape);
    std::vector<std::byte> dev(2 * shape.chunk_bytes), src(2 * shape.chunk_bytes, std::byte{9});
    // The third write's destination: it and the fourth share the second chunk and one copy.
    d.poisoned_dst = addr(dev, shape.chunk_bytes);
    DeviceWrites w(DeferredDevice::kOrdinal);
    for (std::size_t i = 0; i < 4; ++i) {
      StagingRun r;
      r.dst = addr(dev, i * shape.chunk_bytes / 2);
      r.src = src.data() + i * shape.chunk_bytes / 2;
      r.count = static_cast<int64_t>(shape.chunk_bytes / 2);
      w.write({r}, true, "tensor t" + std::to_string(i));
    }
    try {
      w.finish();
      FAIL("finish() did not throw");
    } catch (const Error& e) {
      const std::string m = e.what();
      CHECK(m.find("tensor t2 and tensor t3: copy to the device: fake driver: copy refused") != std::string::npos);
      CHECK(m.find("tensor t1") == std::string::npos);  // the first chunk went through
    }
  }

  TEST_CASE("task pool: waits from inside tasks and from more threads than the pool has finish, and errors reach the waiter") {
    TaskPool pool(2);
    std::atomic<int> ran{0};
    std::vector<std::thread> outside;
    for (int t = 0; t < 6; ++t)
      outside.emplace_back([&] {
        TaskPool::Group g;
        for (int i = 0; i < 50; ++i)
          pool.submit(g, [&] {
            TaskPool::Group inner;  // a task that waits for tasks of its own
            for (int k = 0; k < 3; ++k) pool.submit(inner, [&] { ++ran; });
            pool.wait(inner);
          });
        pool.wait(g);
      });
    for (auto& t : outside) t.join();
    CHECK(ran.load() == 6 * 50 * 3);
    TaskPool::Group g;
    for (int i = 0; i < 20; ++i)
      pool.submit(g, [i, &ran] {
        ++ran;
        if (i == 7) throw Error(MOEQ_STATUS_CODE_INTERNAL, "task 7 failed");
      });
    CHECK_THROWS_WITH_AS(pool.wait(g), "task 7 failed", Error);
    CHECK(ran.load() == 6 * 50 * 3 + 20);  // the others still ran
    pool.submit(g, [&] { ++ran; });
    CHECK_NOTHROW(pool.wait(g));  // the error was reported once
  }
}

// IntervalSet's gaps and ranges, which PackScans keeps its scanned bytes in.
TEST_CASE("IntervalSet: ranges merge where they touch, gaps are what a range leaves uncovered") {
  IntervalSet s;
  s.insert(10, 20);
  s.insert(20, 25);  // touches: merged
  s.insert(40, 50);
  s.insert(45, 60);  // overlaps: merged
  using V = std::vector<std::pair<int64_t, int64_t>>;
  CHECK(s.ranges() == V{{10, 25}, {40, 60}});
  CHECK(s.gaps(0, 100) == V{{0, 10}, {25, 40}, {60, 100}});
  CHECK(s.gaps(12, 24).empty());
  CHECK(s.gaps(15, 45) == V{{25, 40}});
  CHECK(s.gaps(25, 40) == V{{25, 40}});
  CHECK(s.gaps(60, 60).empty());
  CHECK(IntervalSet{}.gaps(3, 7) == V{{3, 7}});
}
