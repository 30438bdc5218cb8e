// No partial state: every parameter allocation of a load is made to fail in turn (the host's
// fault hook), and each time the load fails cleanly, gives back every parameter byte and
// status, registers no layer, and the next clean load succeeds.
#include "support.hpp"

#include <moeq_writer/producers.hpp>

using namespace moeq;
using namespace moeq::test;

namespace {

writer::MoeSpec spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 3;
  s.num_experts = 4;
  s.hidden = 32;
  s.intermediate = 16;
  s.top_k = 2;
  return s;
}

// Disarms the hook however the test leaves.
struct FaultGuard {
  ~FaultGuard() { host::set_allocation_fault(0); }
};

int64_t bytes_of(const LoadedModel& m) {
  int64_t n = 0;
  for (const auto& l : m.layers)
    for (const auto& p : l->layer->params) n += p->accounted_bytes;
  return n;
}

// Parameter allocations one clean load of `dir` makes.
int64_t allocations_of_a_load(const std::filesystem::path& dir, const Registry& reg, const LoadOptions& opt) {
  const int64_t before = host::param_allocations();
  LoadedModel m = load_dir(dir, reg, opt);
  CHECK(bytes_of(m) == host::live_param_bytes());
  return host::param_allocations() - before;
}

void every_allocation_fails_cleanly(writer::Layout layout, const LoadOptions& opt) {
  const auto quiet = host::set_log_sink([](moeq_log_level, const std::string&, const std::string&) {});
  FaultGuard guard;
  BuiltPlugins plugins;
  TempDir tmp("moeq_fault");
  writer::write_ct_fp8_channel(tmp / "ckpt", spec(layout));
  const Checkpoint ck = Checkpoint::open(tmp / "ckpt");
  const int64_t bytes = host::live_param_bytes(), statuses = host::live_statuses();
  const int64_t n = allocations_of_a_load(tmp / "ckpt", plugins.registry(), opt);
  REQUIRE(n >= 3 * 2);  // at least a weight and a scale per layer
  for (int64_t k = 1; k <= n; ++k) {
    CAPTURE(k);
    host::set_allocation_fault(k);
    const std::string message = error_of([&] { load_model(ck, plugins.registry(), opt); });
    CHECK(message.find("allocation failed (injected fault)") != std::string::npos);
    CHECK(host::live_param_bytes() == bytes);
    CHECK(host::live_statuses() == statuses);
    // Collecting errors: the failed layer holds nothing; the layers that loaded hold exactly
    // their own parameters.
    host::set_allocation_fault(k);
    {
      LoadOptions collect = opt;
      collect.collect_errors = true;
      LoadedModel m = load_model(ck, plugins.registry(), collect);
      CHECK(m.failed.size() == 1);
      CHECK(m.layers.size() == 2);
      CHECK(host::live_param_bytes() - bytes == bytes_of(m));
    }
    CHECK(host::live_param_bytes() == bytes);
    // The process loads a checkpoint again as if nothing had happened.
    LoadedModel clean = load_model(ck, plugins.registry(), opt);
    CHECK(clean.layers.size() == 3);
    CHECK(clean.failed.empty());
  }
  CHECK(host::live_param_bytes() == bytes);
  host::set_log_sink(quiet);
}

}  // namespace

TEST_CASE("host parameter bytes are counted while a layer lives and given back when it goes") {
  const int64_t before = host::live_param_bytes(), calls = host::param_allocations();
  {
    std::unique_ptr<moeq_layer> layer = host::make_layer("l", {kDLCPU, 0});
    int64_t shape[2] = {3, 5};
    moeq_param_create_args a{};
    a.struct_size = sizeof(a);
    a.layer = layer.get();
    a.name = "p";
    a.shape = shape;
    a.ndim = 2;
    a.dtype = to_dl(DType::F32);
    host::throw_if_error(host::api()->param_create(&a), "param_create");
    CHECK(host::live_param_bytes() - before == 3 * 5 * 4);
    a.name = "q";
    a.dtype = to_dl(DType::BF16);
    host::throw_if_error(host::api()->param_create(&a), "param_create");
    CHECK(host::live_param_bytes() - before == 3 * 5 * 4 + 3 * 5 * 2);
    CHECK(host::param_allocations() - calls == 2);
  }
  CHECK(host::live_param_bytes() == before);
}

TEST_CASE("the fault hook fails exactly the n-th allocation, with OUT_OF_MEMORY, then disarms") {
  FaultGuard guard;
  std::unique_ptr<moeq_layer> layer = host::make_layer("l", {kDLCPU, 0});
  int64_t shape[1] = {4};
  moeq_param_create_args a{};
  a.struct_size = sizeof(a);
  a.layer = layer.get();
  a.shape = shape;
  a.ndim = 1;
  a.dtype = to_dl(DType::F32);
  const char* names[] = {"a", "b", "c", "d"};
  host::set_allocation_fault(2);
  std::vector<bool> failed;
  for (const char* name : names) {
    a.name = name;
    moeq_status_code code = MOEQ_STATUS_CODE_OK;
    std::string message;
    failed.push_back(host::take_status(host::api()->param_create(&a), code, message));
    if (failed.back()) {
      CHECK(code == MOEQ_STATUS_CODE_OUT_OF_MEMORY);
      CHECK(message == "param_create b: 16 bytes: allocation failed (injected fault)");
    }
  }
  CHECK(failed == std::vector<bool>{false, true, false, false});
  CHECK(layer->params.size() == 3);
}

TEST_CASE("every parameter allocation of a per-expert load fails in turn: nothing is left, the next load works") {
  every_allocation_fails_cleanly(writer::Layout::kPerExpert, {});
}

TEST_CASE("every parameter allocation of a Granite fused load at TP=2 fails in turn: nothing is left") {
  LoadOptions opt;
  opt.placement.tp_size = 2;
  opt.placement.tp_rank = 1;
  every_allocation_fails_cleanly(writer::Layout::kGraniteFused, opt);
}

TEST_CASE("a failed load next to a loaded model gives back its own bytes and leaves the model intact") {
  const auto quiet = host::set_log_sink([](moeq_log_level, const std::string&, const std::string&) {});
  FaultGuard guard;
  BuiltPlugins plugins;
  TempDir tmp("moeq_fault_two");
  const writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(tmp / "a", spec(writer::Layout::kPerExpert));
  writer::write_ct_fp8_channel(tmp / "b", spec(writer::Layout::kGraniteFused));
  LoadedModel a = load_dir(tmp / "a", plugins.registry());
  const int64_t held = host::live_param_bytes();
  CHECK(held >= bytes_of(a));
  host::set_allocation_fault(5);
  error_of([&] { load_dir(tmp / "b", plugins.registry()); });
  CHECK(host::live_param_bytes() == held);
  // The first model still runs.
  const std::vector<float> x = seeded_tokens(4, w.spec.hidden, 1);
  const std::vector<float> y = a.apply(0, x, 4, route_with(w.layers[0], x, 4, w.spec.top_k));
  CHECK(y.size() == x.size());
  host::set_log_sink(quiet);
}
