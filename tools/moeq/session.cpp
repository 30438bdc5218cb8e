#include "session.hpp"

#include <unistd.h>

#include <cstdio>
#include <memory>

namespace moeq::cli {

void CommonOptions::add_placement(CLI::App* app) {
  app->add_option("--tp", tp, "tensor-parallel size (1 to 65536)")->check(CLI::Range(1, kMaxParallel));
  app->add_option("--tp-rank", tp_rank, "tensor-parallel rank, below --tp")->check(CLI::Range(0, kMaxParallel - 1));
  app->add_option("--ep", ep, "expert-parallel size (1 to 65536)")->check(CLI::Range(1, kMaxParallel));
  app->add_option("--ep-rank", ep_rank, "expert-parallel rank, below --ep")->check(CLI::Range(0, kMaxParallel - 1));
  app->add_option("--plugin", pin, "use this plugin for every layer (pin)");
  app->add_flag("--no-strict", no_strict,
                "load anyway where strict loading would refuse (unwritten parameter elements, unknown expert "
                "tensors, a router without experts): each is a warning, and the verdict says 'not strict'");
  app->add_option("--online", online, "quantize unquantized experts at load: int8, fp8-tensor, fp8-channel, fp8-block")
      ->check(CLI::IsMember(online_schemes()));
  app->add_option("--device", device,
                  "where parameters live and apply runs: cpu (default) or cuda[:N] (the plugin's CUDA kernels; "
                  "x goes to apply as BF16)")
      ->check([](const std::string& v) { return parse_device(v) ? std::string() : "expected cpu, cuda or cuda:N, found '" + v + "'"; });
}

std::optional<DLDevice> parse_device(const std::string& v) {
  if (v == "cpu") return DLDevice{kDLCPU, 0};
  if (v == "cuda") return DLDevice{kDLCUDA, 0};
  if (v.rfind("cuda:", 0) != 0 || v.size() == 5 || v.size() > 8) return std::nullopt;
  int n = 0;
  for (char c : v.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return DLDevice{kDLCUDA, n};
}

std::string CommonOptions::placement_error() const {
  if (tp_rank >= tp)
    return "--tp-rank " + std::to_string(tp_rank) + " is out of range for --tp " + std::to_string(tp) +
           " (expected 0 to " + std::to_string(tp - 1) + ")";
  if (ep_rank >= ep)
    return "--ep-rank " + std::to_string(ep_rank) + " is out of range for --ep " + std::to_string(ep) +
           " (expected 0 to " + std::to_string(ep - 1) + ")";
  return {};
}

std::function<void(const LoadProgress&)> terminal_progress(bool json) {
  if (json || ::isatty(STDERR_FILENO) != 1) return {};
  // Shared by the copies of the options a command makes; one line redrawn with \r, shown
  // from the first second on, at most ten times a second, ended with a newline.
  struct State {
    double last = -1;
    bool shown = false;
  };
  auto state = std::make_shared<State>();
  return [state](const LoadProgress& p) {
    const bool finished = p.layers_total > 0 && p.layers_done == p.layers_total;
    if (finished) {
      if (state->shown) std::fprintf(stderr, "\r%s\n", progress_line(p).c_str());
      state->shown = false;
      state->last = -1;
      return;
    }
    if (p.seconds < 1.0 || p.seconds - state->last < 0.1) return;
    state->last = p.seconds;
    state->shown = true;
    std::fprintf(stderr, "\r%s", progress_line(p).c_str());
    std::fflush(stderr);
  };
}

LoadOptions CommonOptions::load_options() const {
  LoadOptions o;
  o.placement = {tp_rank, tp, ep_rank, ep};
  o.strict = !no_strict;
  o.pin_plugin = pin;
  o.online_scheme = online;
  o.device = *parse_device(device);
  o.progress = terminal_progress(json);
  return o;
}

Session::Session(const CommonOptions& opt) {
  registry_ = std::make_unique<Registry>(host::api());
  host::set_registry(registry_.get());
  std::optional<std::filesystem::path> dir;
  if (!opt.plugin_dir.empty()) dir = opt.plugin_dir;
  for (const auto& d : Registry::search_path(dir))
    if (std::filesystem::exists(d) || (dir && d == *dir)) registry_->load_directory(d);
}

Session::~Session() { host::set_registry(nullptr); }

}  // namespace moeq::cli
