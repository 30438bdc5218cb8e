// Bad checkpoints through the whole load path: each a clear error naming the tensor or
// parameter, expected and found; never a silent default, and the process can load again.
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <cmath>
#include <limits>

using namespace moeq;
using namespace moeq::test;
namespace fs = std::filesystem;

namespace {

writer::WrittenCheckpoint good(const TempDir& dir, writer::Layout layout = writer::Layout::kPerExpert,
                               int64_t layers = 1) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = layers;
  s.num_experts = 4;
  s.hidden = 64;
  s.intermediate = 32;
  return writer::write_ct_fp8_channel(dir / "ckpt", s);
}

std::string load_error(const std::filesystem::path& dir, const Registry& reg, LoadOptions o = {}) {
  return error_of([&] { load_dir(dir, reg, o); });
}

// A --no-strict load, with the warnings it logged.
LoadedModel load_lax(const std::filesystem::path& dir, const Registry& reg, std::vector<std::string>& warnings) {
  LoadOptions lax;
  lax.strict = false;
  auto old = host::set_log_sink([&](moeq_log_level, const std::string&, const std::string& m) { warnings.push_back(m); });
  try {
    LoadedModel m = load_dir(dir, reg, lax);
    host::set_log_sink(old);
    return m;
  } catch (...) {
    host::set_log_sink(old);
    throw;
  }
}

const char* kScale = "model.layers.0.mlp.experts.2.up_proj.weight_scale";

}  // namespace

TEST_CASE("a scale of the wrong shape names the tensor, expected and found") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    EditableTensor& t = m.at(kScale);
    t.shape = {16, 2};
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find(kScale) != std::string::npos);
  CHECK(e.find("expected a per-channel scale [32, 1] or [32]") != std::string::npos);
  CHECK(e.find("found [16, 2]") != std::string::npos);
}

TEST_CASE("a missing scale is an unwritten parameter, never a silent 1.0") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) { m.erase(kScale); });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("parameter 'w13_weight_scale'") != std::string::npos);
  CHECK(e.find("32 of 256 elements not written, first at [2, 32, 0]") != std::string::npos);
  // Non-strict loads it with a warning, and the element stays as allocated (never 1.0).
  std::vector<std::string> warnings;
  LoadedModel m = load_lax(w.dir, p.registry(), warnings);
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("w13_weight_scale") != std::string::npos);
  // Loaded, but the report keeps what strict loading would have refused.
  const LayerReport& rep = m.layers[0]->report;
  CHECK(rep.ok());
  CHECK_FALSE(rep.strict_clean());
  REQUIRE(rep.waived.size() == 1);
  CHECK(rep.waived[0].find("parameter 'w13_weight_scale'") != std::string::npos);
  CHECK(warnings[0].find(rep.waived[0]) != std::string::npos);
  const ParamRecord* rec = host::find_param(*m.layers[0]->layer, "w13_weight_scale");
  REQUIRE(rec != nullptr);
  CHECK(load_as_float(rec->storage.data(), DType::F32, 2 * 64 + 32) == 0.0f);
}

TEST_CASE("a missing expert weight names the parameter and the first unwritten element") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) { m.erase("model.layers.0.mlp.experts.3.down_proj.weight"); });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("parameter 'w2_weight' [4, 64, 32]") != std::string::npos);
  CHECK(e.find("first at [3, 0, 0]") != std::string::npos);
}

TEST_CASE("NaN, Inf, zero and negative scales are rejected with the element") {
  BuiltPlugins p;
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), 0.0f, -0.5f}) {
    CAPTURE(bad);
    TempDir d;
    auto w = good(d);
    rewrite_tensors(w.dir, [&](TensorMap& m) { set_element(m.at(kScale), 5, bad); });
    const std::string e = load_error(w.dir, p.registry());
    CHECK(e.find(kScale) != std::string::npos);
    CHECK(e.find("scale element [5, 0]") != std::string::npos);
    CHECK(e.find("must be finite and > 0") != std::string::npos);
  }
}

