// The moeq tool as an operator runs it: demo, inspect, load, run, plugins --why, plugin
// discovery without flags, through --plugin-dir and through MOEQ_PLUGIN_PATH.
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <cstdio>
#include <fstream>
#include <set>
#include <sys/wait.h>

using namespace moeq;
using namespace moeq::test;

namespace {

using Result = CliRun;
Result moeq_cli(const std::string& args, const std::string& env = "") { return run_moeq_cli(args, env); }


writer::WrittenCheckpoint granite(const TempDir& d) {
  return writer::write_ct_fp8_channel(d / "granite", one_layer_spec(writer::Layout::kGraniteFused));
}

}  // namespace

TEST_CASE("moeq demo: both layouts load strictly clean and are within 1e-2 of the reference, bf16 quantized online by every scheme") {
  Result r = moeq_cli("demo --json");
  CAPTURE(r.out);
  REQUIRE(r.code == 0);
  boost::json::object o = boost::json::parse(r.out).as_object();
  CHECK(o.at("pass").as_bool());
  const auto& rows = o.at("rows").as_array();
  REQUIRE(rows.size() == 8);
  int granite = 0, per_expert = 0;
  std::set<std::string> online;
  for (const auto& row : rows) {
    const auto& x = row.as_object();
    CHECK(x.at("strict_load_clean").as_bool());
    CHECK(x.at("rel_l2_vs_quant_reference").as_double() <= 1e-2);
    CHECK(x.at("rel_l2_vs_float").as_double() > x.at("rel_l2_vs_quant_reference").as_double());
    const std::string layout(x.at("layout").as_string());
    if (x.at("online").is_string()) {
      online.insert(std::string(x.at("online").as_string()));
      CHECK(x.at("plugin").as_string() == "online_quant");
      // Against the original bf16 weights: above zero (it did quantize), within the declared bound.
      CHECK(x.at("rel_l2_vs_float").as_double() > 1e-3);
      CHECK(x.at("rel_l2_vs_float").as_double() <= x.at("bound_vs_original").as_double());
      continue;
    }
    CHECK(x.at("bound_vs_original").is_null());
    granite += layout.find("granite") != std::string::npos;
    per_expert += layout.find("per-expert") != std::string::npos;
  }
  CHECK(granite == 2);
  CHECK(per_expert == 2);
  CHECK(online == std::set<std::string>{"int8", "fp8-tensor", "fp8-channel", "fp8-block"});
}

TEST_CASE("moeq inspect on the Granite fixture shows the fused scales routed to w1/w3/w2 of every expert") {
  TempDir d;
  auto w = granite(d);
  Result r = moeq_cli("inspect " + w.dir.string());
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("plugin: compressed_tensors") != std::string::npos);
  auto line_of = [&](const std::string& tensor) {
    size_t at = r.out.find(tensor + " ");
    REQUIRE(at != std::string::npos);
    return r.out.substr(at, r.out.find('\n', at) - at);
  };
  const std::string in_scale = line_of("model.layers.0.block_sparse_moe.input_linear.weight_scale");
  CHECK(in_scale.find("consumed") != std::string::npos);
  CHECK(in_scale.find("w1+w3 of experts 0..5") != std::string::npos);
  CHECK(in_scale.find("[6,64,1]") != std::string::npos);
  const std::string out_scale = line_of("model.layers.0.block_sparse_moe.output_linear.weight_scale");
  CHECK(out_scale.find("w2 of experts 0..5") != std::string::npos);
  CHECK(r.out.find("strict load clean") != std::string::npos);
  CHECK(r.out.find("\"granularity\":\"channel\"") != std::string::npos);
  CHECK(r.out.find("\"scale_names\":[\"weight_scale\"]") != std::string::npos);
  CHECK(r.out.find("model.layers.0.self_attn.q_proj.weight_scale") != std::string::npos);  // listed as not MoE
}

