// The CLI's side of routing per family: inspect's routing lines with their sources, run's refusal
// of a model_type without a routing row, run --golden against a framework's forward, run --online
// against the original weights, plugins --why on packed 4-bit checkpoints, and conform check 4 on
// a real FP8 block checkpoint whose TP shard refines the block grid.
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <fstream>

using namespace moeq;
using namespace moeq::test;
namespace fs = std::filesystem;

namespace {

const std::string kPlugins = " --plugin-dir \"" MOEQ_TEST_PLUGIN_DIR "\"";
fs::path real(const std::string& name) { return fs::path(MOEQ_TEST_FIXTURE_DIR) / "real" / name; }
std::string q(const fs::path& p) { return "\"" + p.string() + "\""; }

void set_model_type(const fs::path& dir, const std::string& type) {
  boost::json::value v = boost::json::parse([&] {
    std::ifstream f(dir / "config.json");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }());
  v.as_object()["model_type"] = type;
  std::ofstream(dir / "config.json") << boost::json::serialize(v);
}

}  // namespace

TEST_CASE("moeq inspect prints every routing setting and where it came from") {
  const CliRun r = run_moeq_cli("inspect " + q(real("deepseek_v3-fp8_block-oneshot")) + kPlugins);
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("routing: top-2, renormalized (deepseek_v3 row)") != std::string::npos);
  CHECK(r.out.find("scoring: sigmoid  [deepseek_v3 default (transformers modeling_deepseek_v3.py)]") != std::string::npos);
  CHECK(r.out.find("groups: 4 groups, keep 2 (group score: sum of its top-2)  [config.json n_group]") != std::string::npos);
  CHECK(r.out.find("scaling factor: 2.5  [config.json routed_scaling_factor]") != std::string::npos);
  CHECK(r.out.find("correction bias: router e_score_correction_bias [E], selection only") != std::string::npos);
  const CliRun j = run_moeq_cli("inspect --json " + q(real("deepseek_v3-fp8_block-oneshot")) + kPlugins, "", false);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK(o.at("routing").at("known").as_bool());
  CHECK(o.at("routing").at("fields").as_array().size() >= 5);
}

TEST_CASE("moeq run never calls a layer ok whose model_type has no routing row") {
  TempDir d;
  const auto w = writer::write_ct_fp8_channel(d / "ck", one_layer_spec(writer::Layout::kPerExpert));
  set_model_type(w.dir, "brand_new_moe");
  const CliRun inspect = run_moeq_cli("inspect " + q(w.dir) + kPlugins);
  CHECK(inspect.code == 0);  // the weights still load and are checked
  CHECK(inspect.out.find("routing semantics unknown for model_type 'brand_new_moe'") != std::string::npos);
  const CliRun run = run_moeq_cli("run " + q(w.dir) + kPlugins);
  CAPTURE(run.out);
  CHECK(run.code == 1);
  CHECK(run.out.find("FAIL: routing semantics unknown for model_type 'brand_new_moe'") != std::string::npos);
}

