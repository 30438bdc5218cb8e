// `moeq conform` as a plugin author runs it: the built-in plugins conform, a correct SDK-built
// plugin conforms, and each deliberately broken plugin of tests/conform_plugins fails exactly
// the check its defect breaks, with a reason that says what is wrong. Also: the kernel sources
// moeq_add_plugin embeds.
#include "ct_support.hpp"
#include "support.hpp"

#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

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
writer::MoeSpec small_spec(int layers, int64_t experts, int64_t hidden, int64_t intermediate,
                           writer::Layout layout = writer::Layout::kPerExpert) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = layers;
  s.num_experts = experts;
  s.hidden = hidden;
  s.intermediate = intermediate;
  return s;
}

writer::WrittenCheckpoint small_checkpoint(const fs::path& dir, int layers, int64_t experts, int64_t hidden,
                                           int64_t intermediate) {
  return writer::write_ct_fp8_channel(dir, small_spec(layers, experts, hidden, intermediate));
}

// The writer's float masters of `w` as a --reference directory: F32 per-expert weights under the
// checkpoint's names, beside a copy of its config.json.
void write_reference(const writer::WrittenCheckpoint& w, const fs::path& dir) {
  fs::create_directories(dir);
  fs::copy_file(w.dir / "config.json", dir / "config.json");
  writer::SafetensorsWriter st;
  for (const writer::LayerMasters& m : w.layers) {
    const ref::ExpertWeights& d = m.dequantized;
    const int64_t H = d.hidden, I = d.intermediate;
    for (int64_t e = 0; e < d.num_experts; ++e) {
      const std::string ep = m.prefix + ".experts." + std::to_string(e) + ".";
      const float* w13 = d.w13.data() + e * 2 * I * H;
      st.add_float(ep + "gate_proj.weight", DType::F32, {I, H}, std::vector<float>(w13, w13 + I * H));
      st.add_float(ep + "up_proj.weight", DType::F32, {I, H}, std::vector<float>(w13 + I * H, w13 + 2 * I * H));
      const float* w2 = d.w2.data() + e * H * I;
      st.add_float(ep + "down_proj.weight", DType::F32, {H, I}, std::vector<float>(w2, w2 + H * I));
    }
  }
  st.write(dir / "model.safetensors");
}