TEST_CASE("moeq inspect --json and moeq load on a broken checkpoint say what is wrong") {
  TempDir d;
  auto w = granite(d);
  rewrite_tensors(w.dir, [](TensorMap& m) { m.erase("model.layers.0.block_sparse_moe.output_linear.weight_scale"); });
  Result r = moeq_cli("inspect --json " + w.dir.string());
  CHECK(r.code == 1);
  boost::json::object o = boost::json::parse(r.out).as_object();
  CHECK_FALSE(o.at("clean").as_bool());
  const auto& layer = o.at("layers").as_array().at(0).as_object();
  CHECK_FALSE(layer.at("strict_clean").as_bool());
  CHECK(boost::json::serialize(layer.at("problems")).find("w2_weight_scale") != std::string::npos);
  Result l = moeq_cli("load " + w.dir.string());
  CHECK(l.code == 1);
  CHECK(l.out.find("FAILED") != std::string::npos);
  CHECK(l.out.find("parameter 'w2_weight_scale'") != std::string::npos);
}

TEST_CASE("moeq load --no-strict loads a broken checkpoint but never calls it clean") {
  TempDir d;
  auto w = granite(d);
  rewrite_tensors(w.dir, [](TensorMap& m) {
    m.erase("model.layers.0.block_sparse_moe.output_linear.weight_scale");
    EditableTensor extra = m.at("model.layers.0.block_sparse_moe.input_linear.weight_scale");
    m.emplace("model.layers.0.block_sparse_moe.experts.bogus.weight", extra);
  });
  Result strict = moeq_cli("load " + w.dir.string());
  CHECK(strict.code == 1);
  CHECK(strict.out.find("problem: unknown expert tensor model.layers.0.block_sparse_moe.experts.bogus.weight") !=
        std::string::npos);

  Result l = moeq_cli("load --no-strict " + w.dir.string());
  CAPTURE(l.out);
  CHECK(l.code == 0);
  CHECK(l.out.find("strict load clean") == std::string::npos);
  CHECK(l.out.find("loaded, not strict (2 waived)") != std::string::npos);
  CHECK(l.out.find("waived (--no-strict): parameter 'w2_weight_scale'") != std::string::npos);
  CHECK(l.out.find("waived (--no-strict): unknown expert tensor model.layers.0.block_sparse_moe.experts.bogus.weight") !=
        std::string::npos);

  Result j = run_moeq_cli("load --no-strict --json " + w.dir.string(), "", /*with_stderr=*/false);
  REQUIRE(j.code == 0);
  boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK(o.at("loaded").as_bool());
  CHECK_FALSE(o.at("clean").as_bool());
  const auto& layer = o.at("layers").as_array().at(0).as_object();
  CHECK(layer.at("loaded").as_bool());
  CHECK_FALSE(layer.at("strict_clean").as_bool());
  CHECK(layer.at("problems").as_array().empty());
  CHECK(layer.at("waived").as_array().size() == 2);

  Result i = moeq_cli("inspect --no-strict " + w.dir.string());
  CHECK(i.code == 0);
  CHECK(i.out.find("loaded, not strict (2 waived)") != std::string::npos);

  Result r = moeq_cli("run --no-strict --tokens 5 " + w.dir.string());
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("  ok (not strict)\n") != std::string::npos);
  CHECK(r.out.find("1 layer(s) loaded only because of --no-strict") != std::string::npos);
}

TEST_CASE("moeq run compares every layer with the reference, also at TP=2 rank 1") {
  TempDir d;
  auto w = granite(d);
  Result r = moeq_cli("run --json --tokens 9 " + w.dir.string());
  CAPTURE(r.out);
  REQUIRE(r.code == 0);
  boost::json::object o = boost::json::parse(r.out).as_object();
  CHECK(o.at("within_tolerance").as_bool());
  CHECK(o.at("layers").as_array().size() == 1);
  Result t = moeq_cli("run --tp 2 --tp-rank 1 --tokens 9 " + w.dir.string());
  CHECK(t.code == 0);
  CHECK(t.out.find("model.layers.0.block_sparse_moe") != std::string::npos);
  Result bad = moeq_cli("run --tp 3 " + w.dir.string());
  CHECK(bad.code == 1);
  CHECK(bad.out.find("not divisible by tp size 3") != std::string::npos);
}

