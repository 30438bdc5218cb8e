// What the ABI promises may run at once, run at once: probes from many threads, statuses and
// log lines from many threads, whole checkpoints loading side by side, apply on different
// layers, and the allocation fault hook under contention. CI runs this suite under TSan
// (`moeq_tests -ts=concurrency`).
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include "../plugins/online_quant/lending_pool.hpp"

#include <atomic>
#include <chrono>
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

namespace {
struct Item {  // what the lending pool test lends
  static inline std::atomic<int> alive{0};
  int uses = 0;
  Item() { ++alive; }
  ~Item() { --alive; }
};
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

  // online_quant's per-device scratch pool: twelve threads borrow at once, never more than the
  // limit exist or are out at a time, everything is reused, and the last detach hands the idle
  // items back to destroy.
  TEST_CASE("the lending pool lends at most its limit at once and frees on the last detach") {
    moeq::online::LendingPool<Item> pool;
    pool.attach();
    pool.attach();
    std::atomic<int> out{0}, most_out{0}, done{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 12; ++t)
      threads.emplace_back([&] {
        for (int i = 0; i < 50; ++i) {
          Item* it = pool.acquire(3);
          const int now = ++out;
          int seen = most_out.load();
          while (now > seen && !most_out.compare_exchange_weak(seen, now)) {
          }
          ++it->uses;
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          --out;
          CHECK(pool.give_back(it) == nullptr);  // users attached: kept
          ++done;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(done == 600);
    CHECK(most_out.load() <= 3);
    CHECK(most_out.load() >= 2);  // they did overlap
    CHECK(pool.high_water() == 3);
    CHECK(pool.existing() == 3);
    CHECK(Item::alive == 3);
    CHECK(pool.detach().empty());  // one user still attached
    auto idle = pool.detach();
    CHECK(idle.size() == 3);
    int uses = 0;
    for (auto& it : idle) uses += it->uses;
    CHECK(uses == 600);
    idle.clear();
    CHECK(Item::alive == 0);
    CHECK(pool.existing() == 0);
    // An item given back with no user attached is returned to destroy; a forgotten one frees
    // its place for a waiting borrower.
    Item* late = pool.acquire(1);
    CHECK(pool.give_back(late) != nullptr);
    CHECK(Item::alive == 0);
    pool.attach();
    Item* a = pool.acquire(1);
    std::atomic<bool> got{false};
    std::thread waiter([&] {
      Item* b = pool.acquire(1);
      got = true;
      pool.give_back(b);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(got.load());  // the only place is lent
    pool.forget(a).reset();
    waiter.join();
    CHECK(got.load());
    CHECK(pool.detach().size() == 1);
  }

  // Borrowers of bigger items (an F32 projection: limit 1) and of smaller ones (BF16: limit 3)
  // at once: a limit-1 borrower holds its item alone, even when three smaller ones sit idle.
  TEST_CASE("the lending pool honours each borrower's own limit when limits differ") {
    moeq::online::LendingPool<Item> pool;
    pool.attach();
    std::atomic<int> out{0}, alone_violations{0}, done{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        const std::size_t limit = t % 4 == 0 ? 1 : 3;
        for (int i = 0; i < 40; ++i) {
          Item* it = pool.acquire(limit);
          const int now = ++out;
          if (limit == 1 && now != 1) ++alone_violations;
          if (now > 3) ++alone_violations;
          std::this_thread::sleep_for(std::chrono::microseconds(30));
          if (limit == 1 && out.load() != 1) ++alone_violations;
          --out;
          pool.give_back(it);
          ++done;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(done == 320);
    CHECK(alone_violations == 0);
    CHECK(pool.high_water() <= 3);
    CHECK(pool.detach().size() == pool.high_water());
    CHECK(Item::alive == 0);
  }
}
