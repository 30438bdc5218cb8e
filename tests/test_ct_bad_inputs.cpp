// compressed_tensors: bad checkpoints and configs each fail with a message that names the
// tensor or parameter, what was expected and what was found; and `moeq inspect` says per
// layer which scale name and granularity the plugin found.
#include "ct_support.hpp"

#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <cstdlib>

using namespace moeq;
using namespace moeq::test;

namespace {

writer::MoeSpec small(int64_t hidden = 256, int64_t intermediate = 192) {
  writer::MoeSpec s;
  s.num_layers = 1;
  s.num_experts = 4;
  s.hidden = hidden;
  s.intermediate = intermediate;
  s.seed = 99;
  return s;
}

std::string load_error(const std::filesystem::path& dir, LoadOptions o = {}) {
  BuiltPlugins p;
  return error_of([&] { load_dir(dir, p.registry(), o); });
}

bool has(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos) return true;
  MESSAGE("not found: \"" << needle << "\" in: " << text);
  return false;
}

// Replaces a tensor by a BF16 tensor of `shape` holding positive values.
void replace_bf16(TensorMap& m, const std::string& name, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  EditableTensor t{DType::BF16, shape, std::vector<std::byte>(static_cast<size_t>(n * 2))};
  for (int64_t i = 0; i < n; ++i) set_element(t, static_cast<size_t>(i), 0.01f + 0.001f * static_cast<float>(i));
  m[name] = t;
}

void edit_config(const std::filesystem::path& dir, const std::function<void(boost::json::object&)>& edit) {
  boost::json::object cfg = boost::json::parse(read_text(dir / "config.json")).as_object();
  edit(cfg.at("quantization_config").as_object());
  write_text(dir / "config.json", boost::json::serialize(cfg));
}

boost::json::object& group0(boost::json::object& q) {
  return q.at("config_groups").as_object().at("group_0").as_object();
}

const std::string kExp = "model.layers.0.mlp.experts.";

}  // namespace

TEST_CASE("a block grid of the wrong shape names the tensor, the weight, the block and both grids") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  const std::string name = kExp + "1.gate_proj.weight_scale";
  rewrite_tensors(w.dir, [&](TensorMap& m) { replace_bf16(m, name, {3, 2}); });
  const std::string e = load_error(w.dir);
  CHECK(has(e, name + ": weight_scale grid [3, 2] of w1 (gate_proj) of expert 1 does not match its [192, 256] "
                      "weight in blocks of [128, 128] as the config says: expected [2, 2]"));
}

TEST_CASE("a block grid made for another block size says which block it fits") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  const std::string name = kExp + "3.down_proj.weight_scale";
  rewrite_tensors(w.dir, [&](TensorMap& m) { replace_bf16(m, name, {4, 2}); });  // 64-row blocks
  const std::string e = load_error(w.dir);
  CHECK(has(e, "weight_scale grid [4, 2] of w2 (down_proj) of expert 3 does not match its [256, 192] weight"));
  CHECK(has(e, "expected [2, 2] = [ceil(256/128), ceil(192/128)] (that grid fits blocks of [64, 128])"));
}

TEST_CASE("block sizes that do not divide as the config says are refused before loading") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  SUBCASE("an activation group of 96 inside 128-column weight blocks") {
    edit_config(w.dir, [](boost::json::object& q) {
      group0(q).at("input_activations").as_object()["group_size"] = 96;
    });
    const std::string e = load_error(w.dir);
    CHECK(has(e, "no plugin takes layer"));
    CHECK(has(e, "compressed_tensors: compressed-tensors group 'group_0': input_activations group_size 96 and the "
                 "weight block's 128 columns (block [128, 128]) do not divide one another"));
  }
  SUBCASE("a block_structure that is not two positive sizes") {
    edit_config(w.dir, [](boost::json::object& q) {
      group0(q).at("weights").as_object()["block_structure"] = boost::json::array{128, 0};
    });
    CHECK(has(load_error(w.dir), "weights.block_structure must hold two positive block sizes, found [128,0]"));
  }
  SUBCASE("native fp8 weight_block_size with static activations") {
    auto w2 = writer::write_hf_fp8_block(d / "native", small());
    edit_config(w2.dir, [](boost::json::object& q) { q["activation_scheme"] = "static"; });
    CHECK(has(load_error(w2.dir), "fp8 config: weight_block_size needs activation_scheme \"dynamic\""));
  }
}

