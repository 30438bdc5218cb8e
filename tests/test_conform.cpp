// `moeq conform` as a plugin author runs it: the built-in plugins conform, a correct SDK-built
// plugin conforms, and each deliberately broken plugin of tests/conform_plugins fails exactly
// the check its defect breaks, with a reason that says what is wrong. Also: the kernel sources
// moeq_add_plugin embeds.
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <filesystem>
#include <set>

using namespace moeq;
using namespace moeq::test;
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

struct Conform {
  int exit_code = -1;
  std::string text;
  json::object report;  // with --json
  std::string verdict(int id) const {
    for (const json::value& c : report.at("checks").as_array())
      if (c.at("id").to_number<int>() == id) return std::string(c.at("verdict").as_string());
    return "missing";
  }
  std::string reason(int id) const {
    for (const json::value& c : report.at("checks").as_array())
      if (c.at("id").to_number<int>() == id) return std::string(c.at("reason").as_string());
    return "";
  }
  std::vector<int> failing() const {
    std::vector<int> ids;
    for (const json::value& c : report.at("checks").as_array())
      if (c.at("verdict").as_string() == "fail") ids.push_back(c.at("id").to_number<int>());
    return ids;
  }
};

Conform conform(const fs::path& plugin, const std::string& extra = "", bool as_json = true) {
  const CliRun run = run_moeq_cli("conform \"" + plugin.string() + "\" " + extra + (as_json ? " --json" : ""), "", false);
  Conform r;
  r.text = run.out;
  r.exit_code = run.code;
  if (as_json) {
    INFO(r.text);
    r.report = json::parse(r.text).as_object();
  }
  return r;
}

fs::path builtin(const std::string& name) { return fs::path(MOEQ_TEST_PLUGIN_DIR) / ("libmoeq_" + name + ".so"); }
fs::path test_plugin(const std::string& name) {
  return fs::path(MOEQ_TEST_CONFORM_PLUGIN_DIR) / ("libmoeq_conform_" + name + ".so");
}

// A compressed-tensors FP8 channel checkpoint (the writer's FP8_DYNAMIC), per-expert layout.
void small_checkpoint(const fs::path& dir, int layers, int64_t experts, int64_t hidden, int64_t intermediate) {
  writer::MoeSpec s;
  s.num_layers = layers;
  s.num_experts = experts;
  s.hidden = hidden;
  s.intermediate = intermediate;
  writer::write_ct_fp8_channel(dir, s);
}

void require_all_pass(const Conform& c) {
  for (const json::value& check : c.report.at("checks").as_array()) {
    INFO("check " << check.at("id").to_number<int>() << ": " << check.at("reason").as_string());
    CHECK(check.at("verdict").as_string() == "pass");
  }
  CHECK(c.report.at("checks").as_array().size() == 10);
  CHECK(c.exit_code == 0);
}

// online_quant takes only the config `--online SCHEME` makes; with it, conform generates BF16
// fixtures and every check runs. Two schemes per case keeps each case short.
void require_online_conforms(const std::string& scheme) {
  CAPTURE(scheme);
  const Conform c = conform(builtin("online_quant"), "--online " + scheme);
  require_all_pass(c);
  CHECK(c.report.at("online").as_string() == scheme);
  const json::array& fixtures = c.report.at("fixtures").as_array();
  REQUIRE(fixtures.size() == 2);
  CHECK(fixtures[0].as_string() == "online-" + scheme + "/qwen3");
  CHECK(fixtures[1].as_string() == "online-" + scheme + "/granite-fused");
  // Held to the bound the scheme declares against the float reference of the original bf16 weights.
  CHECK(c.reason(7).find("declared by the method") != std::string::npos);
  CHECK(c.reason(7).find("writer's masters") != std::string::npos);
}

}  // namespace

TEST_CASE("moeq conform: the built-in compressed_tensors plugin passes all ten checks on the writer's fixtures") {
  const Conform c = conform(builtin("compressed_tensors"));
  require_all_pass(c);
  CHECK(c.report.at("plugin").at("name").as_string() == "compressed_tensors");
  CHECK(c.report.at("fixtures").as_array().size() >= 3);
  const json::object& summary = c.report.at("summary").as_object();
  CHECK(summary.at("verdict").as_string() == "conforms");
  CHECK(summary.at("fixtures_taken").to_number<int>() == static_cast<int>(c.report.at("fixtures").as_array().size()));
  CHECK(!summary.contains("note"));
}

