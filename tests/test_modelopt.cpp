// ModelOpt checkpoints through the modelopt bridge: the config is translated to
// compressed-tensors, the method is compressed_tensors' own, tensors are normalized on the way
// in. The three vLLM failures (per-channel [N] expert scales, 4-D block expert scales, k/v
// scales) load here.
#include "support.hpp"

#include <moeq_writer/modelopt.hpp>

#include <boost/json.hpp>

#include <random>
#include <thread>

using namespace moeq;
using namespace moeq::test;

namespace {

// Loads strictly and compares every layer's apply with the reference on the writer's masters,
// quantizing activations as the method says it does.
void check_against_masters(const writer::WrittenCheckpoint& w, const Registry& reg, double tol = 1e-4) {
  LoadedModel model = load_dir(w.dir, reg);
  REQUIRE(model.layers.size() == w.layers.size());
  for (size_t li = 0; li < model.layers.size(); ++li) {
    CAPTURE(li);
    const LayerReport& rep = model.layers[li]->report;
    CHECK(rep.ok());
    CHECK(rep.plugin == "modelopt");
    CHECK(rep.count(LedgerEntry::State::kError) == 0);
    CHECK(rep.count(LedgerEntry::State::kUnknown) == 0);
    for (const auto& c : rep.params) CHECK(c.written == c.numel);
    const std::vector<float> x = seeded_tokens(21, w.layers[li].dequantized.hidden, 31 + li);
    const ref::Routing r = route_with(w.layers[li], x, 21, 2);
    ref::MoeOptions act;
    const ref::ExpertWeights held = model.dequantized(li, &act);
    CHECK(held.w13 == w.layers[li].dequantized.w13);
    CHECK(held.w2 == w.layers[li].dequantized.w2);
    const std::vector<float> out = model.apply(li, x, 21, r);
    CHECK(ref::relative_l2(out, ref::moe_forward(w.layers[li].dequantized, x, 21, r, act)) <= tol);
  }
}

writer::WrittenCheckpoint make(const TempDir& d, writer::ModelOptAlgo algo,
                               writer::ModelOptLayout layout = writer::ModelOptLayout::kPerExpert,
                               bool exclude_last = false) {
  writer::ModelOptSpec s;
  s.algo = algo;
  s.layout = layout;
  s.exclude_last_layer = exclude_last;
  return writer::write_modelopt(d / "mo", s);
}

}  // namespace

TEST_CASE("ModelOpt FP8 per-tensor: 0-D weight and input scales, static activations") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8);
  check_against_masters(w, p.registry());
  LoadedModel m = load_dir(w.dir, p.registry());
  ref::MoeOptions act;
  m.dequantized(0, &act);
  CHECK(act.a1.kind == ref::ActQuant::kFp8PerTensorStatic);
  CHECK(act.a1.static_scale == doctest::Approx(writer::kModelOptW13InputScale));
  CHECK(act.a2.static_scale == doctest::Approx(writer::kModelOptW2InputScale));
}

TEST_CASE("ModelOpt FP8_PER_CHANNEL_PER_TOKEN: per-channel [N] expert scales load (vLLM cannot)") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8PerChannelPerToken);
  CHECK(SafetensorsFile::open(w.dir / "model.safetensors")
            ->tensors()
            .at("model.layers.0.mlp.experts.0.gate_proj.weight_scale")
            .shape == std::vector<int64_t>{128});
  check_against_masters(w, p.registry());
}

TEST_CASE("ModelOpt fp8_pb_wo: 4-D block expert scales [N/128,1,K/128,1] load (vLLM cannot)") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8BlockWeightOnly);
  CHECK(SafetensorsFile::open(w.dir / "model.safetensors")
            ->tensors()
            .at("model.layers.0.mlp.experts.0.down_proj.weight_scale")
            .shape == std::vector<int64_t>{2, 1, 1, 1});
  check_against_masters(w, p.registry());
}

TEST_CASE("ModelOpt Llama-4 fused [E,H,2I] experts with <param>_weight_scale siblings") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8, writer::ModelOptLayout::kLlama4Fused);
  check_against_masters(w, p.registry());
  LoadedModel m = load_dir(w.dir, p.registry());
  for (const LedgerEntry& e : m.layers[0]->report.entries)
    if (e.tensor.ends_with("gate_up_proj_weight_scale")) CHECK(e.routed_to == "w1+w3 of experts 0..3");
}

TEST_CASE("ModelOpt k/v cache scales are reported as skipped KV scales, never errors") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8PerChannelPerToken);
  LoadedModel m = load_dir(w.dir, p.registry());
  int kv = 0;
  for (const std::string& n : m.not_moe)
    if (n.ends_with("k_scale") || n.ends_with("v_scale")) {
      ++kv;
      CHECK(not_moe_note(n).find("KV-cache scale") != std::string::npos);
    }
  CHECK(kv == 5);  // k_proj.k_scale and v_proj.v_scale of two layers, and one self_attn.k_scale
}

TEST_CASE("ModelOpt exclude_modules: an excluded expert layer loads unquantized through compressed_tensors") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8, writer::ModelOptLayout::kPerExpert, true);
  LoadedModel m = load_dir(w.dir, p.registry());
  REQUIRE(m.layers.size() == 2);
  CHECK(m.layers[1]->report.weight_dtype == "BF16");
  CHECK(m.layers[1]->report.describe_json.find("\"scheme\":\"unquantized\"") != std::string::npos);
  check_against_masters(w, p.registry(), 1e-5);
}

