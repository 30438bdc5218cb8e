// What the ABI promises may run at once, run at once: probes from many threads, statuses and
// log lines from many threads, whole checkpoints loading side by side, apply on different
// layers, and the allocation fault hook under contention. CI runs this suite under TSan
// (`moeq_tests -ts=concurrency`).
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <moeq/scratch_pool.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

using namespace moeq;
using namespace moeq::test;

namespace {

constexpr int kThreads = 8;

template <class F>
void in_parallel(int threads, F&& body) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { body(t); });
  for (auto& th : pool) th.join();
}

writer::MoeSpec small(writer::Layout layout, uint64_t seed) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 2;
  s.num_experts = 4;
  s.hidden = 32;
  s.intermediate = 16;
  s.seed = seed;
  return s;
}

}  // namespace

TEST_SUITE("concurrency") {
  TEST_CASE("probes and selections from many threads agree with one thread") {
    BuiltPlugins plugins;
    TempDir tmp("moeq_conc_probe");
    writer::write_ct_fp8_channel(tmp / "c", small(writer::Layout::kPerExpert, 1));
    const Checkpoint ck = Checkpoint::open(tmp / "c");
    ProbeQuery q;
    q.quant_config_json = ck.quant_config().json;
    q.quant_config_source = ck.quant_config().source;
    q.layer_name = "model.layers.0.mlp.experts";
    q.weight_dtype = "F8_E4M3";
    const std::string chosen = plugins.registry().select(q).chosen->name;
    std::atomic<int> agree{0};
    in_parallel(kThreads, [&](int) {
      for (int i = 0; i < 20; ++i)
        if (plugins.registry().select(q).chosen->name == chosen) ++agree;
    });
    CHECK(agree == kThreads * 20);
  }

  TEST_CASE("statuses and log lines from many threads are counted and delivered exactly") {
    const int64_t before = host::live_statuses();
    std::atomic<int> lines{0};
    const auto previous = host::set_log_sink([&](moeq_log_level, const std::string&, const std::string&) { ++lines; });
    in_parallel(kThreads, [&](int t) {
      for (int i = 0; i < 200; ++i) {
        moeq_status* s = host::api()->status_create(MOEQ_STATUS_CODE_INTERNAL, "x");
        host::api()->log(MOEQ_LOG_LEVEL_WARNING, "t", std::to_string(t).c_str());
        host::api()->status_destroy(s);
      }
    });
    host::set_log_sink(previous);
    CHECK(lines == kThreads * 200);
    CHECK(host::live_statuses() == before);
  }

  TEST_CASE("checkpoints load side by side in threads and give back every byte") {
    const auto quiet = host::set_log_sink([](moeq_log_level, const std::string&, const std::string&) {});
    BuiltPlugins plugins;
    TempDir tmp("moeq_conc_load");
    for (int t = 0; t < 4; ++t)
      writer::write_ct_fp8_channel(tmp / ("c" + std::to_string(t)),
                                   small(t % 2 ? writer::Layout::kGraniteFused : writer::Layout::kPerExpert, 10 + t));
    const int64_t bytes = host::live_param_bytes();
    std::atomic<int> loaded{0};
    in_parallel(4, [&](int t) {
      for (int i = 0; i < 3; ++i) {
        LoadedModel m = load_dir(tmp / ("c" + std::to_string(t)), plugins.registry());
        if (m.layers.size() == 2) ++loaded;
      }
    });
    CHECK(loaded == 12);
    CHECK(host::live_param_bytes() == bytes);
    host::set_log_sink(quiet);
  }

  TEST_CASE("apply on different layers runs at once and matches the serial result") {
    BuiltPlugins plugins;
    TempDir tmp("moeq_conc_apply");
    const writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(tmp / "c", small(writer::Layout::kPerExpert, 3));
    LoadedModel m = load_dir(tmp / "c", plugins.registry());
    REQUIRE(m.layers.size() == 2);
    const int64_t tokens = 8;
    std::vector<std::vector<float>> x(2), serial(2), parallel(2);
    std::vector<ref::Routing> routing;
    for (size_t l = 0; l < 2; ++l) {
      x[l] = seeded_tokens(tokens, w.spec.hidden, 100 + l);
      routing.push_back(route_with(w.layers[l], x[l], tokens, w.spec.top_k));
      serial[l] = m.apply(l, x[l], tokens, routing[l]);
    }
    in_parallel(2, [&](int l) { parallel[l] = m.apply(static_cast<size_t>(l), x[l], tokens, routing[l]); });
    CHECK(parallel == serial);
  }

  TEST_CASE("an armed allocation fault fires exactly once among concurrent allocations") {
    std::vector<std::unique_ptr<moeq_layer>> layers;
    for (int t = 0; t < kThreads; ++t) layers.push_back(host::make_layer("l" + std::to_string(t), {kDLCPU, 0}));
    host::set_allocation_fault(37);
    std::atomic<int> failures{0};
    in_parallel(kThreads, [&](int t) {
      for (int i = 0; i < 10; ++i) {
        const std::string name = "p" + std::to_string(i);
        int64_t shape[1] = {8};
        moeq_param_create_args a{};
        a.struct_size = sizeof(a);
        a.layer = layers[static_cast<size_t>(t)].get();
        a.name = name.c_str();
        a.shape = shape;
        a.ndim = 1;
        a.dtype = to_dl(DType::F32);
        if (moeq_status* s = host::api()->param_create(&a)) {
          ++failures;
          host::api()->status_destroy(s);
        }
      }
    });
    host::set_allocation_fault(0);
    CHECK(failures == 1);
  }

  // The host's loading scratch (scratch_acquire), over a fake allocator: twelve borrowers at
  // once never hold more than the budget together (each alone may), blocks are reused, a
  // borrower that holds scratch never waits, and the last load frees the idle blocks.
  struct FakeDevice {
    std::mutex m;
    std::map<uintptr_t, std::size_t> live;
    uintptr_t next = 0x1000;
    std::size_t allocated = 0, most = 0;
    moeq::host::ScratchPool pool{[this](std::size_t n) {
                                   std::lock_guard l(m);
                                   const uintptr_t a = next;
                                   next += (n + 255) / 256 * 256 + 256;
                                   live[a] = n;
                                   allocated += n;
                                   most = std::max(most, allocated);
                                   return a;
                                 },
                                 [this](uintptr_t a) {
                                   std::lock_guard l(m);
                                   auto it = live.find(a);
                                   if (it == live.end()) return;  // the checks below find it still live
                                   allocated -= it->second;
                                   live.erase(it);
                                 }};
  };

  TEST_CASE("the scratch pool keeps every borrower within the budget and reuses its blocks") {
    FakeDevice dev;
    dev.pool.begin_load(3000);
    std::atomic<std::size_t> lent{0}, most_lent{0};
    std::atomic<int> done{0};
    std::vector<std::thread> threads;
    int owners[12] = {};
    for (int t = 0; t < 12; ++t)
      threads.emplace_back([&, t] {
        const std::size_t bytes = t % 4 == 0 ? 2500 : 1000;  // some borrowers need most of it
        for (int i = 0; i < 40; ++i) {
          const uintptr_t a = dev.pool.acquire(&owners[t], bytes);
          const std::size_t now = lent += bytes;
          std::size_t seen = most_lent.load();
          while (now > seen && !most_lent.compare_exchange_weak(seen, now)) {
          }
          std::this_thread::sleep_for(std::chrono::microseconds(30));
          lent -= bytes;
          CHECK(dev.pool.release(&owners[t], a));
          ++done;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(done == 480);
    CHECK(most_lent.load() <= 3000);
    CHECK(most_lent.load() >= 2000);           // borrowers did overlap
    CHECK(dev.most <= 3000 + 2500);            // idle blocks freed to make room (at most one over)
    CHECK(dev.pool.allocations() < 480);       // blocks were reused
    CHECK(dev.pool.lent_bytes() == 0);
    CHECK(dev.pool.idle_bytes() == dev.allocated);
    dev.pool.end_load();                       // the last load: idle blocks freed
    CHECK(dev.allocated == 0);
    CHECK(dev.live.empty());
  }

  TEST_CASE("the scratch pool lets a holder or a lone borrower go on and frees on release without a load") {
    FakeDevice dev;
    dev.pool.begin_load(1000);
    int a = 0, b = 0;
    const uintptr_t big = dev.pool.acquire(&a, 5000);  // alone: above the budget, still lent
    const uintptr_t more = dev.pool.acquire(&a, 5000);  // a holder never waits
    CHECK(dev.pool.lent_bytes() == 10000);
    std::atomic<bool> got{false};
    std::thread waiter([&] {
      const uintptr_t x = dev.pool.acquire(&b, 100);  // another borrower waits for room
      got = true;
      dev.pool.release(&b, x);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CHECK_FALSE(got.load());
    CHECK_FALSE(dev.pool.release(&b, big));  // not b's
    CHECK(dev.pool.release(&a, big));
    CHECK_FALSE(got.load());  // 5000 still lent
    CHECK(dev.pool.release_all(&a) == 1);
    (void)more;
    waiter.join();
    CHECK(got.load());
    dev.pool.end_load();
    CHECK(dev.allocated == 0);
    const uintptr_t late = dev.pool.acquire(&a, 64);  // no load in progress: freed on release
    CHECK(dev.pool.release(&a, late));
    CHECK(dev.allocated == 0);
  }
}