TEST_CASE("moeq conform: built-in plugins that decline every fixture fail nothing, and the method checks say why they did not run") {
  for (const char* name : {"modelopt", "online_quant"}) {
    CAPTURE(name);
    const Conform c = conform(builtin(name));
    CHECK(c.failing().empty());
    CHECK(c.exit_code == 0);
    CHECK(c.verdict(1) == "pass");
    CHECK(c.verdict(3) == "pass");
    CHECK(c.verdict(10) == "pass");
    for (int id = 4; id <= 8; ++id) {
      CAPTURE(id);
      CHECK(c.verdict(id) == "n/a");
      CHECK(c.reason(id).find("declines every generated fixture") != std::string::npos);
    }
    if (std::string(name) == "online_quant") CHECK(c.reason(5).find("--online SCHEME") != std::string::npos);
    // The summary does not call a run that loaded nothing a plain "conforms".
    const json::object& summary = c.report.at("summary").as_object();
    CHECK(summary.at("verdict").as_string() == "conforms on the checks that ran");
    CHECK(summary.at("fixtures_taken").to_number<int>() == 0);
    CHECK(summary.at("note").as_string().find("the plugin took none of the generated fixtures") != std::string::npos);
  }
}

TEST_CASE("moeq conform: the text summary of a plugin that takes no generated fixture says the load and apply checks did not run") {
  const Conform c = conform(builtin("modelopt"), "--check 3 --check 5", false);
  CHECK(c.exit_code == 0);
  CHECK(c.text.find("1 pass, 0 fail, 1 not applicable: conforms on the checks that ran; the load and apply checks did "
                    "not run: the plugin took none of the generated fixtures") != std::string::npos);
  // A plugin that takes them keeps the plain verdict.
  const Conform good = conform(test_plugin("good"), "--check 3", false);
  CHECK(good.text.find("1 pass, 0 fail, 0 not applicable: conforms\n") != std::string::npos);
}

TEST_CASE("moeq conform: an SDK plugin that throws inside weight_loader on bad input passes (the trampolines make statuses)") {
  const Conform c = conform(test_plugin("good"));
  require_all_pass(c);
  CHECK(c.reason(6).find("no exception escaped") != std::string::npos);
  CHECK(c.reason(7).find("declared by the method") != std::string::npos);  // rel_l2_tolerance in describe
}

TEST_CASE("moeq conform: each broken plugin fails exactly the check its defect breaks, with a clear reason") {
  struct Case {
    const char* plugin;
    int check;
    const char* reason;  // a fragment the reason must contain
    const char* extra = "";
  };
  const Case cases[] = {
      {"crash_probe", 3, "crashed: SIGSEGV"},
      {"hang_probe", 3, "timed out after 5 s while probing", "--timeout 5"},
      {"raw_throw", 6, "weight_loader let a C++ exception escape"},
      {"wrong_major", 2, "declares ABI major 2"},
      {"missing_slot", 1, "required slot 'process_after_loading' is NULL"},
      {"leak_status", 10, "statuses made through the host were never destroyed (create_weights took in"},
      {"write_outside", 5, "lies outside parameter 'w13_weight'"},
      {"lies_shape", 4, "w2_weight"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.plugin);
    const Conform c = conform(test_plugin(k.plugin), k.extra);
    INFO(c.text);
    CHECK(c.failing() == std::vector<int>{k.check});
    CHECK(c.reason(k.check).find(k.reason) != std::string::npos);
    CHECK(c.exit_code == 1);
    CHECK(c.report.at("checks").as_array().size() == 10);  // the runner survived and ran every check
  }
}

TEST_CASE("moeq conform: reasons of the broken plugins name what is wrong and where") {
  CHECK(conform(test_plugin("crash_probe")).reason(3).find("no quantization config") != std::string::npos);
  const Conform lies = conform(test_plugin("lies_shape"));
  CHECK(lies.reason(4).find("I/tp = 16") != std::string::npos);
  CHECK(lies.reason(4).find("found 32") != std::string::npos);
  const Conform major = conform(test_plugin("wrong_major"));
  CHECK(major.verdict(1) == "pass");  // the structure is fine: only the version is wrong
  CHECK(major.verdict(5) == "n/a");
  CHECK(major.reason(5).find("the host refuses the plugin") != std::string::npos);
  const Conform outside = conform(test_plugin("write_outside"));
  CHECK(outside.verdict(7) == "n/a");
  CHECK(outside.reason(7).find("see check 5") != std::string::npos);
}