TEST_CASE("inspect shows modelopt -> compressed_tensors and the translated config") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8BlockWeightOnly);
  LoadedModel m = load_dir(w.dir, p.registry());
  const std::string& js = m.layers[0]->report.describe_json;
  boost::json::object o = boost::json::parse(js).as_object();
  CHECK(o.at("bridge").as_string() == "modelopt → compressed_tensors");
  CHECK(o.at("quant_algo").as_string() == "fp8_pb_wo");
  const auto& weights = o.at("translated_config").at("config_groups").at("group_0").at("weights").as_object();
  CHECK(weights.at("strategy").as_string() == "block");
  CHECK(boost::json::serialize(weights.at("block_structure")) == "[128,128]");
  CHECK(std::string(o.at("delegate").at("granularity").as_string()).rfind("block", 0) == 0);
}

TEST_CASE("ModelOpt algos without a compressed-tensors equivalent decline naming the algo") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8);
  boost::json::object hf = boost::json::parse(read_text(w.dir / "hf_quant_config.json")).as_object();
  for (const char* algo : {"NVFP4", "W4A8_AWQ", "MIXED_PRECISION"}) {
    hf["quantization"].as_object()["quant_algo"] = algo;
    write_text(w.dir / "hf_quant_config.json", boost::json::serialize(hf));
    const std::string e = error_of([&] { load_dir(w.dir, p.registry()); });
    CHECK(e.find(std::string("modelopt: ModelOpt quant_algo '") + algo + "' has no compressed-tensors equivalent") !=
          std::string::npos);
  }
}

TEST_CASE("a quant_algo that is not a string names what it found, a missing one says it is missing") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8);
  boost::json::object hf = boost::json::parse(read_text(w.dir / "hf_quant_config.json")).as_object();
  hf["quantization"].as_object()["quant_algo"] = 8;
  write_text(w.dir / "hf_quant_config.json", boost::json::serialize(hf));
  std::string e = error_of([&] { load_dir(w.dir, p.registry()); });
  INFO(e);
  CHECK(e.find("quant_algo must be a string such as \"FP8\", found 8 (a number)") != std::string::npos);
  CHECK(e.find("has no quant_algo") == std::string::npos);
  hf["quantization"].as_object().erase("quant_algo");
  write_text(w.dir / "hf_quant_config.json", boost::json::serialize(hf));
  e = error_of([&] { load_dir(w.dir, p.registry()); });
  CHECK(e.find("ModelOpt config has no quant_algo") != std::string::npos);
}

TEST_CASE("quant_algo is case-insensitive and config.json's quant_method modelopt works alone") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8PerChannelPerToken);
  std::filesystem::remove(w.dir / "hf_quant_config.json");
  boost::json::object cfg = boost::json::parse(read_text(w.dir / "config.json")).as_object();
  cfg["quantization_config"].as_object()["quant_algo"] = "fp8_per_channel_per_token";
  write_text(w.dir / "config.json", boost::json::serialize(cfg));
  check_against_masters(w, p.registry());
}

TEST_CASE("a ModelOpt block scale of the wrong 4-D shape is a clear error") {
  BuiltPlugins p;
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8BlockWeightOnly);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    m.at("model.layers.0.mlp.experts.1.gate_proj.weight_scale").shape = {1, 2, 1, 1};
  });
  const std::string e = error_of([&] { load_dir(w.dir, p.registry()); });
  CHECK(e.find("gate_proj.weight_scale: ModelOpt block scale must be [nb_out, 1, nb_in, 1], found [1, 2, 1, 1]") !=
        std::string::npos);
}

TEST_CASE("without compressed_tensors the registry says modelopt's dependency is missing") {
  Registry reg(host::api());
  reg.load_file(std::filesystem::path(MOEQ_TEST_PLUGIN_DIR) / "libmoeq_modelopt.so");
  const auto missing = reg.missing_dependencies();
  REQUIRE(missing.size() == 1);
  CHECK(missing[0].find("modelopt needs plugin compressed_tensors, which is not loaded") != std::string::npos);
}

TEST_CASE("delegation finds the delegate in the Registry load_model is given, and never in a destroyed one") {
  TempDir d;
  auto w = make(d, writer::ModelOptAlgo::kFp8);
  {
    // No host::set_registry: load_model sets its own registry for the load.
    Registry reg(host::api());
    reg.load_directory(MOEQ_TEST_PLUGIN_DIR);
    LoadedModel m = load_dir(w.dir, reg);
    REQUIRE(m.layers.size() == w.layers.size());
    CHECK(m.layers[0]->report.plugin == "modelopt");
  }
  {
    // A registry set for delegation and then destroyed unsets itself: the next load with a live
    // registry delegates through that one (it crashed in Registry::find).
    auto gone = std::make_unique<Registry>(host::api());
    gone->load_directory(MOEQ_TEST_PLUGIN_DIR);
    host::set_registry(gone.get());
    gone.reset();
    Registry live(host::api());
    live.load_directory(MOEQ_TEST_PLUGIN_DIR);
    CHECK(load_dir(w.dir, live).layers.size() == w.layers.size());
  }
  {
    // Loads through two registries at once each delegate through their own (a process-wide
    // registry set for one load raced with the other).
    host::set_registry(nullptr);
    std::vector<std::unique_ptr<Registry>> regs;
    for (int i = 0; i < 2; ++i) {
      regs.push_back(std::make_unique<Registry>(host::api()));
      regs.back()->load_directory(MOEQ_TEST_PLUGIN_DIR);
    }
    std::vector<std::string> errors(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        try {
          for (int i = 0; i < 3; ++i) load_dir(w.dir, *regs[t % 2]);
        } catch (const std::exception& e) {
          errors[t] = e.what();
        }
      });
    for (auto& th : threads) th.join();
    for (const std::string& e : errors) CHECK_MESSAGE(e.empty(), e);
  }
}
