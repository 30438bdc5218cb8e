// One fuzz_strict_load input, end to end: shared by the fuzz target and the regression test
// ("fuzz regressions: ..."), so that a committed crash input runs the same code in both.
//
// Input: two option bytes, then the files, cut at each "\n#moeq-part#\n" into config.json,
// model.safetensors and hf_quant_config.json (an empty or absent part: no such file).
//   byte 0: bit 0 strict off, bit 1 collect_errors, bit 2 TP 2 (bit 3 its rank), bit 4 EP 2
//           (bit 5 its rank)
//   byte 1: bits 0-2 online scheme (1..4: int8, fp8-tensor, fp8-channel, fp8-block; else none),
//           bits 3-4 tokens for apply - 1; the whole byte seeds the routing and activations
// The files go to `dir`, then Checkpoint::open and load_model on CPU with small reader limits,
// then apply, dequantized and the router of up to two loaded layers. Success or moeq::Error
// are the only acceptable outcomes; a broken invariant aborts (FUZZ_CHECK).
#pragma once
#include "fuzz_check.hpp"
#include "fuzz_work_dir.hpp"
#include "../random_routing.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/loader.hpp>
#include <moeq/model_config.hpp>
#include <moeq/registry.hpp>

#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::fuzz {

inline constexpr const char* kStrictLoadFiles[] = {"config.json", "model.safetensors", "hf_quant_config.json"};

inline LoadOptions strict_load_options(uint8_t b0, uint8_t b1) {
  LoadOptions o;
  o.strict = (b0 & 1) == 0;
  o.collect_errors = (b0 & 2) != 0;
  o.placement.tp_size = (b0 & 4) ? 2 : 1;
  o.placement.tp_rank = (b0 & 4) && (b0 & 8) ? 1 : 0;
  o.placement.ep_size = (b0 & 16) ? 2 : 1;
  o.placement.ep_rank = (b0 & 16) && (b0 & 32) ? 1 : 0;
  const unsigned scheme = b1 & 7;
  if (scheme >= 1 && scheme <= online_schemes().size()) o.online_scheme = online_schemes()[scheme - 1];
  o.device = {kDLCPU, 0};
  o.threads = 1;  // reproducible; the threaded load has its own TSan tests
  return o;
}

// Runs the CPU paths of a loaded layer: apply on a few tokens with seeded random routing (k
// distinct ids per token, any expert, local or not), dequantized weights, the router.
inline void exercise_layer(const LoadedModel& m, size_t li, uint8_t b1) {
  const LoadedLayer& l = *m.layers[li];
  const int64_t E = l.geometry.num_experts, H = l.geometry.hidden_size, k = l.geometry.top_k;
  FUZZ_CHECK(k >= 1 && k <= E);
  const int64_t tokens = ((b1 >> 3) & 3) + 1;
  std::mt19937 rng(b1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * H));
  for (float& v : x) v = uni(rng);
  const ref::Routing r = test::random_routing(tokens, E, k, b1);
  try {
    const std::vector<float> out = m.apply(li, x, tokens, r);
    FUZZ_CHECK(out.size() == x.size());
  } catch (const Error&) {
  }
  try {
    ref::MoeOptions act;
    const ref::ExpertWeights w = m.dequantized(li, &act);
    FUZZ_CHECK(w.num_experts == l.geometry.num_local_experts && w.hidden == H);
    FUZZ_CHECK(w.w13.size() == static_cast<size_t>(w.num_experts * 2 * w.intermediate * H));
  } catch (const Error&) {
  }
  try {
    m.router_weight(li);
  } catch (const Error&) {
  }
  try {
    m.routing(li);
  } catch (const Error&) {
  }
}

// Returns the outcome in words ("loaded ...", "skipped ...", or the moeq::Error's message, which
// is caught here); anything else escapes.
inline std::string run_strict_load(std::string_view input, const Registry& registry, const std::filesystem::path& dir) {
  if (input.size() < 2) return "skipped: no option bytes";
  const auto b0 = static_cast<uint8_t>(input[0]), b1 = static_cast<uint8_t>(input[1]);
  write_parts(input.substr(2), dir, kStrictLoadFiles);
  const LoadOptions options = strict_load_options(b0, b1);
  ReaderLimits limits;  // small caps, so that the fuzzer can reach them
  limits.max_header_bytes = 64 << 10;
  limits.max_tensors_per_file = 64;
  limits.max_tensors = 64;
  limits.max_files = 1;
  limits.max_json_file_bytes = 64 << 10;
  const int64_t statuses_before = host::live_statuses(), param_bytes_before = host::live_param_bytes();
  std::string outcome;
  try {
    const Checkpoint ck = Checkpoint::open(dir, limits);
    // No skip for a large config: the loader refuses a geometry that needs more than 16 times the
    // weight elements the tensors hold before it allocates, and an input holds at most 128 KiB.
    const LoadedModel m = load_model(ck, registry, options);
    outcome = "loaded " + std::to_string(m.layers.size()) + " layers, " + std::to_string(m.failed.size()) + " failed";
    FUZZ_CHECK(!m.layers.empty() || !m.failed.empty());
    FUZZ_CHECK(options.collect_errors || m.failed.empty());
    for (const auto& l : m.layers) {
      FUZZ_CHECK(l->report.ok() && l->method != nullptr && l->plugin != nullptr);
      FUZZ_CHECK(!options.strict || l->report.waived.empty());
    }
    for (size_t li = 0; li < m.layers.size() && li < 2; ++li) exercise_layer(m, li, b1);
  } catch (const Error& e) {
    outcome = e.what();
  }
  // Whatever happened, every status and every parameter byte was released.
  FUZZ_CHECK(host::live_statuses() == statuses_before);
  FUZZ_CHECK(host::live_param_bytes() == param_bytes_before);
  return outcome;
}

}  // namespace moeq::fuzz
