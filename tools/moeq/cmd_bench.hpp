// `moeq bench apply`: the fused-MoE kernels of the compressed_tensors plugin on this machine's
// GPU, checked against the CPU references, then timed against the measured floors.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace moeq::cli {

class BenchCommand {
 public:
  // Adds `bench` (with its `apply` subcommand) to app.
  explicit BenchCommand(CLI::App& app);
  bool parsed() const;
  int run() const;

 private:
  CLI::App* bench_ = nullptr;
  CLI::App* apply_ = nullptr;
  std::string schemes_, shapes_, ms_ = "1,16,128,1024,8192", markdown_;
  bool no_check_ = false;
  double seconds_ = 0.25;
};

}  // namespace moeq::cli
