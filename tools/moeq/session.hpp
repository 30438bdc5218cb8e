// What every subcommand shares: the plugin registry set up from the search path, and the
// common placement/pin options.
#pragma once
#include <moeq/host.hpp>
#include <moeq/loader.hpp>
#include <moeq/registry.hpp>

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>

namespace moeq::cli {

struct CommonOptions {
  std::string plugin_dir;
  bool json = false;
  int tp = 1, tp_rank = 0, ep = 1, ep_rank = 0;
  std::string pin;
  bool no_strict = false;
  std::string online;
  std::string device = "cpu";
  void add_placement(CLI::App* app);
  // Empty, or why --tp-rank / --ep-rank do not fit their sizes.
  std::string placement_error() const;
  LoadOptions load_options() const;
  static constexpr int kMaxParallel = 65536;
};

// A progress line on stderr for loads longer than a second, when stderr is a terminal and the
// output is not JSON; empty (no progress) otherwise.
std::function<void(const LoadProgress&)> terminal_progress(bool json);

// "cpu", "cuda", "cuda:N"; nullopt for anything else.
std::optional<DLDevice> parse_device(const std::string& v);

class Session {
 public:
  explicit Session(const CommonOptions& opt);
  ~Session();
  Registry& registry() { return *registry_; }

 private:
  std::unique_ptr<Registry> registry_;
};

}  // namespace moeq::cli