// Is process `pid` still running (a zombie is not)?
bool running(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
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
  // plugin sees it, so the checkpoint does not load, and on a --checkpoint the checks that needed
  // it fail as not run.
  CHECK(c.verdict(5) == "fail");
  CHECK(c.reason(5).find("gate_proj.weight: w1 (gate_proj) of expert 0, element [0, 0] is NaN") != std::string::npos);
  CHECK(c.verdict(7) == "fail");
  CHECK(c.reason(7).find("did not run on the --checkpoint") != std::string::npos);
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
  writer::write_unquantized(d / "bf16", small_spec(1, 4, 40, 24));
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

// ABI 1.2 is append-only: a plugin built for 1.1 (no apply_info slot) still loads, conforms and
// applies through the zero-copy path, and the host lends it no workspace.
TEST_CASE("an ABI 1.1 plugin loads, conforms and applies under the 1.2 host, with no workspace") {
  const Conform c = conform(test_plugin("legacy_minor1"), "--timeout 60");
  INFO(c.text);
  require_all_pass(c);
  CHECK(c.reason(8).find("no apply_info (before ABI 1.2: no host workspace)") != std::string::npos);
  Registry reg(host::api());
  const LoadedPlugin* legacy = reg.load_file(test_plugin("legacy_minor1"));
  const LoadedPlugin* good = reg.load_file(test_plugin("good"));
  REQUIRE(legacy != nullptr);
  REQUIRE(good != nullptr);
  CHECK(legacy->effective_minor == 1);
  CHECK(good->effective_minor == 2);
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 32, 16);
  LoadOptions o;
  o.pin_plugin = "conform_legacy_minor1";
  const LoadedModel m = load_model(Checkpoint::open(d / "ck"), reg, o);
  o.pin_plugin = "conform_good";
  const LoadedModel g = load_model(Checkpoint::open(d / "ck"), reg, o);
  REQUIRE(m.layers.size() == 1);
  const LoadedLayer& l = *m.layers[0];
  CHECK(l.workspace == nullptr);
  CHECK(l.workspace_bytes == 0);
  CHECK(l.x_dtypes == (MOEQ_DTYPE_BIT_F32 | MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F16));
  const int64_t M = 6, H = 32, k = g.layers[0]->geometry.top_k;
  const std::vector<float> x = bf16_tokens(M, H, 3);
  const ref::Routing r = random_routing(M, 4, k, 4);
  const std::vector<float> want = g.apply(0, x, M, r);
  CHECK(m.apply(0, x, M, r) == want);
  std::vector<float> xs = x, out(static_cast<size_t>(M * H), 0.0f), wts = r.weights;
  std::vector<int32_t> ids = r.ids;
  int64_t xsh[2] = {M, H}, ksh[2] = {M, k};
  const DLTensor tx{xs.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xsh, nullptr, 0};
  const DLTensor to{out.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xsh, nullptr, 0};
  const DLTensor ti{ids.data(), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ksh, nullptr, 0};
  const DLTensor tw{wts.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ksh, nullptr, 0};
  m.apply(0, tx, ti, tw, to, nullptr);
  CHECK(out == want);
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

TEST_CASE("moeq conform: a plugin that writes one element past `out` in apply fails accuracy, apply and concurrency") {
  const Conform c = conform(test_plugin("oob_out"), "--timeout 60");
  INFO(c.text);
  CHECK(c.failing() == std::vector<int>{7, 8, 9});
  for (int id : {7, 8, 9}) {
    CAPTURE(id);
    CHECK(c.reason(id).find("apply wrote past the end of out") != std::string::npos);
    CHECK(c.reason(id).find("bytes 0..3 after its last element") != std::string::npos);
  }
  CHECK(c.exit_code == 1);
}

TEST_CASE("moeq conform: a write far past `out` hits the guard page, and the crash names the buffer and the offset") {
  const Conform c = conform(test_plugin("oob_far"), "--timeout 60");
  INFO(c.text);
  CHECK(c.failing() == std::vector<int>{7, 8, 9, 10});
  for (int id : {7, 8, 9, 10}) {
    CAPTURE(id);
    CHECK(c.reason(id).find("apply reached byte 4092 past the end of out (a guard page beyond its canary)") !=
          std::string::npos);
    CHECK(c.reason(id).find("crashed: SIGSEGV") != std::string::npos);
  }
}

TEST_CASE("moeq conform: a loader that swaps gate and up scales fails accuracy against every reference made without it") {
  // Generated fixtures: the writer's masters catch it.
  const Conform generated = conform(test_plugin("swap_scales"), "--timeout 60");
  INFO(generated.text);
  CHECK(generated.failing() == std::vector<int>{7});
  CHECK(generated.reason(7).find("apply vs the writer's float masters") != std::string::npos);

  TempDir d;
  const writer::WrittenCheckpoint w = small_checkpoint(d / "ck", 1, 4, 40, 24);
  write_reference(w, d / "ref");
  const std::string ck = "--checkpoint \"" + (d / "ck").string() + "\"";

  // --checkpoint alone: its own dequantize_expert agrees with it, the built-in compressed_tensors does not.
  const Conform builtin_ref = conform(test_plugin("swap_scales"), ck + " --timeout 60");
  INFO(builtin_ref.text);
  CHECK(builtin_ref.failing() == std::vector<int>{7});
  CHECK(builtin_ref.reason(7).find("apply vs the built-in compressed_tensors plugin's dequantize_expert") !=
        std::string::npos);
  CHECK(builtin_ref.reason(7).find("relative L2") != std::string::npos);

  // --reference: the float weights given fail it too.
  const Conform given = conform(test_plugin("swap_scales"), ck + " --reference \"" + (d / "ref").string() + "\" --check 7");
  INFO(given.text);
  CHECK(given.failing() == std::vector<int>{7});
  bool named = false;
  for (const json::value& c : given.report.at("checks").as_array()[0].at("details").as_array())
    named |= std::string(c.as_string()).find("apply vs --reference " + (d / "ref").string()) != std::string::npos;
  CHECK(named);

  // The correct plugin passes against the same references, and the reason names both.
  const Conform good = conform(test_plugin("good"), ck + " --reference \"" + (d / "ref").string() + "\" --check 7");
  CHECK(good.failing().empty());
  CHECK(good.reason(7).find("vs --reference") != std::string::npos);
  CHECK(good.reason(7).find("vs the built-in compressed_tensors plugin's dequantize_expert") != std::string::npos);
  CHECK(good.exit_code == 0);
  CHECK(good.report.at("reference").as_string() == "--reference " + (d / "ref").string());
}

TEST_CASE("moeq conform --reference: weights that are not float, or without --checkpoint, are refused before any check") {
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);
  const CliRun quantized = run_moeq_cli("conform \"" + test_plugin("good").string() + "\" --checkpoint \"" +
                                        (d / "ck").string() + "\" --reference \"" + (d / "ck").string() + "\" --json");
  CHECK(quantized.code == 1);
  CHECK(quantized.out.find("--reference " + (d / "ck").string()) != std::string::npos);
  CHECK(quantized.out.find("expected F32, BF16 or F16, found F8_E4M3") != std::string::npos);
  CHECK(quantized.out.find("\"checks\"") == std::string::npos);
  const CliRun alone = run_moeq_cli("conform \"" + test_plugin("good").string() + "\" --reference \"" +
                                    (d / "ck").string() + "\" --json");
  CHECK(alone.code == 2);
  CHECK(alone.out.find("--checkpoint") != std::string::npos);
}

