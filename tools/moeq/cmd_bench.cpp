#include "cmd_bench.hpp"

#include "../gpu_harness/named_shapes.hpp"

#if MOEQ_HAVE_GPU_BENCH
#include "bench.hpp"
#include "bench_layer.hpp"
#include "driver.hpp"
#include "jit_bench.hpp"
#include "load_bench.hpp"
#endif

#include <moeq/cuda_driver.hpp>
#include <moeq/error.hpp>
#include <moeq/strings.hpp>
#include <moeq_writer/synthetic.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>

namespace moeq::cli {
namespace {

[[maybe_unused]] constexpr const char* kNoToolkit =
    "this moeq was built without a CUDA toolkit (NVRTC); rebuild with one to run GPU benchmarks";

// The option checks below run while CLI11 parses, so a bad value is a usage error (exit 2,
// "--option: why") before anything is printed, written or compiled.
using Refusal = std::function<std::string(const std::string&)>;

// A comma list of distinct items, each accepted by `item_refusal`; an empty item or a repeat is
// refused rather than dropped or run twice.
Refusal distinct_list(Refusal item_refusal) {
  return [item_refusal](const std::string& s) -> std::string {
    std::vector<std::string> seen;
    for (const std::string& item : split_keeping_empty(s)) {
      if (item.empty()) return "empty item in '" + s + "'; give a comma list without blanks";
      if (std::string why = item_refusal(item); !why.empty()) return why;
      if (std::find(seen.begin(), seen.end(), item) != seen.end()) return "'" + item + "' is listed twice in '" + s + "'";
      seen.push_back(item);
    }
    return "";
  };
}

// One of `names`, else a message that spells them all out.
Refusal one_of(std::vector<std::string> names, std::string what) {
  return [names = std::move(names), what = std::move(what)](const std::string& v) -> std::string {
    if (std::find(names.begin(), names.end(), v) != names.end()) return "";
    std::string valid;
    for (const std::string& n : names) valid += (valid.empty() ? "" : ", ") + n;
    return "unknown " + what + " '" + v + "'; valid " + what + "s: " + valid;
  };
}

std::string token_count_refusal(const std::string& v) {
  return positive_integer(v) ? "" : "'" + v + "' is not a positive integer; give token counts, e.g. 1,16,128";
}

std::string dims_refusal(const std::string& v) {
  const std::optional<std::vector<int64_t>> d = positive_integers(v);
  return d && d->size() == 3 ? "" : "wants E,H,I (three positive integers), found '" + v + "'";
}

}  // namespace


namespace {

std::string apply_dims_refusal(const std::string& v) {
  std::string why;
  gpu_harness::parse_geometry(v, why);
  return why;
}

#if MOEQ_HAVE_GPU_BENCH
std::vector<std::string> bench_scheme_names() {
  std::vector<std::string> out;
  for (const gpu_harness::SchemeSpec& s : gpu_harness::named_schemes()) out.push_back(s.name);
  return out;
}

std::vector<std::string> bench_shape_names() {
  std::vector<std::string> out;
  for (const gpu_harness::ShapeSpec& s : gpu_harness::named_shapes()) out.push_back(s.name);
  return out;
}
#endif

}  // namespace

BenchCommand::BenchCommand(CLI::App& app, CommonOptions& opt) : opt_(opt) {
  bench_ = app.add_subcommand("bench", "benchmarks on this machine's GPU");
  bench_->require_subcommand(1);
  apply_ = bench_->add_subcommand(
      "apply", "fused-MoE apply of the compressed_tensors kernels: checked against the CPU references, then timed "
               "(CUDA graph replays, L2 flushed, median) against the measured copy bandwidth and cuBLASLt rate");
  auto* apply_scheme = apply_->add_option(
      "--scheme", schemes_,
      "comma list of bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16 (default: all but "
      "fp8-tensor-static)");
  auto* apply_shape = apply_->add_option(
      "--shape", shapes_,
      "comma list of Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M (default: all, unless --dims is given)");
  apply_->add_option("--dims", apply_dims_,
                     "another geometry, E,TOPK,H,I (named E<E>-k<TOPK>-H<H>-I<I>) or NAME=E,TOPK,H,I; repeatable, "
                     "with --shape or instead of it (then only these run). E <= 1024, TOPK <= min(E, 32), H and I "
                     "multiples of 16")
      ->check(apply_dims_refusal)
      ->allow_extra_args(false);
  apply_->add_option("--m", ms_, "comma list of token counts (positive, each once)")
      ->check(distinct_list(token_count_refusal));
  // NOTE: what needs all of --dims and --m together is checked once parsing is done, still as a
  // usage error: a geometry given twice (one name for two cases), and 32-bit row indexing.
  apply_->final_callback([this] {
    std::vector<std::string> names;
    const std::vector<int64_t> ms = *positive_integers(ms_);
    const int64_t max_m = *std::max_element(ms.begin(), ms.end());
    for (const std::string& v : apply_dims_) {
      std::string why;
      const gpu_harness::ShapeSpec d = *gpu_harness::parse_geometry(v, why);  // each checked while parsing
      if (std::find(names.begin(), names.end(), d.name) != names.end())
        throw CLI::ValidationError("--dims", "'" + v + "' names the case '" + d.name + "' a second time");
      names.push_back(d.name);
      // In double: the factors may be anything up to int64's range.
      const double rows = static_cast<double>(max_m) * static_cast<double>(d.top_k);
      if (rows * static_cast<double>(std::max(d.hidden, d.inter)) >= 0x1p31 || rows >= 0x1p30)
        throw CLI::ValidationError("--dims", "'" + v + "' at M=" + std::to_string(max_m) +
                                                 " is too large for the kernels' 32-bit row indexing; give a smaller --m");
    }
  });
  apply_->add_flag("--no-check", no_check_, "skip the correctness checks");
  apply_->add_flag("--stage-graphs", stage_graphs_,
                   "also time each kernel in place: CUDA graphs of the sequence's first 1, 2, ... kernels, L2 flushed "
                   "before each replay, differences of their medians (stages_graph_us)");
  apply_->add_option("--seconds", seconds_, "timing budget of one (shape, scheme, M)");
  apply_->add_option("--markdown", markdown_, "also write the result table to this file");
  apply_->add_flag("--json", opt_.json, "print the timed rows as one JSON object (progress and tables to stderr)");

  tune_ = bench_->add_subcommand(
      "tune", "tile configurations of the compressed_tensors kernels timed on this GPU per (shape, scheme, M): every "
              "candidate's GEMMs apart, then the best per row tile as CUDA graphs; the fastest of each case becomes "
              "an entry of a tune table (JSON), which the plugin reads from MOEQ_CT_TUNE_TABLE or ships embedded");
  auto* tune_scheme = tune_->add_option("--scheme", tune_schemes_, "comma list of schemes (default: bf16, fp8-channel, "
                                                                   "fp8-block, w8a16)");
  auto* tune_shape = tune_->add_option("--shape", tune_shapes_, "comma list of named shapes (default: all, unless --dims)");
  tune_->add_option("--dims", tune_dims_, "another geometry, E,TOPK,H,I or NAME=E,TOPK,H,I; repeatable")
      ->check(apply_dims_refusal)
      ->allow_extra_args(false);
  tune_->add_option("--m", tune_ms_, "comma list of token counts (positive, each once)")
      ->check(distinct_list(token_count_refusal));
  tune_->add_option("--seconds", tune_seconds_, "timing budget of one (shape, scheme, M)")->check(CLI::Range(0.01, 60.0));
  tune_->add_option("--out", tune_out_, "write the table to this file (default: standard output)");
  auto* tune_arch = tune_->add_option(
      "--compile-only", tune_arch_,
      "compile every candidate kernel set for this arch (e.g. sm_90a) into the JIT cache and stop; needs no GPU");
  tune_->add_flag("--ptxas-report", tune_ptxas_report_,
                  "with --compile-only: print each kernel's registers, stack frame and spills as ptxas reports them "
                  "(sets already in the JIT cache have no report: use an empty MOEQ_CACHE_DIR)")
      ->needs(tune_arch);

  load_ = bench_->add_subcommand(
      "load", "checkpoint -> device 0 through pinned staging chunks, reader threads and async copies: the raw files "
              "and the strict load through the plugins, against pinned and pageable H2D measured in the same run; "
              "every device byte is compared with the host before figures are printed");
  load_->add_option("dir", dir_, "checkpoint directory")->required();
  opt_.add_placement(load_);
  load_->add_option("--plugin-dir", opt_.plugin_dir, "directory of plugin .so files")->check(CLI::ExistingDirectory);
  load_->add_flag("--json", opt_.json, "print the figures as one JSON object");
  load_->add_option("--threads", threads_, "reader threads, one stream each (default: min(12, cores))")
      ->check(CLI::Range(1u, 256u));
  load_->add_option("--repeat", repeat_, "timed passes of each upload; the median is reported")
      ->check(CLI::Range(1, 1000));
  load_->add_option("--layer-threads", layer_threads_,
                    "threads loading layers at once in the strict loads (default: the loader's, min(8, cores))")
      ->check(CLI::Range(1u, 256u));
  load_->add_option("--chunk-mib", chunk_mib_, "pinned staging chunk size in MiB")->check(CLI::Range(1, 1024));
  load_->add_option("--chunks", chunks_, "pinned staging chunks (default: max(8, 2 x threads))")
      ->check(CLI::Range(1u, 4096u));
  load_->add_flag("--cold", cold_,
                  "then drop the files from the page cache, measure the disk's raw read (O_DIRECT) and load onto "
                  "cuda:0 from the disk, reporting the bytes read");
  auto* synthesize =
      load_->add_option("--synthesize", synthesize_,
                        "first write DIR, unless it exists, as a random checkpoint of this geometry: Qwen3-30B-A3B, "
                        "Mixtral-8x7B, DeepSeek-V3, Granite-3B-A800M (Qwen3-MoE names, one shard per layer)")
          ->check(one_of({"Qwen3-30B-A3B", "Mixtral-8x7B", "DeepSeek-V3", "Granite-3B-A800M"}, "shape"));
  // NOTE: each of these needs --synthesize, so that one given without it is refused, not ignored.
  load_->add_option("--scheme", synth_scheme_, "--synthesize: fp8-channel, fp8-block, int8 (compressed-tensors) or bf16")
      ->check(one_of({"fp8-channel", "fp8-block", "int8", "bf16"}, "scheme"))
      ->needs(synthesize);
  load_->add_option("--layers", layers_, "--synthesize: MoE layers")->check(CLI::Range(1, 1000))->needs(synthesize);
  load_->add_option("--dims", dims_, "--synthesize: E,H,I overriding the shape's experts, hidden and intermediate")
      ->check(dims_refusal)
      ->needs(synthesize);
  load_->add_option("--seed", seed_, "--synthesize: random seed")->needs(synthesize);
  load_->add_flag("--write-only", write_only_, "--synthesize: write the checkpoint and stop")->needs(synthesize);

  jit_ = bench_->add_subcommand(
      "jit", "per scheme, the kernel sets one model needs compiled into a fresh cache directory (cold) and read back "
             "by a new JIT service (warm, must not run NVRTC); loads the CUBINs when a device is present");
  auto* jit_scheme = jit_->add_option(
      "--scheme", jit_schemes_,
      "comma list of bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16, each once (default: all "
      "but fp8-tensor-static)");
  auto* jit_shape = jit_->add_option("--shape", jit_shape_, "Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3 or Granite-3B-A800M");
  auto* jit_arch = jit_->add_option(
      "--arch", jit_arch_,
      "compile for this arch instead of device 0's (no module loading): sm_XY, sm_XYa or sm_XYf, 8.0 or newer, e.g. "
      "sm_90a");
  jit_->add_option("--max-tokens", jit_max_tokens_, "largest M bucket planned")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  jit_->add_flag("--keep", jit_keep_, "keep the temporary cache directories");
  jit_->add_flag("--json", opt_.json, "print the figures as one JSON object");

#if MOEQ_HAVE_GPU_BENCH
  const Refusal scheme = one_of(bench_scheme_names(), "scheme"), shape = one_of(bench_shape_names(), "shape");
  apply_scheme->check(distinct_list(scheme));
  apply_shape->check(distinct_list(shape));
  jit_scheme->check(distinct_list(scheme));
  jit_shape->check(shape);
  jit_arch->check(gpu_harness::arch_refusal);
  tune_scheme->check(distinct_list(scheme));
  tune_shape->check(distinct_list(shape));
  tune_arch->check(gpu_harness::arch_refusal);
#else
  (void)apply_scheme, (void)apply_shape, (void)jit_scheme, (void)jit_shape, (void)jit_arch;
  (void)tune_scheme, (void)tune_shape, (void)tune_arch;
#endif
}

bool BenchCommand::parsed() const { return bench_->parsed(); }

int BenchCommand::run() const {
  if (load_->parsed()) return run_load();
  if (jit_->parsed()) return run_jit();
  if (tune_->parsed()) return run_tune();
  return run_apply();
}

#if MOEQ_HAVE_GPU_BENCH
namespace {

// The cases of `bench apply` and `bench tune` (every value was checked while parsing).
gpu_harness::BenchOptions case_options(const std::string& schemes, const std::string& shapes,
                                       const std::vector<std::string>& dims, const std::string& ms) {
  gpu_harness::BenchOptions o;
  o.schemes = split_list(schemes);
  o.shapes = split_list(shapes);
  for (const std::string& v : dims) {
    std::string why;
    const gpu_harness::ShapeSpec d = *gpu_harness::parse_geometry(v, why);
    o.extra_shapes.push_back(d);
  }
  o.ms = *positive_integers(ms);
  return o;
}

}  // namespace
#endif

int BenchCommand::run_apply() const {
#if MOEQ_HAVE_GPU_BENCH
  if (const std::string why = gpu_harness::Driver::unavailable_reason(); !why.empty()) {
    std::cerr << "moeq bench: " << why << "\n";
    return 1;
  }
  gpu_harness::BenchOptions o = case_options(schemes_, shapes_, apply_dims_, ms_);
  o.check = !no_check_;
  o.stage_graphs = stage_graphs_;
  o.seconds_per_case = seconds_;
  o.markdown = markdown_;
  o.json = opt_.json;
  return gpu_harness::run_bench(o, std::cout);
#else
  std::cerr << "moeq bench: " << kNoToolkit << "\n";
  return 1;
#endif
}

int BenchCommand::run_tune() const {
#if MOEQ_HAVE_GPU_BENCH
  gpu_harness::BenchOptions o = case_options(tune_schemes_, tune_shapes_, tune_dims_, tune_ms_);
  o.seconds_per_case = tune_seconds_;
  o.ptxas_report = tune_ptxas_report_;
  if (!tune_arch_.empty()) return gpu_harness::compile_tune_candidates(o, tune_arch_, std::cout);
  if (const std::string why = gpu_harness::Driver::unavailable_reason(); !why.empty()) {
    std::cerr << "moeq bench tune: " << why << "\n";
    return 1;
  }
  return gpu_harness::run_tune(o, tune_out_, std::cout);
#else
  std::cerr << "moeq bench tune: " << kNoToolkit << "\n";
  return 1;
#endif
}

int BenchCommand::run_load() const {
  namespace fs = std::filesystem;
  if (!synthesize_.empty()) {
    auto spec = writer::synthetic_shape(synthesize_);  // --synthesize, --scheme and --dims are checked while parsing
    if (!spec) fail(MOEQ_STATUS_CODE_INTERNAL, "bench load --synthesize: the writer has no shape '" + synthesize_ + "'");
    if (!dims_.empty()) {
      const std::vector<int64_t> d = *positive_integers(dims_);
      spec->num_experts = d[0];
      spec->hidden = d[1];
      spec->intermediate = d[2];
      spec->top_k = static_cast<int>(std::min<int64_t>(spec->top_k, spec->num_experts));
    }
    spec->num_layers = layers_;
    spec->weights = *writer::synthetic_scheme(synth_scheme_);
    spec->seed = seed_;
    if (fs::exists(dir_)) {
      std::cerr << "moeq bench load: " << dir_ << " exists; not synthesizing\n";
    } else {
      const writer::SyntheticResult r = writer::write_synthetic_checkpoint(dir_, *spec);
      std::cerr << "moeq bench load: wrote " << dir_ << ": " << synthesize_ << " (E=" << spec->num_experts
                << ", H=" << spec->hidden << ", I=" << spec->intermediate << ", top_k=" << spec->top_k << ") "
                << synth_scheme_ << ", " << spec->num_layers << " layers, " << r.files << " files, " << r.tensors
                << " tensors, " << r.bytes / (1 << 20) << " MiB in " << r.seconds << " s\n";
    }
    if (write_only_) return 0;
  }
  if (!cuda::available()) {
    std::cerr << "moeq bench load: " << cuda::unavailable_reason() << "\n";
    return 1;
  }
#if MOEQ_HAVE_GPU_BENCH
  Session session(opt_);
  gpu_harness::LoadBenchOptions o;
  o.dir = dir_;
  o.load = opt_.load_options();
  o.load.threads = layer_threads_;
  o.threads = threads_;
  o.repeat = repeat_;
  o.chunk_bytes = static_cast<std::size_t>(chunk_mib_) << 20;
  o.chunks = chunks_;
  o.json = opt_.json;
  o.cold = cold_;
  return gpu_harness::run_load_bench(o, session.registry(), std::cout);
#else
  std::cerr << "moeq bench load: " << kNoToolkit << "\n";
  return 1;
#endif
}

int BenchCommand::run_jit() const {
#if MOEQ_HAVE_GPU_BENCH
  gpu_harness::JitBenchOptions o;
  o.schemes = split_list(jit_schemes_);
  o.shape = jit_shape_;
  o.arch = jit_arch_;
  o.max_tokens = jit_max_tokens_;
  o.json = opt_.json;
  o.keep = jit_keep_;
  return gpu_harness::run_jit_bench(o, std::cout);
#else
  std::cerr << "moeq bench jit: " << kNoToolkit << "\n";
  return 1;
#endif
}

}  // namespace moeq::cli
