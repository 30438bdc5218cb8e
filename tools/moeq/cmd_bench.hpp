// `moeq bench apply`: the fused-MoE kernels of the compressed_tensors plugin on this machine's
// GPU, checked against the CPU references, then timed against the measured floors.
// `moeq bench load`: page cache -> device parameters through pinned staging, raw and through
// the strict loader, against the measured H2D rates; `--synthesize` writes a big checkpoint.
// `moeq bench tune`: per (shape, scheme, M) the tile candidates timed on this GPU; the fastest
// written as a tune table the compressed_tensors plugin reads (MOEQ_CT_TUNE_TABLE, or shipped
// under plugins/compressed_tensors/gpu/tuned/).
// `moeq bench jit`: cold and warm JIT start of the kernel sets one model needs, per scheme.
#pragma once
#include "session.hpp"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::cli {

class BenchCommand {
 public:
  // Adds `bench` (with its `apply`, `load` and `jit` subcommands) to app; `opt` carries the
  // plugin directory and placement that `bench load` hands the loader.
  BenchCommand(CLI::App& app, CommonOptions& opt);
  bool parsed() const;
  int run() const;

 private:
  int run_apply() const;
  int run_load() const;
  int run_jit() const;
  int run_tune() const;

  CommonOptions& opt_;
  CLI::App* bench_ = nullptr;
  CLI::App* apply_ = nullptr;
  CLI::App* load_ = nullptr;
  CLI::App* jit_ = nullptr;
  CLI::App* tune_ = nullptr;
  // apply
  std::string schemes_, shapes_, ms_ = "1,16,128,1024,8192", markdown_;
  std::vector<std::string> apply_dims_;
  bool no_check_ = false;
  bool tune_ptxas_report_ = false;
  bool stage_graphs_ = false;
  double seconds_ = 0.25;
  // tune
  std::string tune_schemes_ = "bf16,fp8-channel,fp8-block,w8a16", tune_shapes_, tune_ms_ = "1,16,128,1024,8192",
              tune_out_, tune_arch_;
  std::vector<std::string> tune_dims_;
  double tune_seconds_ = 0.5;
  // load
  std::string dir_, synthesize_, synth_scheme_ = "fp8-channel", dims_;
  int layers_ = 4;
  uint64_t seed_ = 2026;
  bool write_only_ = false, cold_ = false;
  unsigned threads_ = 0, chunks_ = 0;
  int repeat_ = 3;
  unsigned layer_threads_ = 0;
  int chunk_mib_ = 16;
  // jit
  std::string jit_schemes_, jit_shape_ = "Qwen3-30B-A3B", jit_arch_;
  int64_t jit_max_tokens_ = 8192;
  bool jit_keep_ = false;
};

}  // namespace moeq::cli
