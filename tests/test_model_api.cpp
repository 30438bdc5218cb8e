// LoadedModel as an engine calls it: apply refuses malformed inputs with an Error naming them
// (never reading past a buffer), a bad layer index is an Error, calls on one layer from several
// threads are serialized, and move-assigning over a model releases what it held.
#include "ct_support.hpp"
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <limits>
#include <thread>

using namespace moeq;
using namespace moeq::test;

namespace {

writer::WrittenCheckpoint small(const TempDir& d, int layers = 1) {
  writer::MoeSpec s;
  s.num_layers = layers;
  s.num_experts = 8;
  s.hidden = 64;
  s.intermediate = 32;
  return writer::write_ct_fp8_channel(d / "ckpt", s);
}

}  // namespace

TEST_CASE("LoadedModel::apply refuses malformed x and routing with an Error naming what is wrong") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d);
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t H = 64, M = 3;
  const std::vector<float> x = bf16_tokens(M, H, 1);
  const ref::Routing good = random_routing(M, 8, 2, 2);
  CHECK(m.apply(0, x, M, good).size() == static_cast<size_t>(M * H));

  auto err = [&](std::span<const float> xs, int64_t mm, const ref::Routing& r) {
    return error_of([&] { m.apply(0, xs, mm, r); });
  };
  ref::Routing r = good;
  r.top_k = 4;  // ids and weights hold M x 2
  CHECK(err(x, M, r).find("routing ids must hold M x top_k = 3 x 4 values, found 6") != std::string::npos);
  r = good;
  r.weights.pop_back();
  CHECK(err(x, M, r).find("routing weights must hold M x top_k = 3 x 2 values, found 5") != std::string::npos);
  r = good;
  r.ids.clear();
  CHECK(err(x, M, r).find("routing ids must hold") != std::string::npos);
  for (int k : {0, -1, 9}) {
    r = good;
    r.top_k = k;
    CHECK(err(x, M, r).find("routing top_k must be in [1, 8], found " + std::to_string(k)) != std::string::npos);
  }
  for (int32_t id : {-1, 8, std::numeric_limits<int32_t>::max()}) {
    r = good;
    r.ids[3] = id;  // token 1, slot 1
    CHECK(err(x, M, r).find("routing id of token 1, slot 1 is " + std::to_string(id) +
                            "; expected a global expert id in [0, 8)") != std::string::npos);
  }
  // M x H that overflows int64 must not wrap around to the (empty) x it is compared with.
  ref::Routing huge = good;
  huge.num_tokens = int64_t{1} << 58;
  CHECK(err({}, huge.num_tokens, huge).find("x must be [M, H]") != std::string::npos);
  CHECK(err(x, -1, good).find("M must be >= 0") != std::string::npos);
  CHECK(err(std::span<const float>(x).first(10), M, good).find("x must be [M, H] = [3, 64], found 10 values") !=
        std::string::npos);
  // A layer index past the loaded layers is an Error too (was std::out_of_range).
  for (const std::string e : {error_of([&] { m.apply(1, x, M, good); }), error_of([&] { m.dequantized(5, nullptr); }),
                              error_of([&] { m.router_weight(1); }), error_of([&] { m.routing(2); })})
    CHECK(e.find("is out of range: 1 layers loaded") != std::string::npos);
}

TEST_CASE("LoadedModel::apply from eight threads on one layer gives the serial result") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 2);
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t M = 17;
  const auto x = bf16_tokens(M, 64, 3);
  const auto r = random_routing(M, 8, 2, 4);
  const std::vector<float> serial = m.apply(0, x, M, r);
  std::vector<std::vector<float>> outs(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < outs.size(); ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) outs[t] = m.apply(t % 2, x, M, r);  // both layers at once too
    });
  for (auto& t : threads) t.join();
  for (size_t t = 0; t < outs.size(); t += 2) CHECK(outs[t] == serial);
}

TEST_CASE("move-assigning a model over a loaded one releases the old layers' parameters and methods") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 2);
  const int64_t before = host::live_param_bytes();
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t one = host::live_param_bytes() - before;
  CHECK(one > 0);
  m = load_dir(w.dir, p.registry());  // the first model's methods are destroyed here (ASan: no leak)
  CHECK(host::live_param_bytes() - before == one);
  const auto x = bf16_tokens(2, 64, 5);
  CHECK(m.apply(1, x, 2, random_routing(2, 8, 2, 6)).size() == 128u);
  m = LoadedModel();
  CHECK(host::live_param_bytes() == before);
}