TEST_CASE("moeq conform: text report has one row per check, a summary, and exit status 1 on a failure") {
  const Conform bad = conform(test_plugin("lies_shape"), "", false);
  CHECK(bad.exit_code == 1);
  CHECK(bad.text.find("create_weights   fail") != std::string::npos);
  CHECK(bad.text.find("1 fail") != std::string::npos);
  CHECK(bad.text.find("does NOT conform") != std::string::npos);
  const Conform some = conform(test_plugin("good"), "--check 1 --check 3");
  CHECK(some.report.at("checks").as_array().size() == 2);
  CHECK(some.exit_code == 0);
}

TEST_CASE("moeq conform --checkpoint: a plugin that declines the checkpoint named fails, quoting its probe reason") {
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);  // compressed-tensors: neither modelopt's nor online_quant's
  const std::string ck = (d / "ck").string();
  for (const char* name : {"modelopt", "online_quant"}) {
    CAPTURE(name);
    const Conform c = conform(builtin(name), "--checkpoint \"" + ck + "\"");
    CHECK(c.exit_code == 1);
    CHECK(c.failing() == std::vector<int>{4, 5, 6, 7, 8});
    CHECK(c.report.at("summary").at("fixtures_taken").to_number<int>() == 0);
    // The reason names the checkpoint and quotes what the plugin's probe said about its layer.
    const std::string reason = c.reason(5);
    CHECK(reason.find("the plugin declined the checkpoint " + ck) != std::string::npos);
    CHECK(reason.find("model.layers.0.mlp: \"") != std::string::npos);
    // The quoted text is the plugin's: what `moeq plugins --why` prints for it.
    const CliRun why = run_moeq_cli("plugins --why \"" + ck + "\" --plugin-dir \"" MOEQ_TEST_PLUGIN_DIR "\"");
    const size_t open = reason.find(": \"") + 3;
    const std::string quoted = reason.substr(open, reason.find('"', open) - open);
    CHECK(quoted.size() > 5);
    CHECK(why.out.find(quoted) != std::string::npos);
  }
  const Conform text = conform(builtin("modelopt"), "--checkpoint \"" + ck + "\" --check 4", false);
  CHECK(text.exit_code == 1);
  CHECK(text.text.find("create_weights   fail    the plugin declined the checkpoint") != std::string::npos);
  CHECK(text.text.find("does NOT conform") != std::string::npos);
}

TEST_CASE("moeq conform --online: a plugin that declines the scheme named fails on the generated fixtures") {
  const Conform c = conform(builtin("compressed_tensors"), "--online int8");
  CHECK(c.exit_code == 1);
  CHECK(c.failing() == std::vector<int>{4, 5, 6, 7, 8});
  CHECK(c.reason(4).find("the plugin declined every generated fixture under --online int8") != std::string::npos);
  CHECK(c.reason(4).find("online-int8/qwen3 model.layers.0.mlp: \"") != std::string::npos);
  CHECK(c.report.at("summary").at("verdict").as_string() == "does NOT conform");
}

TEST_CASE("moeq conform: NaN weights fail the weight_loader check, named by the core for any plugin") {
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);
  int poisoned = 0;
  rewrite_tensors(d / "ck", [&](TensorMap& m) {
    for (auto& [name, t] : m)
      if (name.find("experts.") != std::string::npos && name.ends_with("gate_proj.weight")) {
        REQUIRE(t.dtype == DType::F8_E4M3);
        t.bytes[0] = std::byte{0x7f};  // e4m3 NaN
        ++poisoned;
      }
  });
  REQUIRE(poisoned == 4);
  const Conform c = conform(test_plugin("good"), "--checkpoint \"" + (d / "ck").string() + "\"");
  INFO(c.text);
  // The good plugin copies bytes and never looks at them; the core refuses the tensor before the
  // plugin sees it, so the checkpoint does not load and the checks that need it do not run.
  CHECK(c.failing() == std::vector<int>{5});
  CHECK(c.reason(5).find("gate_proj.weight: w1 (gate_proj) of expert 0, element [0, 0] is NaN") != std::string::npos);
  CHECK(c.verdict(7) == "n/a");
  CHECK(c.verdict(8) == "n/a");
  CHECK(c.exit_code == 1);
}

