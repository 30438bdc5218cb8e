// moeq_gpu_harness: GPU correctness and timing of the compressed_tensors fused-MoE kernels,
// outside the plugin loader. `--compile-only ARCH` compiles every kernel set without a GPU
// (`--dims` adds geometries besides the named shapes).
#include "bench.hpp"
#include "driver.hpp"

#include <moeq/error.hpp>

#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  moeq::gpu_harness::BenchOptions opt;
  std::string compile_arch;
  // std::stoll / std::stod throw std::invalid_argument or std::out_of_range on a bad number.
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) {
          std::cerr << a << " needs a value\n";
          std::exit(2);
        }
        return argv[++i];
      };
      if (a == "--scheme") opt.schemes = moeq::gpu_harness::split_list(next());
      else if (a == "--shape") opt.shapes = moeq::gpu_harness::split_list(next());
      else if (a == "--m") {
        opt.ms.clear();
        for (const auto& m : moeq::gpu_harness::split_list(next())) opt.ms.push_back(std::stoll(m));
      } else if (a == "--no-check") opt.check = false;
      else if (a == "--no-time") opt.time = false;
      else if (a == "--no-routing") opt.routing = false;
      else if (a == "--seconds") opt.seconds_per_case = std::stod(next());
      else if (a == "--markdown") opt.markdown = next();
      else if (a == "--compile-only") compile_arch = next();
      else if (a == "--ptxas-report") opt.ptxas_report = true;
      else if (a == "--dims") {
        const std::string v = next();
        std::string why;
        const auto d = moeq::gpu_harness::parse_geometry(v, why);
        if (!d) {
          std::cerr << "--dims " << why << "\n";
          return 2;
        }
        opt.extra_shapes.push_back(*d);
      }
      else if (a == "--floors-only") opt.floors_only = true;
      else if (a == "--floors") {
        const auto v = moeq::gpu_harness::split_list(next());
        if (v.size() != 3) {
          std::cerr << "--floors wants COPY_GBPS,FP8_TFLOPS,BF16_TFLOPS\n";
          return 2;
        }
        opt.given_copy_gbps = std::stod(v[0]);
        opt.given_fp8_tflops = std::stod(v[1]);
        opt.given_bf16_tflops = std::stod(v[2]);
      }
      else {
        std::cerr << "usage: moeq_gpu_harness [--scheme LIST] [--shape LIST] [--m LIST] [--no-check] [--no-time]\n"
                     "                        [--no-routing] [--seconds S] [--markdown FILE] [--compile-only ARCH]\n"
                     "                        [--ptxas-report] [--dims [NAME=]E,TOPK,H,I]... [--floors-only] [--floors GBPS,FP8,BF16]\n";
        return 2;
      }
    }
  } catch (const std::logic_error& e) {
    std::cerr << "moeq_gpu_harness: a number option has a value that is not a number (" << e.what() << ")\n";
    return 2;
  }
  try {
    if (opt.ptxas_report && compile_arch.empty()) {
      std::cerr << "moeq_gpu_harness: --ptxas-report goes with --compile-only ARCH\n";
      return 2;
    }
    if (!compile_arch.empty()) return moeq::gpu_harness::compile_only(opt, compile_arch, std::cout);
    if (const std::string why = moeq::gpu_harness::Driver::unavailable_reason(); !why.empty()) {
      std::cout << "SKIP: " << why << "\n";
      return 0;
    }
    return moeq::gpu_harness::run_bench(opt, std::cout);
  } catch (const std::exception& e) {
    std::cerr << "moeq_gpu_harness: " << e.what() << "\n";
    return 3;  // distinct from failed checks (1)
  }
}