TEST_CASE("weight_scale and weight_scale_inv on one weight is an error naming both") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  const std::string a = kExp + "2.up_proj.weight_scale", b = a + "_inv";
  rewrite_tensors(w.dir, [&](TensorMap& m) { m[b] = m.at(a); });
  const std::string e = load_error(w.dir);
  CHECK(has(e, b + ": w3 (up_proj) of expert 2 carries both weight_scale (" + a +
                   ") and weight_scale_inv; both are the same multiplier, keep one"));
}

TEST_CASE("a per-tensor weight scale with N elements is refused, naming the shape") {
  TempDir d;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", small(128, 96));
  const std::string name = kExp + "1.gate_proj.weight_scale";
  rewrite_tensors(w.dir, [&](TensorMap& m) { replace_bf16(m, name, {96, 1}); });
  const std::string e = load_error(w.dir);
  CHECK(has(e, name + ": per-tensor weight_scale of w1 (gate_proj) of expert 1 must hold one value (shape [] or "
                      "[1]), found shape [96, 1] with 96 elements (one per output channel: the config says strategy "
                      "tensor)"));
}

TEST_CASE("a static scheme without an input_scale: the ledger names the unwritten parameter element") {
  TempDir d;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", small(128, 96));
  rewrite_tensors(w.dir, [&](TensorMap& m) { m.erase(kExp + "2.up_proj.input_scale"); });
  const std::string e = load_error(w.dir);
  CHECK(has(e, "parameter 'w3_input_scale' [4]: 1 of 4 elements not written, first at [2] (unwritten: [2]) "
               "(a checkpoint tensor is missing)"));
  // A dynamic scheme skips an input_scale it does not use, with the reason, and loads.
  auto dyn = writer::write_ct_fp8_block(d / "dyn", small());
  rewrite_tensors(dyn.dir, [&](TensorMap& m) { replace_bf16(m, kExp + "0.gate_proj.input_scale", {1}); });
  BuiltPlugins p;
  LoadedModel m = load_dir(dyn.dir, p.registry());
  bool skipped = false;
  for (const auto& entry : m.layers[0]->report.entries)
    if (entry.tensor == kExp + "0.gate_proj.input_scale")
      skipped = entry.state == LedgerEntry::State::kSkipped &&
                entry.detail.find("quantized dynamically (fp8 dynamic per token per group of 128)") != std::string::npos;
  CHECK(skipped);
}

TEST_CASE("zero, negative or NaN block scales are refused by the host's scale check") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  const std::string name = kExp + "0.down_proj.weight_scale";
  rewrite_tensors(w.dir, [&](TensorMap& m) { set_element(m.at(name), 3, 0.0f); });
  CHECK(has(load_error(w.dir), "scales must be finite and > 0"));
}

TEST_CASE("config and weight dtype disagree: int8 config over FP8 weights, FP8 weights in an ignored layer") {
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", small(128, 96));
  SUBCASE("int8 config") {
    edit_config(w.dir, [](boost::json::object& q) {
      auto& g = group0(q);
      g.at("weights").as_object()["type"] = "int";
      g["input_activations"] = nullptr;
      g["format"] = "naive-quantized";
    });
    CHECK(has(load_error(w.dir), "config says INT8 but the expert weights are F8_E4M3"));
  }
  SUBCASE("ignored layer") {
    edit_config(w.dir, [](boost::json::object& q) { q.at("ignore").as_array().push_back("re:.*experts.*"); });
    CHECK(has(load_error(w.dir), "is unquantized by the config (listed in quantization_config.ignore "
                                 "('re:.*experts.*')) but its expert weights are F8_E4M3"));
  }
  SUBCASE("int8 packed into int32 is not this plugin's") {
    edit_config(w.dir, [](boost::json::object& q) {
      auto& g = group0(q);
      g.at("weights").as_object()["type"] = "int";
      g["input_activations"] = nullptr;
      g["format"] = "pack-quantized";
    });
    CHECK(has(load_error(w.dir), "format pack-quantized, weight_packed) are not supported"));
  }
}

