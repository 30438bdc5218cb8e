// LoadedModel as an engine calls it: apply refuses malformed inputs with an Error naming them
// (never reading past a buffer), a bad layer index is an Error, calls on one layer from several
// threads are serialized, and move-assigning over a model releases what it held.
#include "ct_support.hpp"
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq_writer/producers.hpp>

#include <cstdio>
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

// ---------------------------------------------------------------- ABI 1.2 and the zero-copy apply
namespace {

void expect_invalid(moeq_status* st, const std::string& says) {
  moeq_status_code code{};
  std::string message;
  REQUIRE(host::take_status(st, code, message));
  CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK_MESSAGE(message.find(says) != std::string::npos, message);
}

struct HostTensors {
  std::vector<int64_t> shape, strides;
  DLTensor t{};
};
template <class T>
HostTensors host_tensor(std::vector<T>& v, DLDataType dt, int64_t rows, int64_t cols, int64_t row_stride = 0) {
  HostTensors h;
  h.shape = {rows, cols};
  h.strides = {row_stride ? row_stride : cols, 1};
  h.t = DLTensor{v.data(), {kDLCPU, 0}, 2, dt, h.shape.data(), h.strides.data(), 0};
  return h;
}

}  // namespace

TEST_CASE("LoadedModel's DLTensor apply on the CPU equals the vector apply, in F32, BF16 and F16, padded or compact") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 2);
  LoadedModel m = load_dir(w.dir, p.registry());
  REQUIRE(m.layers.size() == 2);
  const LoadedLayer& l = *m.layers[1];
  // What apply takes, from apply_info: the CPU path takes every float dtype, needs no workspace.
  const uint32_t all = MOEQ_DTYPE_BIT_F32 | MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F16;
  CHECK(l.x_dtypes == all);
  CHECK(l.out_dtypes == all);
  CHECK(l.workspace_bytes == 0);
  CHECK(l.workspace == nullptr);
  CHECK(l.tokens_per_pass == std::numeric_limits<int64_t>::max());
  const int64_t H = 64, M = 5, k = 2;
  const std::vector<float> x = bf16_tokens(M, H, 7);  // BF16-exact, so every dtype carries it
  const ref::Routing r = random_routing(M, 8, k, 8);
  const std::vector<float> want = m.apply(1, x, M, r);
  std::vector<int32_t> ids = r.ids;
  std::vector<float> wts = r.weights;
  HostTensors ti = host_tensor(ids, {kDLInt, 32, 1}, M, k), tw = host_tensor(wts, {kDLFloat, 32, 1}, M, k);

  // F32, with x rows 8 elements apart and NULL strides for out (compact).
  std::vector<float> xp(static_cast<size_t>(M * (H + 8)), -99.0f), out(static_cast<size_t>(M * H), 0.0f);
  for (int64_t i = 0; i < M; ++i) std::copy_n(x.begin() + i * H, H, xp.begin() + i * (H + 8));
  HostTensors tx = host_tensor(xp, {kDLFloat, 32, 1}, M, H, H + 8), to = host_tensor(out, {kDLFloat, 32, 1}, M, H);
  to.t.strides = nullptr;
  m.apply(1, tx.t, ti.t, tw.t, to.t, nullptr);
  CHECK(out == want);

  // BF16 x, F16 out: the same values, rounded to F16 on the way out.
  std::vector<uint16_t> xb(x.size()), oh(out.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  HostTensors tb = host_tensor(xb, {kDLBfloat, 16, 1}, M, H), th = host_tensor(oh, {kDLFloat, 16, 1}, M, H);
  m.apply(1, tb.t, ti.t, tw.t, th.t, nullptr);
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(f16_to_float(oh[i])) - want[i]) / (std::abs(want[i]) + 1e-3));
  CHECK(worst < 1e-3);  // F16 keeps 11 bits

  // M = 0 is a no-op, not an error.
  std::vector<float> none;
  HostTensors t0 = host_tensor(none, {kDLFloat, 32, 1}, 0, H), k0 = host_tensor(none, {kDLFloat, 32, 1}, 0, k);
  std::vector<int32_t> no_ids;
  HostTensors i0 = host_tensor(no_ids, {kDLInt, 32, 1}, 0, k);
  m.apply(1, t0.t, i0.t, k0.t, t0.t, nullptr);
}