TEST_CASE("an unknown expert tensor and an unexpected suffix are errors") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    m["model.layers.0.mlp.experts.bogus.weight"] = m.at("model.layers.0.mlp.experts.0.up_proj.weight_scale");
  });
  CHECK(load_error(w.dir, p.registry()).find("unknown expert tensor model.layers.0.mlp.experts.bogus.weight") !=
        std::string::npos);

  TempDir d2;
  auto w2 = good(d2);
  rewrite_tensors(w2.dir, [](TensorMap& m) {
    m["model.layers.0.mlp.experts.1.gate_proj.weight_zero_point"] =
        m.at("model.layers.0.mlp.experts.1.gate_proj.weight_scale");
  });
  const std::string e = load_error(w2.dir, p.registry());
  CHECK(e.find("weight_zero_point") != std::string::npos);
  CHECK(e.find("unexpected tensor") != std::string::npos);
}

TEST_CASE("weight_scale and weight_scale_inv for one weight: an error naming both") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    m["model.layers.0.mlp.experts.2.up_proj.weight_scale_inv"] = m.at(kScale);
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("weight_scale") != std::string::npos);
  CHECK(e.find("weight_scale_inv") != std::string::npos);
  CHECK(e.find("both") != std::string::npos);
}

TEST_CASE("weight_scale_inv alone is the same multiplier as weight_scale") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  LoadedModel ref_model = load_dir(w.dir, p.registry());
  const ref::ExpertWeights expect = ref_model.dequantized(0, nullptr);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    TensorMap renamed;
    for (auto& [n, t] : m) {
      std::string name = n;
      if (name.ends_with(".weight_scale") && name.find("experts") != std::string::npos) name += "_inv";
      renamed[name] = t;
    }
    m = renamed;
  });
  LoadedModel model = load_dir(w.dir, p.registry());
  CHECK(model.dequantized(0, nullptr).w13 == expect.w13);
}

TEST_CASE("a fused tensor whose leading dim disagrees with num_experts") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d, writer::Layout::kGraniteFused);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    EditableTensor& t = m.at("model.layers.0.block_sparse_moe.output_linear.weight_scale");
    t.shape = {2, 128, 1};
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("output_linear.weight_scale") != std::string::npos);
  CHECK(e.find("expected leading dim num_experts = 4, found shape [2, 128, 1]") != std::string::npos);
}

TEST_CASE("an expert index beyond num_experts") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    m["model.layers.0.mlp.experts.9.gate_proj.weight"] = m.at("model.layers.0.mlp.experts.0.gate_proj.weight");
  });
  CHECK(load_error(w.dir, p.registry()).find("expert 9 but config.json has num_experts 4") != std::string::npos);
}

TEST_CASE("a weight of the wrong dtype or shape") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    EditableTensor& t = m.at("model.layers.0.mlp.experts.1.down_proj.weight");
    t.shape = {32, 64};
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("down_proj.weight: expected F8_E4M3 [64, 32] for w2, found F8_E4M3 [32, 64]") != std::string::npos);
}

TEST_CASE("bf16 expert weights under an FP8 config: no plugin takes the layer, with reasons") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    for (auto& [n, t] : m)
      if (n.ends_with("_proj.weight") && n.find("experts") != std::string::npos) {
        std::vector<std::byte> b(t.bytes.size() * 2);
        for (size_t i = 0; i < t.bytes.size(); ++i)
          store_from_float(b.data(), DType::BF16, i, fp8_e4m3_to_float(static_cast<uint8_t>(t.bytes[i])));
        t.dtype = DType::BF16;
        t.bytes = b;
      }
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("no plugin takes layer") != std::string::npos);
  CHECK(e.find("compressed_tensors: config says FP8 but the expert weights are BF16") != std::string::npos);
}

TEST_CASE("a config without quantization_config: every plugin declines with a reason") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  boost::json::object cfg = boost::json::parse(read_text(w.dir / "config.json")).as_object();
  cfg.erase("quantization_config");
  write_text(w.dir / "config.json", boost::json::serialize(cfg));
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("compressed_tensors: the checkpoint has no quantization_config") != std::string::npos);
  CHECK(e.find("modelopt:") != std::string::npos);
  CHECK(e.find("online_quant:") != std::string::npos);
}

TEST_CASE("a config with an unsupported weight strategy declines naming it") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  boost::json::object cfg = boost::json::parse(read_text(w.dir / "config.json")).as_object();
  cfg["quantization_config"].as_object()["config_groups"].as_object()["group_0"].as_object()["weights"].as_object()
      ["strategy"] = "tensor_group";
  write_text(w.dir / "config.json", boost::json::serialize(cfg));
  CHECK(load_error(w.dir, p.registry()).find("strategy 'tensor_group'") != std::string::npos);
}