TEST_CASE("moeq run: non-finite results fail with a verdict that says so, and --json stays JSON (null, not NaN)") {
  TempDir d;
  auto w = granite(d);
  // An F32 scale near FLT_MAX is finite and loads, but weight x scale overflows to infinity.
  rewrite_tensors(w.dir, [](TensorMap& m) {
    set_element(m.at("model.layers.0.block_sparse_moe.output_linear.weight_scale"), 3, 3.0e38f);
  });
  Result r = moeq_cli("run --tokens 16 " + w.dir.string());
  CAPTURE(r.out);
  CHECK(r.code == 1);
  CHECK(r.out.find("FAIL: ") != std::string::npos);
  CHECK(r.out.find("non-finite") != std::string::npos);
  Result j = run_moeq_cli("run --json --tokens 16 " + w.dir.string(), "", /*with_stderr=*/false);
  CAPTURE(j.out);
  CHECK(j.code == 1);
  CHECK(j.out.find(":NaN") == std::string::npos);  // what serializing a NaN double printed
  const boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK_FALSE(o.at("within_tolerance").as_bool());
  const auto& row = o.at("layers").as_array().at(0).as_object();
  CHECK_FALSE(row.at("within_tolerance").as_bool());
  CHECK(row.at("verdict").as_string().starts_with("FAIL: "));
  CHECK(row.at("rel_l2_vs_quant_reference").is_null());
  CHECK((!row.at("output_finite").as_bool() || !row.at("reference_finite").as_bool()));
}

TEST_CASE("moeq usage errors exit 2 naming the option, with --json an error is still one JSON document") {
  TempDir d;
  auto w = granite(d);
  for (const std::string args : {"load --tp 2 --tp-rank 2 ", "inspect --ep 2 --ep-rank 5 ", "run --tokens 0 ",
                                 "run --tokens 4611686018427387904 ", "load --tp 0 "}) {
    CAPTURE(args);
    Result r = moeq_cli(args + w.dir.string());
    CHECK(r.code == 2);
    CHECK((r.out.find("--tp") != std::string::npos || r.out.find("--ep") != std::string::npos ||
           r.out.find("--tokens") != std::string::npos));
  }
  CHECK(moeq_cli("load --tp 2 --tp-rank 2 " + w.dir.string()).out.find("--tp-rank 2 is out of range for --tp 2") !=
        std::string::npos);
  // A --plugin-dir that is not there is not silently replaced by the default search path.
  Result no_dir = moeq_cli("load --plugin-dir " + (d / "no-such-dir").string() + " " + w.dir.string());
  CHECK(no_dir.code == 2);
  CHECK(no_dir.out.find("--plugin-dir: Directory does not exist") != std::string::npos);
  Result pin_why = moeq_cli("plugins --pin --why " + w.dir.string());
  CHECK(pin_why.code == 2);
  CHECK(pin_why.out.find("excludes") != std::string::npos);
  Result j = run_moeq_cli("load --json " + (d / "nothing-here").string(), "", /*with_stderr=*/false);
  CHECK(j.code == 1);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK(o.at("error").as_string().find("nothing-here") != boost::json::string::npos);
  CHECK(o.at("exit_status").as_int64() == 1);
  // Usage errors that stop the parser (unknown option, bad value, missing argument) before it
  // reads --json still print one JSON document on stdout.
  for (const std::string args : {"load --json --no-such-option x", "run --json --tokens 0 x", "inspect --json",
                                 "bench apply --json --m zero"}) {
    CAPTURE(args);
    Result u = run_moeq_cli(args, "", /*with_stderr=*/false);
    CHECK(u.code == 2);
    const boost::json::object uo = boost::json::parse(u.out).as_object();
    CHECK(uo.at("error").as_string().starts_with("usage: "));
    CHECK(uo.at("exit_status").as_int64() == 2);
  }
}

TEST_CASE("moeq demo --tokens is used, --keep must be a directory, and a temporary demo directory is removed") {
  Result r = run_moeq_cli("demo --json --tokens 5", "", /*with_stderr=*/false);
  REQUIRE(r.code == 0);
  const boost::json::object o = boost::json::parse(r.out).as_object();
  CHECK_FALSE(o.at("kept").as_bool());
  CHECK_FALSE(std::filesystem::exists(std::string(o.at("dir").as_string())));
  for (const auto& row : o.at("rows").as_array()) CHECK(row.at("tokens").as_int64() == 5);
  TempDir d;
  std::ofstream(d / "a-file") << "x";
  Result bad = moeq_cli("demo --keep " + (d / "a-file").string());
  CHECK(bad.code == 1);
  CHECK(bad.out.find("expected a directory to write into") != std::string::npos);
}