TEST_CASE("moeq run --golden holds each layer to a framework's forward and fails what differs") {
  const CliRun ok = run_moeq_cli("run " + q(real("deepseek_v3-fp8_block-oneshot")) + " --golden " +
                                 q(real("goldens/deepseek_v3.safetensors")) + kPlugins);
  CAPTURE(ok.out);
  CHECK(ok.code == 0);
  CHECK(ok.out.find("model.layers.1.mlp") != std::string::npos);
  CHECK(ok.out.find("same") != std::string::npos);
  // The same checkpoint with its family changed to one that routes by softmax: far from the golden.
  TempDir d;
  fs::copy(real("deepseek_v3-fp8_block-oneshot"), d / "ck", fs::copy_options::recursive);
  set_model_type(d / "ck", "kimi_k2");
  {
    boost::json::value v = boost::json::parse([&] {
      std::ifstream f(d / "ck" / "config.json");
      return std::string(std::istreambuf_iterator<char>(f), {});
    }());
    v.as_object()["scoring_func"] = "softmax";  // kimi_k2's row reads it
    std::ofstream(d / "ck" / "config.json") << boost::json::serialize(v);
  }
  const CliRun bad = run_moeq_cli("run " + q(d / "ck") + " --golden " + q(real("goldens/deepseek_v3.safetensors")) + kPlugins);
  CAPTURE(bad.out);
  CHECK(bad.code == 1);
  CHECK(bad.out.find("tokens routed to other experts than the golden's") != std::string::npos);
  // The producer's quantized router is named when it changes the routing.
  const CliRun mf = run_moeq_cli("run " + q(real("mixtral-fp8_block-model_free")) + " --golden " +
                                 q(real("goldens/mixtral.safetensors")) + kPlugins);
  CHECK(mf.code == 1);
  CHECK(mf.out.find("this checkpoint's router is F8_E4M3: its producer quantized it") != std::string::npos);
  // A golden of another model (4 experts, not 8): the missing tensor is named.
  const CliRun other = run_moeq_cli("run " + q(real("deepseek_v3-fp8_block-oneshot")) + " --golden " +
                                    q(real("goldens/mixtral.safetensors")) + kPlugins);
  CHECK(other.code == 1);
  CHECK(other.out.find("mixtral.safetensors: tensor layers.1.experts.4.w1 is missing") != std::string::npos);
  CHECK(run_moeq_cli("run " + q(real("deepseek_v3-fp8_block-oneshot")) + " --tp 2 --golden " +
                     q(real("goldens/deepseek_v3.safetensors")) + kPlugins).code == 1);
}

TEST_CASE("moeq run --online compares with the checkpoint's original weights, held to the scheme's bound") {
  const CliRun r = run_moeq_cli("run " + q(real("modelopt/qwen3moe-bf16")) + " --online int8" + kPlugins);
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("rel L2 vs orig") != std::string::npos);
  const CliRun j = run_moeq_cli("run --json " + q(real("modelopt/qwen3moe-bf16")) + " --online fp8-block" + kPlugins, "", false);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  for (const auto& row : o.at("layers").as_array()) {
    const double err = row.at("rel_l2_vs_original").as_double();
    CHECK(err > 1e-3);  // the quantization error is there: the original is not the quantized copy
    CHECK(err <= row.at("bound_vs_original").as_double());
  }
}

TEST_CASE("packed 4-bit checkpoints: every tensor shows, and the refusal quotes the plugins' reasons") {
  for (const char* name : {"qwen3_moe-w4a16-packed-oneshot", "qwen3_moe-nvfp4a16-oneshot"}) {
    CAPTURE(name);
    const CliRun load = run_moeq_cli("load " + q(real(name)) + kPlugins);
    CHECK(load.code == 1);
    CHECK(load.out.find("this plugin runs 8-bit float or int weights") != std::string::npos);
    CHECK(load.out.find("no expert weight tensors") == std::string::npos);
    const CliRun why = run_moeq_cli("plugins --why " + q(real(name)) + kPlugins);
    CHECK(why.code == 1);
    CHECK(why.out.find("model.layers.0.mlp  compressed_tensors: score 0") != std::string::npos);
    const CliRun inspect = run_moeq_cli("inspect " + q(real(name)) + kPlugins);
    CHECK(inspect.out.find("model.layers.0.mlp.experts.0.gate_proj.weight_packed") != std::string::npos);
  }
}

TEST_CASE("moeq conform --checkpoint: check 4 accepts the refined block grid of a real FP8 block checkpoint at TP 2") {
  // I = 192 at TP 2 is 96 per rank, not a multiple of the 128 block: the rank's grid is refined
  // to blocks of 32 (README "What loads today"), which is more entries than the unsharded grid.
  for (const char* name : {"qwen3_moe-fp8_block-oneshot", "mixtral-fp8_block-model_free", "deepseek_v3-fp8_block-oneshot"}) {
    CAPTURE(name);
    const CliRun r = run_moeq_cli("conform \"" MOEQ_TEST_PLUGIN_DIR "/libmoeq_compressed_tensors.so\" --checkpoint " +
                                  q(real(name)) + " --check 4");
    CAPTURE(r.out);
    CHECK(r.code == 0);
    CHECK(r.out.find("create_weights   pass") != std::string::npos);
  }
}