TEST_CASE("moeq inspect says for each layer which scale name and granularity it found") {
  TempDir d;
  writer::MoeSpec s = small();
  s.num_layers = 2;
  writer::QuantSpec q;
  q.weights = writer::WeightScheme::kFp8Block;
  q.scale_name = "weight_scale_inv";
  q.unquantized_layers = {1};
  auto w = writer::write_moe_checkpoint(d / "ckpt", s, q);
  const auto out = d / "inspect.txt";
  const std::string cmd = std::string("\"") + MOEQ_TEST_MOEQ_BIN + "\" inspect --plugin-dir \"" +
                          MOEQ_TEST_PLUGIN_DIR + "\" \"" + w.dir.string() + "\" > \"" + out.string() + "\" 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const std::string text = read_text(out);
  const size_t l0 = text.find("layer model.layers.0.mlp "), l1 = text.find("layer model.layers.1.mlp ");
  REQUIRE(l0 != std::string::npos);
  REQUIRE(l1 != std::string::npos);
  const std::string first = text.substr(l0, l1 - l0), second = text.substr(l1);
  CHECK(has(first, "\"granularity\":\"block [128, 128]\""));
  CHECK(has(first, "\"scale_names\":[\"weight_scale_inv\"]"));
  CHECK(has(first, "\"scale_dtypes\":[\"BF16\"]"));
  CHECK(has(second, "\"granularity\":\"none\""));
  CHECK(has(second, "\"scale_names\":[]"));
  CHECK(has(second, "\"unquantized_because\":\"listed in quantization_config.ignore"));
}

TEST_CASE("two config groups that match a layer equally are refused naming both, a more specific one wins") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  SUBCASE("both target the module class") {
    edit_config(w.dir, [](boost::json::object& q) {
      boost::json::object copy = group0(q);
      q.at("config_groups").as_object()["group_1"] = copy;
    });
    const std::string e = load_error(w.dir);
    CHECK(has(e, "quantization config is ambiguous for layer model.layers.0.mlp.experts: config groups 'group_0' "
                 "(target 'Linear') and 'group_1' (target 'Linear') both match it by module class"));
  }
  SUBCASE("both match by regex") {
    edit_config(w.dir, [](boost::json::object& q) {
      group0(q)["targets"] = boost::json::array{"re:.*mlp.*"};
      boost::json::object copy = group0(q);
      copy["targets"] = boost::json::array{"re:.*experts.*"};
      q.at("config_groups").as_object()["late"] = copy;
    });
    const std::string e = load_error(w.dir);
    CHECK(has(e, "config groups 'group_0' (target 're:.*mlp.*') and 'late' (target 're:.*experts.*') both match "
                 "it by regex"));
  }
  SUBCASE("a regex group wins over a module-class group, whichever comes first") {
    // group_0 (class 'Linear') asks for 4-bit weights, which this plugin refuses; the regex
    // group describes the checkpoint. The load succeeds only if the regex group is the one used.
    edit_config(w.dir, [](boost::json::object& q) {
      boost::json::object specific = group0(q);
      specific["targets"] = boost::json::array{"re:.*mlp\\.experts.*"};
      group0(q).at("weights").as_object()["num_bits"] = 4;
      q.at("config_groups").as_object()["specific"] = specific;
    });
    BuiltPlugins p;
    LoadedModel m = load_dir(w.dir, p.registry());
    CHECK(m.layers.size() == 1);
  }
}

TEST_CASE("hostile regexes in ignore and targets are matched in linear time (RE2), the layer loading as it should") {
  // Forty '.?' then a miss: a backtracking engine tries 2^40 ways (minutes to hours); RE2 is
  // linear in the module name. Timed so that a regression fails here instead of stalling ctest.
  const std::string hostile = "re:" + [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += ".?";
    return s + "Z";
  }();
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", small());
  edit_config(w.dir, [&](boost::json::object& q) {
    q["ignore"] = boost::json::array{"lm_head", hostile.c_str(), "re:(.*.*.*.*.*)*X"};
    group0(q)["targets"] = boost::json::array{hostile.c_str(), "Linear"};
  });
  BuiltPlugins p;
  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel m = load_dir(w.dir, p.registry());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(m.layers.size() == 1);
  CHECK(seconds < 10.0);
  // A pattern RE2 cannot run (a backreference) is refused by name, not silently treated as a miss.
  edit_config(w.dir, [](boost::json::object& q) { q["ignore"] = boost::json::array{"re:(a)\\1"}; });
  // (The pattern is printed escaped: its backslash doubled.)
  CHECK(has(load_error(w.dir), "quantization config: invalid regex 're:(a)\\\\1': invalid escape sequence: \\1"));
}