TEST_CASE("config.json without the MoE geometry") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  boost::json::object cfg = boost::json::parse(read_text(w.dir / "config.json")).as_object();
  cfg.erase("num_experts");
  write_text(w.dir / "config.json", boost::json::serialize(cfg));
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("config.json: missing num_experts / num_local_experts / n_routed_experts") != std::string::npos);
}

TEST_CASE("a pinned plugin overrides the probes, a pin that declines is an error") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  LoadOptions o;
  o.pin_plugin = "compressed_tensors";
  CHECK(load_dir(w.dir, p.registry(), o).layers[0]->report.plugin_why == "pinned by the user");
  o.pin_plugin = "online_quant";
  CHECK(load_error(w.dir, p.registry(), o).find("online_quant") != std::string::npos);
  o.pin_plugin = "nope";
  CHECK(load_error(w.dir, p.registry(), o).find("pinned plugin nope is not loaded") != std::string::npos);
}

TEST_CASE("a failed load leaves the process able to load another checkpoint") {
  BuiltPlugins p;
  TempDir bad_dir, good_dir;
  auto bad = good(bad_dir);
  rewrite_tensors(bad.dir, [](TensorMap& m) { set_element(m.at(kScale), 0, std::nanf("")); });
  const int64_t statuses = host::live_statuses();
  CHECK_FALSE(load_error(bad.dir, p.registry()).empty());
  CHECK(host::live_statuses() == statuses);  // every status made on the failure path was freed
  auto ok = good(good_dir);
  LoadedModel m = load_dir(ok.dir, p.registry());
  CHECK(m.layers.size() == 1);
  CHECK(m.layers[0]->report.ok());
}

TEST_CASE("collect_errors reports a failed layer with its ledger instead of throwing") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);
  rewrite_tensors(w.dir, [](TensorMap& m) { m.erase(kScale); });
  LoadOptions o;
  o.collect_errors = true;
  LoadedModel m = load_dir(w.dir, p.registry(), o);
  CHECK(m.layers.empty());
  REQUIRE(m.failed.size() == 1);
  CHECK(m.failed[0].count(LedgerEntry::State::kConsumed) == 6 * 4 - 1);
  CHECK_FALSE(m.failed[0].problems.empty());
}

TEST_CASE("a layer whose router is present but whose experts are all missing fails, naming the router") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d, writer::Layout::kPerExpert, 2);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    std::erase_if(m, [](const auto& kv) { return kv.first.rfind("model.layers.1.mlp.experts.", 0) == 0; });
  });
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("router model.layers.1.mlp.gate.weight is in the checkpoint but no expert tensor of this layer is") !=
        std::string::npos);
  // --no-strict loads the layer that is whole and warns about the other.
  std::vector<std::string> warnings;
  LoadedModel m = load_lax(w.dir, p.registry(), warnings);
  REQUIRE(m.layers.size() == 1);
  CHECK(m.layers[0]->report.prefix == "model.layers.0.mlp");
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("router model.layers.1.mlp.gate.weight but no expert tensors") != std::string::npos);
  // A layer with experts but no router still loads (routers are only needed to run).
  TempDir d2;
  auto w2 = good(d2, writer::Layout::kPerExpert, 2);
  rewrite_tensors(w2.dir, [](TensorMap& m) { m.erase("model.layers.1.mlp.gate.weight"); });
  CHECK(load_dir(w2.dir, p.registry()).layers.size() == 2);
}

