// moeq: check a quantized MoE checkpoint before serving it.
#include "cmd_bench.hpp"
#include "cmd_conform.hpp"
#include "commands.hpp"

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <cstdlib>
#include <iostream>
#include <string_view>

namespace {

constexpr int64_t kMaxTokens = int64_t{1} << 16;

// The message on stderr; with --json also one JSON document on stdout, so that a caller reading
// stdout always gets one. Returns `status`.
int report_error(const moeq::cli::CommonOptions& opt, const char* kind, const std::string& what, int status) {
  std::cerr << "moeq: " << kind << ": " << what << "\n";
  if (opt.json)
    std::cout << boost::json::serialize(boost::json::object{{"error", what}, {"exit_status", status}}) << "\n";
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeq::cli;
  CLI::App app{"moeq: load quantized MoE expert weights through format plugins, check and run them"};
  app.require_subcommand(1);
  CommonOptions opt;
  app.add_option("--plugin-dir", opt.plugin_dir, "directory of plugin .so files (also MOEQ_PLUGIN_PATH)")
      ->check(CLI::ExistingDirectory);
  app.add_flag("--json", opt.json, "print the verdict as JSON");
  bool allow_untrusted = false, pin = false;
  const char* untrusted_help = "load plugins that fail the ownership/permission checks, logging each "
                               "(development; same as MOEQ_ALLOW_UNTRUSTED_PLUGINS=1)";
  app.add_flag("--allow-untrusted-plugins", allow_untrusted, untrusted_help);

  std::string why, dir, keep, golden;
  int64_t tokens = 64;
  uint64_t seed = 7;
  auto* plugins = app.add_subcommand("plugins", "list plugins, refusals and (with --why) probe answers");
  auto* why_option =
      plugins->add_option("--why", why, "checkpoint directory or config JSON: show every plugin's answer for it");
  plugins->add_flag("--pin", pin,
                    "write the SHA-256 allow-list of the plugins that load (MOEQ_PLUGIN_MANIFEST, else "
                    "plugins.lock in each plugin directory); the registry then refuses any other file")
      ->excludes(why_option);
  auto* inspect = app.add_subcommand("inspect", "scheme, plugin and why, per-layer tensor routing, ledger");
  inspect->add_option("dir", dir, "checkpoint directory")->required();
  opt.add_placement(inspect);
  auto* load = app.add_subcommand("load", "strict load, one line per layer");
  load->add_option("dir", dir, "checkpoint directory")->required();
  opt.add_placement(load);
  auto* run = app.add_subcommand("run", "route random tokens through every MoE layer, compare with the float reference");
  run->add_option("dir", dir, "checkpoint directory")->required();
  run->add_option("--tokens", tokens, "tokens per layer (1 to 65536)")->check(CLI::Range(int64_t{1}, kMaxTokens));
  run->add_option("--seed", seed, "random seed of the tokens");
  run->add_option("--golden", golden,
                  "golden file (safetensors: layers.L.input/output, optional topk_ids and original expert weights) "
                  "from a framework's forward: hold every layer to it instead of random tokens")
      ->check(CLI::ExistingFile);
  opt.add_placement(run);
  auto* demo = app.add_subcommand("demo", "write the embedded example checkpoints, then load and run each");
  demo->add_option("--keep", keep, "write the checkpoints here and keep them");
  demo->add_option("--tokens", tokens, "tokens per layer (1 to 65536)")->check(CLI::Range(int64_t{1}, kMaxTokens));
  for (auto* sub : {plugins, inspect, load, run, demo}) {
    sub->add_option("--plugin-dir", opt.plugin_dir, "directory of plugin .so files")->check(CLI::ExistingDirectory);
    sub->add_flag("--json", opt.json, "print the verdict as JSON");
    sub->add_flag("--allow-untrusted-plugins", allow_untrusted, untrusted_help);
  }
  ConformCommand conform(app, opt);
  BenchCommand bench(app, opt);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every usage error (unknown option, bad value) exits 2, as documented,
    // rather than with CLI11's own codes (100 and up).
    if (app.exit(e) == 0) return 0;
    // NOTE: parsing stopped before --json may have been read; a caller that asked for JSON
    // still gets one document on stdout (the usage message stays on stderr).
    for (int i = 1; i < argc && std::string_view(argv[i]) != "--"; ++i)
      if (std::string_view(argv[i]) == "--json") {
        opt.json = true;
        std::cout << boost::json::serialize(
                         boost::json::object{{"error", std::string("usage: ") + e.what()}, {"exit_status", 2}})
                  << "\n";
        break;
      }
    return 2;
  }
  // A rank must lie below its size: a usage error, named by its options, like a bad value.
  for (auto* sub : {inspect, load, run})
    if (sub->parsed())
      if (const std::string bad = opt.placement_error(); !bad.empty()) return report_error(opt, "error", bad, 2);
  // The registry reads the override from the environment, as it does for embedders; it logs
  // that the checks are off and every file it loads despite them.
  if (allow_untrusted) ::setenv("MOEQ_ALLOW_UNTRUSTED_PLUGINS", "1", 1);
  try {
    if (bench.parsed()) return bench.run();
    if (conform.parsed()) return conform.run();
    if (plugins->parsed() && pin) return cmd_pin_plugins(opt);
    if (plugins->parsed()) return cmd_plugins(opt, why);
    if (inspect->parsed()) return cmd_inspect(opt, dir);
    if (load->parsed()) return cmd_load(opt, dir);
    if (run->parsed()) return cmd_run(opt, dir, tokens, seed, golden);
    if (demo->parsed()) {
      opt.tp = 1;
      return cmd_demo(opt, keep, tokens);
    }
  } catch (const moeq::Error& e) {
    return report_error(opt, "error", e.what(), 1);
  } catch (const std::exception& e) {
    return report_error(opt, "unexpected error", e.what(), 2);
  }
  return 0;
}
