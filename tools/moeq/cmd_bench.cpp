#include "cmd_bench.hpp"

#if MOEQ_HAVE_GPU_BENCH
#include "bench.hpp"
#include "driver.hpp"
#endif

#include <iostream>

namespace moeq::cli {

BenchCommand::BenchCommand(CLI::App& app) {
  bench_ = app.add_subcommand("bench", "benchmarks on this machine's GPU");
  bench_->require_subcommand(1);
  apply_ = bench_->add_subcommand(
      "apply", "fused-MoE apply of the compressed_tensors kernels: checked against the CPU references, then timed "
               "(CUDA graph replays, L2 flushed, median) against the measured copy bandwidth and cuBLASLt rate");
  apply_->add_option("--scheme", schemes_,
                     "comma list of bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16 (default: all "
                     "but fp8-tensor-static)");
  apply_->add_option("--shape", shapes_,
                     "comma list of Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M (default: all)");
  apply_->add_option("--m", ms_, "comma list of token counts");
  apply_->add_flag("--no-check", no_check_, "skip the correctness checks");
  apply_->add_option("--seconds", seconds_, "timing budget of one (shape, scheme, M)");
  apply_->add_option("--markdown", markdown_, "also write the result table to this file");
}

bool BenchCommand::parsed() const { return bench_->parsed(); }

int BenchCommand::run() const {
#if MOEQ_HAVE_GPU_BENCH
  if (const std::string why = gpu_harness::Driver::unavailable_reason(); !why.empty()) {
    std::cerr << "moeq bench: " << why << "\n";
    return 1;
  }
  gpu_harness::BenchOptions o;
  o.schemes = gpu_harness::split_list(schemes_);
  o.shapes = gpu_harness::split_list(shapes_);
  o.ms.clear();
  for (const auto& m : gpu_harness::split_list(ms_)) o.ms.push_back(std::stoll(m));
  o.check = !no_check_;
  o.seconds_per_case = seconds_;
  o.markdown = markdown_;
  return gpu_harness::run_bench(o, std::cout);
#else
  std::cerr << "moeq bench: this moeq was built without a CUDA toolkit (NVRTC); rebuild with one to run GPU "
               "benchmarks\n";
  return 1;
#endif
}

}  // namespace moeq::cli