TEST_CASE("a NaN or infinite expert weight is an error naming the tensor, projection, expert and [row, col]") {
  BuiltPlugins p;
  SUBCASE("fp8 e4m3 NaN codes, per-expert and Granite's fused tensor") {
    for (auto layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
      CAPTURE(writer::layout_name(layout));
      TempDir d;
      auto w = good(d, layout);
      const bool fused = layout == writer::Layout::kGraniteFused;
      const std::string tensor =
          fused ? "model.layers.0.block_sparse_moe.input_linear.weight" : "model.layers.0.mlp.experts.2.up_proj.weight";
      // Expert 2's w3 (up_proj), element [5, 9]: in the fused [E, 2I, H] tensor, row I + 5 of expert 2.
      const size_t at = fused ? static_cast<size_t>((2 * 64 + 32 + 5) * 64 + 9) : static_cast<size_t>(5 * 64 + 9);
      rewrite_tensors(w.dir, [&](TensorMap& m) { m.at(tensor).bytes[at] = std::byte{0xff}; });
      const std::string e = load_error(w.dir, p.registry());
      CHECK(e.find(tensor + ": w3 (up_proj) of expert 2, element [5, 9] is NaN") != std::string::npos);
      CHECK(e.find("expected finite F8_E4M3 weights") != std::string::npos);
    }
  }
  SUBCASE("unquantized BF16 experts: NaN, +inf and -inf; at TP=2 in unsharded coordinates") {
    writer::MoeSpec s;
    s.num_layers = 1;
    s.num_experts = 4;
    s.hidden = 64;
    s.intermediate = 32;
    for (const float bad : {std::nanf(""), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()}) {
      CAPTURE(bad);
      TempDir d;
      auto w = writer::write_unquantized(d / "bf16", s);
      // w2 (down_proj) [H, I] of expert 1, element [3, 20]: column 20 lies in TP rank 1's half.
      rewrite_tensors(w.dir, [&](TensorMap& m) {
        set_element(m.at("model.layers.0.mlp.experts.1.down_proj.weight"), 3 * 32 + 20, bad);
      });
      const std::string word = std::isnan(bad) ? "NaN" : bad > 0 ? "+inf" : "-inf";
      const std::string want = "model.layers.0.mlp.experts.1.down_proj.weight: w2 (down_proj) of expert 1, element [3, 20] is " + word;
      CHECK(load_error(w.dir, p.registry()).find(want) != std::string::npos);
      LoadOptions rank1;
      rank1.placement = {1, 2, 0, 1};
      CHECK(load_error(w.dir, p.registry(), rank1).find(want) != std::string::npos);
      LoadOptions rank0;  // rank 0's columns are finite: it loads
      rank0.placement = {0, 2, 0, 1};
      CHECK(load_dir(w.dir, p.registry(), rank0).layers.size() == 1);
    }
  }
}

TEST_CASE("a config.json far bigger than the tensors is refused before its parameters are allocated") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);  // 4 experts, H = 64, I = 32
  boost::json::object cfg = boost::json::parse(read_text(w.dir / "config.json")).as_object();
  cfg["hidden_size"] = 4096;
  cfg["moe_intermediate_size"] = 4096;
  write_text(w.dir / "config.json", boost::json::serialize(cfg));
  const int64_t before = host::param_allocations();
  const std::string e = load_error(w.dir, p.registry());
  CHECK(e.find("config.json's geometry (4 experts, hidden_size 4096, intermediate size 4096) needs 201326592 expert "
               "weight elements in this layer; its checkpoint tensors hold 24576") != std::string::npos);
  CHECK(host::param_allocations() == before);  // refused before create_weights allocated anything
  // One missing tensor is still named precisely (the layer holds more than half of its weights).
  TempDir d2;
  auto w2 = good(d2);
  rewrite_tensors(w2.dir, [](TensorMap& m) { m.erase("model.layers.0.mlp.experts.1.gate_proj.weight"); });
  CHECK(load_error(w2.dir, p.registry()).find("parameter 'w13_weight' [4, 64, 64]") != std::string::npos);
}

TEST_CASE("a shard truncated after it was opened fails the load naming the file, never a signal") {
  BuiltPlugins p;
  TempDir d;
  auto w = good(d, writer::Layout::kPerExpert, 2);
  const Checkpoint ck = Checkpoint::open(w.dir);
  // Another process cuts the shard to a quarter between the header read and the tensor reads.
  const fs::path shard = w.dir / "model.safetensors";
  REQUIRE(fs::exists(shard));
  fs::resize_file(shard, fs::file_size(shard) / 4);
  std::string e;
  try {
    load_model(ck, p.registry(), {});
  } catch (const Error& err) {
    e = err.what();
  }
  INFO(e);
  CHECK(e.find("safetensors file '" + shard.string() + "' changed while it was read: it was truncated") !=
        std::string::npos);
}

