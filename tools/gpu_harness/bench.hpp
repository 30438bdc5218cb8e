// `moeq bench apply` and the standalone harness: GPU correctness of every scheme against CPU
// references, then timings of the fused MoE against the measured floors.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "bench_layer.hpp"
#include "gpu/moe_runner.hpp"

#include <moeq/strings.hpp>

namespace moeq::gpu_harness {

struct BenchOptions {
  std::vector<std::string> schemes;  // empty = bf16, fp8-channel, fp8-block, fp8-tensor, w8a16
  std::vector<std::string> shapes;   // empty = the four named shapes (unless extra_shapes is given)
  std::vector<ShapeSpec> extra_shapes;  // other geometries (`bench apply --dims`), after the named ones
  std::vector<int64_t> ms = {1, 16, 128, 1024, 8192};
  bool check = true;         // correctness before timing (synthetic shapes + M=4 on real ones)
  bool time = true;
  bool routing = true;       // router kernel vs the core reference
  // Each kernel's cost in place: graphs of the sequence's first 1, 2, ... kernels (RunIo::
  // max_launches), differences of their medians (Row::stages_graph, JSON stages_graph_us).
  bool stage_graphs = false;
  double seconds_per_case = 0.25;  // timing budget of one (shape, scheme, M)
  uint64_t seed = 2026;
  std::string markdown;      // write the result table here too (empty = no file)
  // Floors measured by an earlier process (copy GB/s, fp8 and bf16 TFLOP/s); 0 = measure.
  double given_copy_gbps = 0, given_fp8_tflops = 0, given_bf16_tflops = 0;
  bool floors_only = false;  // measure and print the floors, nothing else
  bool json = false;         // `out` gets one JSON document; progress and tables go to stderr
  // --compile-only: compile with ptxas's resource report and print each kernel's registers,
  // stack frame and spills (a spill in a GEMM's loop costs local-memory traffic every K tile).
  bool ptxas_report = false;
};

using ::moeq::split_list;  // command-line lists (moeq/strings.hpp)
// Small helpers of the bench tables: the median (upper middle; 0 for none), fixed-point text.
double median(std::vector<double> v);
std::string fmt(double v, int prec = 1);

// Prints progress and a final table to `out` (with options.json: to stderr, and one JSON object
// to `out`: every timed case with its shape's dims, times, floor and that shape's check, every
// check, every case that failed). Returns 0 when every check passed and every case ran.
int run_bench(const BenchOptions& options, std::ostream& out);

// `moeq bench tune`: per (shape, scheme, M) of the options, times the tile candidates
// (tile_candidates) and writes the fastest of each as a tune table (tune_table.hpp) to
// `table_path` (empty: `out`); progress on stderr. Returns 0 when every case was tuned.
int run_tune(const BenchOptions& options, const std::string& table_path, std::ostream& out);
// Compiles every candidate kernel set run_tune would time on `arch` into the JIT cache; no GPU.
int compile_tune_candidates(const BenchOptions& options, const std::string& arch, std::ostream& out);

// Compiles (into the JIT cache, MOEQ_CACHE_DIR) every kernel set run_bench would
// load for `arch`, assuming an H100's SM count and shared memory; needs no GPU.
int compile_only(const BenchOptions& options, const std::string& arch, std::ostream& out);

// Every kernel variant the plugin can ask for on `arch` ("sm_90a", "sm_89", "sm_80"): each
// scheme the arch runs (fp8 from sm_89, wgmma on sm_90a), every M bucket of small- and
// large-expert shapes and of `geometries`, on each of arch_cards(arch), refined block grids
// (64, 32 and 16 element periods), the tiles the shipped tune tables choose for this arch, plus
// the router/repack set. Needs no GPU.
std::vector<ct::gpu::KernelSetSource> kernel_variants(const std::string& arch,
                                                     const std::vector<ShapeSpec>& geometries = {});

// The cards of an arch that kernel_variants plans for: every SM count from 8 to 160, with the
// arch's shared memory a block (sm_90a 227 KiB; sm_89 99 KiB; sm_80 163 KiB, and 99 KiB as
// sm_86 cards have). A plan's tiles depend on both, so each card can pick kernels another does not.
std::vector<ct::gpu::DeviceLimits> arch_cards(const std::string& arch);

// Device correctness of one named scheme on synthetic shapes (K/N tails, EP with non-local
// experts, chunking, every M bucket): per-GEMM and end-to-end checks, repeatability, CUDA graph
// replay. Throws moeq::Error(UNAVAILABLE) without a CUDA device.
bool check_scheme(const std::string& scheme, std::ostream& out, uint64_t seed = 2026);

}  // namespace moeq::gpu_harness