TEST_CASE("moeq conform: a plugin that forks in initialize fails within one timeout and leaves no process behind") {
  TempDir d;
  const fs::path pids = d / "pids";
  const auto t0 = std::chrono::steady_clock::now();
  const CliRun run = run_moeq_cli("conform \"" + test_plugin("fork_init").string() + "\" --timeout 30 --json",
                                  "MOEQ_CONFORM_TEST_PIDFILE=\"" + pids.string() + "\"", false);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(run.out);
  CHECK(seconds < 30);  // the whole run: each check ends with its process, not at the timeout
  Conform c;
  c.exit_code = run.code;
  c.report = json::parse(run.out).as_object();
  CHECK(c.exit_code == 1);
  const std::vector<int> failing = c.failing();
  CHECK(failing.size() >= 8);
  for (int id : failing) {
    CAPTURE(id);
    CHECK(c.reason(id).find("the plugin left ") == 0);
    CHECK(c.reason(id).find(" running after the check") != std::string::npos);
    CHECK(c.reason(id).find("it forked in initialize") != std::string::npos);
  }
  std::ifstream in(pids);
  int pid = 0, forks = 0;
  while (in >> pid) {
    ++forks;
    bool gone = false;
    for (int i = 0; i < 100 && !(gone = !running(pid)); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CAPTURE(pid);
    CHECK(gone);
  }
  CHECK(forks >= static_cast<int>(failing.size()));
}

TEST_CASE("moeq conform: a scale the plugin never writes is its fault, not a missing checkpoint tensor") {
  const Conform c = conform(test_plugin("unwritten_scale"), "--timeout 60");
  INFO(c.text);
  CHECK(c.failing() == std::vector<int>{5});
  CHECK(c.reason(5).find("parameter 'w13_weight_scale'") != std::string::npos);
  CHECK(c.reason(5).find("the plugin did not write them: no checkpoint tensor is missing") != std::string::npos);
  CHECK(c.reason(5).find("a checkpoint tensor is missing") == std::string::npos);
  // A checkpoint that really lacks a scale says which.
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);
  rewrite_tensors(d / "ck", [](TensorMap& m) { REQUIRE(m.erase("model.layers.0.mlp.experts.2.up_proj.weight_scale") == 1); });
  const Conform missing = conform(test_plugin("good"), "--checkpoint \"" + (d / "ck").string() + "\" --check 5");
  CHECK(missing.failing() == std::vector<int>{5});
  CHECK(missing.reason(5).find("the checkpoint has no w3 weight_scale tensor for expert 2") != std::string::npos);
}

TEST_CASE("moeq conform --checkpoint: a load or apply check that could not run fails, and so does a declined checkpoint") {
  TempDir d;
  small_checkpoint(d / "ck", 1, 4, 40, 24);
  const std::string ck = "--checkpoint \"" + (d / "ck").string() + "\"";
  // write_outside does not load: checks 7 and 8 cannot run, which on a named checkpoint is a failure.
  const Conform c = conform(test_plugin("write_outside"), ck + " --timeout 60");
  INFO(c.text);
  CHECK(c.failing() == std::vector<int>{5, 7, 8});
  CHECK(c.reason(7).find("did not run on the --checkpoint: no accepted fixture loads (see check 5)") != std::string::npos);
  // Only checks that need no load selected, on a checkpoint the plugin declines: not a conforming run.
  const Conform declined = conform(builtin("modelopt"), ck + " --check 3", false);
  CHECK(declined.exit_code == 1);
  CHECK(declined.text.find("does NOT conform; the load and apply checks did not run: the plugin declined the checkpoint") !=
        std::string::npos);
}

TEST_CASE("moeq conform --reference: fused float experts (Granite layout) are read and apply is held to them") {
  TempDir d;
  writer::write_unquantized(d / "bf16", small_spec(1, 4, 40, 24, writer::Layout::kGraniteFused));
  const std::string dir = (d / "bf16").string();
  const Conform c =
      conform(builtin("online_quant"), "--online int8 --checkpoint \"" + dir + "\" --reference \"" + dir + "\" --check 7");
  INFO(c.text);
  CHECK(c.failing().empty());
  CHECK(c.reason(7).find("vs --reference " + dir + ": ") != std::string::npos);
  CHECK(c.exit_code == 0);
}