TEST_CASE("LoadedModel's DLTensor apply refuses wrong devices, shapes, dtypes, strides and ids, naming them") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d);
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t H = 64, M = 3, k = 2;
  std::vector<float> x(static_cast<size_t>(M * H), 0.25f), out(static_cast<size_t>(M * H));
  std::vector<int32_t> ids{0, 1, 2, 3, 4, 5};
  std::vector<float> wts(6, 0.5f);
  HostTensors tx = host_tensor(x, {kDLFloat, 32, 1}, M, H), to = host_tensor(out, {kDLFloat, 32, 1}, M, H);
  HostTensors ti = host_tensor(ids, {kDLInt, 32, 1}, M, k), tw = host_tensor(wts, {kDLFloat, 32, 1}, M, k);
  auto err = [&](const DLTensor& a, const DLTensor& b, const DLTensor& c, const DLTensor& o) {
    return error_of([&] { m.apply(0, a, b, c, o, nullptr); });
  };
  m.apply(0, tx.t, ti.t, tw.t, to.t, nullptr);  // well-formed

  DLTensor dev = tx.t;
  dev.device = {kDLCUDA, 0};
  CHECK(err(dev, ti.t, tw.t, to.t).find("x must be on cpu (the layer's device), found cuda:0") != std::string::npos);
  int64_t short_shape[2] = {M, H - 1};
  DLTensor sh = to.t;
  sh.shape = short_shape;
  CHECK(err(tx.t, ti.t, tw.t, sh).find("out must be [3, 64], found [3, 63]") != std::string::npos);
  DLTensor r1 = tx.t;
  r1.ndim = 1;
  CHECK(err(r1, ti.t, tw.t, to.t).find("x must be 2-D [M, 64], found rank 1") != std::string::npos);
  int64_t col_strides[2] = {1, M};  // column-major
  DLTensor cm = tx.t;
  cm.strides = col_strides;
  CHECK(err(cm, ti.t, tw.t, to.t).find("x needs rows of contiguous elements (strides [>= 64, 1]), found [1, 3]") !=
        std::string::npos);
  DLTensor xi = tx.t;
  xi.dtype = {kDLInt, 32, 1};
  CHECK(err(xi, ti.t, tw.t, to.t).find("x must be F32, BF16, F16 for compressed_tensors, found I32") != std::string::npos);
  DLTensor i64 = ti.t;
  i64.dtype = {kDLInt, 64, 1};
  CHECK(err(tx.t, i64, tw.t, to.t).find("topk_ids must be I32, found I64") != std::string::npos);
  DLTensor wbf = tw.t;
  wbf.dtype = {kDLBfloat, 16, 1};
  CHECK(err(tx.t, ti.t, wbf, to.t).find("topk_weights must be F32, found BF16") != std::string::npos);
  int64_t wide[2] = {M, 9};
  DLTensor k9 = ti.t;
  k9.shape = wide;
  CHECK(err(tx.t, k9, tw.t, to.t).find("topk_ids must have top_k in [1, 8] columns, found 9") != std::string::npos);
  ids[5] = 8;
  CHECK(err(tx.t, ti.t, tw.t, to.t).find("topk_ids[2, 1] is 8; expected a global expert id in [0, 8)") !=
        std::string::npos);
  ids[5] = 5;
  DLTensor nodata = to.t;
  nodata.data = nullptr;
  CHECK(err(tx.t, ti.t, tw.t, nodata).find("out: NULL data") != std::string::npos);
  CHECK(error_of([&] { m.apply(3, tx.t, ti.t, tw.t, to.t, nullptr); }).find("layer index 3 is out of range") !=
        std::string::npos);
}

TEST_CASE("host scratch (ABI 1.2) is refused on a CPU layer and for malformed requests, with the reason") {
  const moeq_host_api& api = *host::api();
  CHECK(api.abi_minor == 2);
  CHECK(api.struct_size >= MOEQ_STRUCT_SIZE(moeq_host_api, scratch_release));
  auto layer = host::make_layer("model.layers.0.mlp", {kDLCPU, 0});
  moeq_scratch_args a{};
  a.struct_size = sizeof a;
  a.layer = layer.get();
  a.bytes = 4096;
  a.purpose = "a test";
  expect_invalid(api.scratch_acquire(&a), "layer model.layers.0.mlp is not on a CUDA device");
  CHECK(a.data == nullptr);
  a.layer = nullptr;
  expect_invalid(api.scratch_acquire(&a), "scratch_acquire: NULL layer");
  a.struct_size = 16;
  expect_invalid(api.scratch_acquire(&a), "scratch_acquire: struct_size too small");
  expect_invalid(api.scratch_acquire(nullptr), "scratch_acquire: struct_size too small");
  api.scratch_release(layer.get(), nullptr);  // nothing held: nothing happens
  api.scratch_release(nullptr, &a);
  // device_info names no arch on the CPU, and a 1.1-sized struct is still served.
  moeq_device_info_args info{};
  info.struct_size = sizeof info;
  info.device = {kDLCPU, 0};
  std::snprintf(info.arch, sizeof info.arch, "junk");
  host::throw_if_error(api.device_info(&info), "device_info");
  CHECK(std::string(info.arch).empty());
  moeq_device_info_args old{};
  old.struct_size = MOEQ_STRUCT_SIZE(moeq_device_info_args, memory_bytes);
  old.device = {kDLCPU, 0};
  std::snprintf(old.arch, sizeof old.arch, "kept");
  host::throw_if_error(api.device_info(&old), "device_info (1.1 size)");
  CHECK(std::string(old.arch) == "kept");  // beyond its struct_size: untouched
}

