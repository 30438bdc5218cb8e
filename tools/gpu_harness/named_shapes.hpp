// The named MoE geometries of `moeq bench` (no GPU dependency, so the CLI can name them in any
// build).
#pragma once
#include <moeq/strings.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

struct ShapeSpec {
  std::string name;
  int64_t experts = 0, top_k = 0, hidden = 0, inter = 0;
};

// Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M.
inline const std::vector<ShapeSpec>& named_shapes() {
  static const std::vector<ShapeSpec> s = {
      {"Mixtral-8x7B", 8, 2, 4096, 14336},
      {"Qwen3-30B-A3B", 128, 8, 2048, 768},
      {"DeepSeek-V3", 256, 8, 7168, 2048},
      {"Granite-3B-A800M", 40, 8, 1536, 512},
  };
  return s;
}

// One geometry given on a command line (`moeq bench apply --dims`, `moeq_gpu_harness --dims`):
// "E,TOPK,H,I" (named E<E>-k<TOPK>-H<H>-I<I>) or "NAME=E,TOPK,H,I". nullopt with `why` set when
// the value is malformed or names a geometry the kernels cannot run (MoePlan's limits).
inline std::optional<ShapeSpec> parse_geometry(const std::string& v, std::string& why) {
  ShapeSpec d;
  std::string numbers = v;
  if (const size_t eq = v.find('='); eq != std::string::npos) {
    d.name = v.substr(0, eq);
    numbers = v.substr(eq + 1);
    const auto name_char = [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
    };
    if (d.name.empty() || !std::all_of(d.name.begin(), d.name.end(), name_char)) {
      why = "'" + v + "': the name before '=' must be letters, digits, '-', '_' or '.'";
      return std::nullopt;
    }
    const auto& named = named_shapes();
    if (std::any_of(named.begin(), named.end(), [&](const ShapeSpec& s) { return s.name == d.name; })) {
      why = "'" + v + "': '" + d.name + "' is a named shape (--shape); give this geometry another name";
      return std::nullopt;
    }
  }
  const std::optional<std::vector<int64_t>> parsed = positive_integers(numbers);
  const std::vector<int64_t> n = parsed ? *parsed : std::vector<int64_t>{};
  if (n.size() != 4) {
    why = "wants E,TOPK,H,I or NAME=E,TOPK,H,I (four positive integers), found '" + v + "'";
    return std::nullopt;
  }
  d.experts = n[0];
  d.top_k = n[1];
  d.hidden = n[2];
  d.inter = n[3];
  // What the fused-MoE kernels take (MoePlan): 1..1024 experts, top_k 1..32 of them, hidden and
  // intermediate sizes positive multiples of 16.
  const std::string in = " in '" + v + "'";
  if (d.experts > 1024) why = "E=" + std::to_string(d.experts) + in + ": the kernels take at most 1024 experts";
  else if (d.top_k > 32) why = "TOPK=" + std::to_string(d.top_k) + in + ": the kernels take top_k of at most 32";
  else if (d.top_k > d.experts)
    why = "TOPK=" + std::to_string(d.top_k) + in + ": more than the " + std::to_string(d.experts) + " experts";
  else if (d.hidden % 16 != 0) why = "H=" + std::to_string(d.hidden) + in + ": the hidden size must be a multiple of 16";
  else if (d.inter % 16 != 0)
    why = "I=" + std::to_string(d.inter) + in + ": the intermediate size must be a multiple of 16";
  if (!why.empty()) return std::nullopt;
  if (d.name.empty())
    d.name = "E" + std::to_string(d.experts) + "-k" + std::to_string(d.top_k) + "-H" + std::to_string(d.hidden) + "-I" +
             std::to_string(d.inter);
  return d;
}

}  // namespace moeq::gpu_harness