TEST_CASE("moeq inspect says which .safetensors files it did not read, where routing defaults came from, and the --online config") {
  TempDir d;
  auto w = granite(d);
  std::filesystem::copy_file(w.dir / "model.safetensors", w.dir / "consolidated.safetensors");
  Result r = moeq_cli("inspect " + w.dir.string());
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("not read: consolidated.safetensors (a .safetensors file beside model.safetensors)") !=
        std::string::npos);
  CHECK(r.out.find("routing: top-") != std::string::npos);
  Result j = run_moeq_cli("inspect --json " + w.dir.string(), "", /*with_stderr=*/false);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  REQUIRE(o.at("unread_files").as_array().size() == 1);
  CHECK(o.at("unread_files").as_array()[0].as_string() == "consolidated.safetensors");
  CHECK(!o.at("renormalize_source").as_string().empty());

  TempDir b;
  auto bf16 = writer::write_unquantized(b / "bf16", one_layer_spec(writer::Layout::kPerExpert));
  Result online = run_moeq_cli("inspect --json --online fp8-block " + bf16.dir.string(), "", /*with_stderr=*/false);
  const boost::json::object oo = boost::json::parse(online.out).as_object();
  CHECK(oo.at("quant_config_source").as_string() == "user");
  CHECK(oo.at("quant_config").at("scheme").as_string() == "fp8-block");
  // plugins --why on the config alone takes the weights to be what the config implies (BF16
  // here, not fp8), so it agrees with --why on the directory.
  Result cfg = moeq_cli("plugins --why " + (bf16.dir / "config.json").string());
  CAPTURE(cfg.out);
  CHECK(cfg.out.find("expert weights taken to be BF16") != std::string::npos);
  CHECK(cfg.out.find("compressed_tensors: score 5") != std::string::npos);
}

TEST_CASE("moeq plugins finds the built plugins without flags and explains declines with --why") {
  TempDir d;
  auto w = granite(d);
  Result r = moeq_cli("plugins --why " + w.dir.string());
  CAPTURE(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("compressed_tensors 0.2.0") != std::string::npos);
  CHECK(r.out.find("compressed_tensors: score 10 (chosen)") != std::string::npos);
  CHECK(r.out.find("modelopt: score 0") != std::string::npos);
  CHECK(r.out.find("online_quant: score 0") != std::string::npos);
}

TEST_CASE("plugin directories: --plugin-dir and MOEQ_PLUGIN_PATH are searched, refusals have reasons") {
  Result r = moeq_cli("plugins --json --plugin-dir " MOEQ_TEST_BAD_PLUGIN_DIR "/wrong_major");
  REQUIRE(r.code == 0);
  std::string s = r.out;
  CHECK(s.find("ABI major 2") != std::string::npos);
  Result e = moeq_cli("plugins --json", "MOEQ_PLUGIN_PATH=" MOEQ_TEST_BAD_PLUGIN_DIR "/good_a");
  CHECK(e.out.find("\"name\":\"good_a\"") != std::string::npos);
  CHECK(e.out.find("\"name\":\"compressed_tensors\"") != std::string::npos);  // the default is still searched
}

TEST_CASE("usage errors exit 2 naming the bad value: unknown online scheme, unknown device, unknown option") {
  TempDir d;
  auto w = granite(d);
  Result online = moeq_cli("load --online int4 " + w.dir.string());
  CHECK(online.code == 2);
  CHECK(online.out.find("int4") != std::string::npos);
  Result device = moeq_cli("load --device tpu:0 " + w.dir.string());
  CHECK(device.code == 2);
  CHECK(device.out.find("expected cpu, cuda or cuda:N, found 'tpu:0'") != std::string::npos);
  Result option = moeq_cli("load --frobnicate " + w.dir.string());
  CHECK(option.code == 2);
  CHECK(moeq_cli("--help").code == 0);
}

TEST_CASE("--device cuda without a driver fails the load naming the reason, never crashes") {
  if (cuda::available()) {
    MESSAGE("SKIPPED: this machine has a CUDA driver; the no-driver message is checked where there is none");
    return;
  }
  TempDir d;
  auto w = granite(d);
  Result r = moeq_cli("load --device cuda " + w.dir.string());
  CHECK(r.code == 1);
  CHECK(r.out.find("no CUDA driver") != std::string::npos);
}