// A rank touches only its own experts: under EP its share of the expert bytes is handed to the
// plugin (the others' never are); under TP every expert is handed whole but only the shard is
// copied. Reported per layer (and by `moeq load`).
TEST_CASE("the load report counts the expert bytes a rank is handed and copies, under EP and TP") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 2);
  int64_t total = 0, handed_sum = 0;
  for (int rank = 0; rank < 2; ++rank) {
    LoadOptions o;
    o.placement.ep_size = 2;
    o.placement.ep_rank = rank;
    LoadedModel m = load_dir(w.dir, p.registry(), o);
    for (const auto& l : m.layers) {
      const LayerReport& r = l->report;
      CAPTURE(r.prefix);
      CHECK(r.expert_bytes > 0);
      total = rank == 0 ? total + r.expert_bytes : total;
      handed_sum += r.expert_bytes_handed;
      // 8 experts, 4 a rank: half of every per-expert tensor (weights and scales).
      CHECK(r.expert_bytes_handed * 2 == r.expert_bytes);
      CHECK(r.bytes_copied == r.expert_bytes_handed);  // EP alone: every handed byte is copied
    }
  }
  CHECK(handed_sum == total);
  LoadOptions tp;
  tp.placement.tp_size = 2;
  tp.placement.tp_rank = 1;
  LoadedModel m = load_dir(w.dir, p.registry(), tp);
  for (const auto& l : m.layers) {
    const LayerReport& r = l->report;
    CHECK(r.expert_bytes_handed == r.expert_bytes);
    // Half of the fp8 weights and of w1/w3's row scales; w2's row scales ([H]) are whole on each rank.
    CHECK(r.bytes_copied * 2 > r.expert_bytes);
    CHECK(static_cast<double>(r.bytes_copied) < 0.52 * static_cast<double>(r.expert_bytes));
  }
}

TEST_CASE("load progress is reported in order, ends at the total, and reads as one line") {
  BuiltPlugins p;
  TempDir d;
  auto w = small(d, 3);
  std::vector<LoadProgress> seen;
  LoadOptions o;
  o.threads = 2;
  o.progress = [&](const LoadProgress& lp) { seen.push_back(lp); };  // calls are serialized by the loader
  LoadedModel m = load_dir(w.dir, p.registry(), o);
  REQUIRE(m.layers.size() == 3);
  REQUIRE(!seen.empty());
  int64_t total = 0;
  for (const auto& l : m.layers) total += l->report.expert_bytes;
  for (size_t i = 0; i < seen.size(); ++i) {
    CAPTURE(i);
    CHECK(seen[i].bytes_total == total);
    CHECK(seen[i].layers_total == 3);
    CHECK(seen[i].bytes_done <= total);
    if (i > 0) {
      CHECK(seen[i].bytes_done >= seen[i - 1].bytes_done);
      CHECK(seen[i].layers_done >= seen[i - 1].layers_done);
      CHECK(seen[i].seconds >= seen[i - 1].seconds);
    }
  }
  CHECK(seen.back().bytes_done == total);
  CHECK(seen.back().layers_done == 3);
  LoadProgress lp;
  lp.bytes_done = 1'500'000'000;
  lp.bytes_total = 6'000'000'000;
  lp.seconds = 0.5;
  lp.layers_done = 3;
  lp.layers_total = 48;
  CHECK(progress_line(lp) == "  loading experts: 1.50 of 6.00 GB, 3.00 GB/s, ETA 2 s (layer 3 of 48)");
}