TEST_CASE("an expert weight of a shape unlike the geometry is refused by shape, the NaN scan never reading past it") {
  // Found by fuzz_strict_load: at TP=2 the host's NaN scan read rank 1's rows of a w1 that had
  // fewer rows than the config says (ASan: a read past the mapping). Now it reads such a piece
  // whole, and the plugin names the shape.
  BuiltPlugins p;
  TempDir d;
  auto w = good(d);  // 4 experts, H = 64, I = 32
  const std::string name = "model.layers.0.mlp.experts.1.gate_proj.weight";
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    EditableTensor& t = m.at(name);
    t.shape = {8, 64};  // 8 rows where the config says I = 32
    t.bytes.resize(static_cast<size_t>(8 * 64) * dtype_size(t.dtype));
  });
  for (const int rank : {0, 1}) {
    CAPTURE(rank);
    LoadOptions o;
    o.placement = {rank, 2, 0, 1};
    const std::string e = load_error(w.dir, p.registry(), o);
    CHECK(e.find(name + ": expected F8_E4M3 [32, 64] for w1, found F8_E4M3 [8, 64]") != std::string::npos);
  }
}

TEST_SUITE("concurrency") {
  TEST_CASE("a NaN in a late weight piece, past the scan window, fails its layer alone: tensor named, ledger as a clean load's, nothing left") {
    BuiltPlugins p;
    writer::MoeSpec s;
    s.num_layers = 2;
    s.num_experts = 16;
    s.hidden = 256;
    s.intermediate = 256;  // 64 KiB a piece, 3 MiB of weights a layer
    // A window of a piece and a half, and the default (past the whole layer).
    for (const std::size_t window : {std::size_t{96} << 10, std::size_t{0}}) {
      CAPTURE(window);
      TempDir d;
      auto w = writer::write_ct_fp8_channel(d / "ckpt", s);
      LoadOptions collect, strict;
      collect.collect_errors = true;
      collect.scan_ahead_bytes = strict.scan_ahead_bytes = window;
      // Layer 1's ledger when clean, and the last expert weight tensor in it.
      std::vector<LedgerEntry> clean;
      std::string last;
      {
        LoadedModel m = load_dir(w.dir, p.registry(), collect);
        REQUIRE(m.layers.size() == 2);
        clean = m.layers[1]->report.entries;
        for (const LedgerEntry& e : clean)
          if (e.state == LedgerEntry::State::kConsumed && e.tensor.ends_with(".weight")) last = e.tensor;
        // Pieces go to the plugin in ledger order: every parameter's writes follow it.
        std::map<std::string, size_t> at;
        for (size_t i = 0; i < clean.size(); ++i) at[clean[i].tensor] = i;
        for (const auto& param : m.layers[1]->layer->params) {
          size_t before = 0;
          for (const auto& [range, tensor] : param->writers) {
            REQUIRE(at.count(tensor) == 1);
            CHECK(at[tensor] >= before);
            before = at[tensor];
          }
        }
      }
      REQUIRE(last.rfind("model.layers.1.mlp.experts.", 0) == 0);
      // e4m3fn 0x7f is NaN: the piece's last element, [255, 255].
      rewrite_tensors(w.dir, [&](TensorMap& m) { m.at(last).bytes.back() = std::byte{0x7f}; });
      const int64_t live = host::live_param_bytes();
      const std::string e = load_error(w.dir, p.registry(), strict);
      CHECK(e.find(last + ": ") != std::string::npos);
      CHECK(e.find("element [255, 255] is NaN") != std::string::npos);
      CHECK(host::live_param_bytes() == live);
      LoadedModel m = load_dir(w.dir, p.registry(), collect);
      REQUIRE(m.layers.size() == 1);
      CHECK(m.layers[0]->report.prefix == "model.layers.0.mlp");
      REQUIRE(m.failed.size() == 1);
      const std::vector<LedgerEntry>& got = m.failed[0].entries;
      REQUIRE(got.size() == clean.size());
      for (size_t i = 0; i < got.size(); ++i) {
        CAPTURE(clean[i].tensor);
        CHECK(got[i].tensor == clean[i].tensor);
        if (clean[i].tensor == last) {
          CHECK(got[i].state == LedgerEntry::State::kError);
          CHECK(got[i].detail.find("is NaN") != std::string::npos);
        } else {
          CHECK(got[i].state == clean[i].state);
          CHECK(got[i].routed_to == clean[i].routed_to);
          CHECK(got[i].detail == clean[i].detail);
        }
      }
      m.layers.clear();
      CHECK(host::live_param_bytes() == live);
    }
  }
}
