// LoadedModel as an engine calls it: apply refuses malformed inputs with an Error naming them
// (never reading past a buffer), a bad layer index is an Error, calls on one layer from several
// threads are serialized, and move-assigning over a model releases what it held.
#include "ct_support.hpp"
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
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
  // compressed_tensors' CPU apply is reentrant, so this checks concurrent results on one layer
  // and across layers; that the lock serializes (a CUDA method has one workspace) is what the
  // cuda: twin in test_gpu_apply.cpp checks.
  const std::vector<float> serial = m.apply(0, x, M, r), serial1 = m.apply(1, x, M, r);
  std::vector<std::vector<float>> outs(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < outs.size(); ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) outs[t] = m.apply(t % 2, x, M, r);  // both layers at once too
    });
  for (auto& t : threads) t.join();
  for (size_t t = 0; t < outs.size(); ++t) CHECK(outs[t] == (t % 2 ? serial1 : serial));
}

TEST_CASE("move-assigning a model over a loaded one releases the old layers' parameters and methods") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 2);
  const int64_t before = host::live_param_bytes();
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t one = host::live_param_bytes() - before;
  CHECK(one > 0);
  // The first model's methods are destroyed here: the parameters were freed before this change
  // too, the methods leaked, which CI's ASan suite (leak detection on) reports.
  m = load_dir(w.dir, p.registry());
  CHECK(host::live_param_bytes() - before == one);
  const auto x = bf16_tokens(2, 64, 5);
  CHECK(m.apply(1, x, 2, random_routing(2, 8, 2, 6)).size() == 128u);
  m = LoadedModel();
  CHECK(host::live_param_bytes() == before);
}

// A host that drives a plugin's table itself: the SDK trampolines refuse NULL arguments, a
// struct_size below the v1.0 size and a geometry no layer can have with INVALID_ARGUMENT (they
// dereferenced NULL, or read past a short struct); the CPU apply refuses a NULL shape or data.
TEST_CASE("SDK trampolines refuse NULL arguments, short structs and impossible geometries") {
  BuiltPlugins p;
  const LoadedPlugin* ct = p.registry().find("compressed_tensors");
  REQUIRE(ct != nullptr);
  const moeq_plugin_api& api = *ct->api;
  auto expect_invalid = [](moeq_status* st, const std::string& says) {
    moeq_status_code code{};
    std::string message;
    REQUIRE(host::take_status(st, code, message));
    CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
    CHECK_MESSAGE(message.find(says) != std::string::npos, message);
  };
  expect_invalid(api.apply(nullptr), "apply: NULL arguments");
  expect_invalid(api.probe(nullptr), "probe: NULL arguments");
  expect_invalid(api.method_create(nullptr), "method_create: NULL arguments");
  expect_invalid(api.describe(nullptr), "describe: NULL arguments");
  moeq_apply_args short_apply{};
  short_apply.struct_size = 8;
  expect_invalid(api.apply(&short_apply), "apply: struct_size 8 is below the v1.0 size");

  TempDir d;
  auto w = small(d);
  LoadedModel m = load_dir(w.dir, p.registry());
  moeq_layer_geometry g = m.layers[0]->geometry;
  moeq_method_create_args ma{sizeof(ma), "{}", "model.layers.0.mlp.experts", "F8_E4M3", &g, {kDLCPU, 0}, nullptr};
  g.tp_rank = 5;
  g.tp_size = 2;
  expect_invalid(api.method_create(&ma), "geometry tp_rank 5 of tp_size 2 is out of range");
  g = m.layers[0]->geometry;
  g.num_local_experts = -3;
  expect_invalid(api.method_create(&ma), "geometry local experts");
  g = m.layers[0]->geometry;
  g.top_k = 0;
  expect_invalid(api.method_create(&ma), "geometry top_k 0 is outside [1, 8]");
  g = m.layers[0]->geometry;
  g.struct_size = 0;
  expect_invalid(api.method_create(&ma), "method_create (geometry): struct_size 0 is below the v1.0 size");

  // The loaded method's CPU apply: NULL shape and NULL data are refused, not dereferenced.
  const LoadedLayer& l = *m.layers[0];
  std::vector<float> x(2 * 64, 0.5f), out(2 * 64);
  std::vector<int32_t> ids{0, 1, 2, 3};
  std::vector<float> wts{0.5f, 0.5f, 0.5f, 0.5f};
  int64_t xs[2] = {2, 64}, xst[2] = {64, 1}, ks[2] = {2, 2}, kst[2] = {2, 1};
  DLTensor tx{x.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor to{out.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor ti{ids.data(), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ks, kst, 0};
  DLTensor tw{wts.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0};
  moeq_apply_args a{sizeof(a), l.method, &tx, &ti, &tw, &to, nullptr};
  host::throw_if_error(api.apply(&a), "a well-formed apply");
  DLTensor no_shape = tx;
  no_shape.shape = nullptr;
  a.x = &no_shape;
  expect_invalid(api.apply(&a), "apply: x must be [M, H]");
  DLTensor no_data = tx;
  no_data.data = nullptr;
  a.x = &no_data;
  expect_invalid(api.apply(&a), "apply: x has NULL data");
}

TEST_CASE("load_model keeps the status code of a layer's first error (no CUDA driver: UNAVAILABLE)") {
  if (cuda::available()) {
    MESSAGE("SKIPPED: this machine has a CUDA driver; the case needs one without");
    return;
  }
  BuiltPlugins p;
  TempDir d;
  auto w = small(d);
  LoadOptions o;
  o.device = {kDLCUDA, 0};
  try {
    load_dir(w.dir, p.registry(), o);
    FAIL("a load onto cuda:0 without a driver succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == MOEQ_STATUS_CODE_UNAVAILABLE);  // was flattened to INVALID_ARGUMENT
    CHECK(std::string(e.what()).find("CUDA") != std::string::npos);
  }
}