TEST_CASE("moeq conform --keep-fixtures with --checkpoint: a usage error naming both, before anything runs") {
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);
  const CliRun run = run_moeq_cli("conform \"" + test_plugin("good").string() + "\" --checkpoint \"" + (d / "ck").string() +
                                  "\" --keep-fixtures \"" + (d / "kept").string() + "\" --json");
  CHECK(run.code == 2);
  CHECK(run.out.find("--keep-fixtures") != std::string::npos);
  CHECK(run.out.find("--checkpoint") != std::string::npos);
  CHECK(run.out.find("\"checks\"") == std::string::npos);
  CHECK(!fs::exists(d / "kept"));
}

TEST_CASE("moeq conform --keep-fixtures: the generated fixtures are written there and kept") {
  TempDir d;
  const Conform c = conform(test_plugin("good"), "--check 3 --keep-fixtures \"" + (d / "kept").string() + "\"");
  CHECK(c.exit_code == 0);
  size_t kept = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(d / "kept")) kept += fs::exists(e.path() / "config.json");
  CHECK(kept == c.report.at("fixtures").as_array().size());
}

TEST_CASE("moeq conform --checkpoint: tests on the given checkpoint instead of generated fixtures") {
  TempDir d;
  small_checkpoint(d / "ck", 2, 6, 40, 24);
  const Conform c = conform(test_plugin("good"), "--checkpoint \"" + (d / "ck").string() + "\"");
  require_all_pass(c);
  CHECK(c.report.at("fixtures").as_array().size() == 1);
  // Without writer masters the accuracy check compares with the plugin's own dequantization only.
  CHECK(c.reason(7).find("writer's masters") == std::string::npos);
}

TEST_CASE("moeq conform --online int8 / fp8-tensor: online_quant passes all ten checks on generated BF16 fixtures") {
  for (const char* scheme : {"int8", "fp8-tensor"}) require_online_conforms(scheme);
}

TEST_CASE("moeq conform --online fp8-channel / fp8-block: online_quant passes all ten checks on generated BF16 fixtures") {
  for (const char* scheme : {"fp8-channel", "fp8-block"}) require_online_conforms(scheme);
}

TEST_CASE("moeq conform --online with --checkpoint: the given BF16 checkpoint is loaded with the online config") {
  TempDir d;
  writer::MoeSpec s;
  s.num_layers = 1;
  s.num_experts = 4;
  s.hidden = 40;
  s.intermediate = 24;
  writer::write_unquantized(d / "bf16", s);
  const std::string ck = "--checkpoint \"" + (d / "bf16").string() + "\"";
  require_all_pass(conform(builtin("online_quant"), ck + " --online int8"));
  // Without --online the plugin declines the checkpoint's own (absent) config: a failure, since
  // the checkpoint was named.
  const Conform declined = conform(builtin("online_quant"), ck);
  CHECK(declined.verdict(5) == "fail");
  CHECK(declined.reason(5).find("the plugin declined the checkpoint") != std::string::npos);
  CHECK(declined.exit_code == 1);
}

TEST_CASE("moeq conform --online: an unknown scheme is refused up front, naming the valid ones") {
  const CliRun run = run_moeq_cli("conform \"" + builtin("online_quant").string() + "\" --online int4 --json");
  CHECK(run.code == 2);
  CHECK(run.out.find("unknown --online scheme 'int4'") != std::string::npos);
  CHECK(run.out.find("int8, fp8-tensor, fp8-channel, fp8-block") != std::string::npos);
  CHECK(run.out.find("\"checks\"") == std::string::npos);  // no check ran
}

TEST_CASE("moeq_add_plugin KERNELS: the plugin hands back the kernel file byte for byte") {
  Registry reg(host::api());
  REQUIRE(reg.load_file(test_plugin("good")) != nullptr);
  TempDir d;
  small_checkpoint(d / "ck", 1, 2, 16, 8);
  LoadOptions o;
  o.pin_plugin = "conform_good";
  const LoadedModel m = load_model(Checkpoint::open(d / "ck"), reg, o);
  REQUIRE(m.layers.size() == 1);
  const json::object describe = json::parse(m.layers[0]->report.describe_json).as_object();
  const json::object& kernels = describe.at("kernels").as_object();
  REQUIRE(kernels.size() == 1);
  CHECK(kernels.at("conform_scale.cuh").as_string() == read_text(MOEQ_TEST_CONFORM_KERNEL));
}
