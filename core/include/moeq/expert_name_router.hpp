// Turns checkpoint tensor names into expert references with a table of naming families, not
// code per model (docs/DESIGN.md §2, step 2). Every suffix is routed the same way.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moeq {

enum class Projection { kW1, kW2, kW3, kW13 };  // kW13: fused gate+up rows (gate first)
const char* projection_name(Projection p);

enum class TensorRole {
  kExpert,          // an expert tensor (per expert, or fused over all experts)
  kRouterWeight,    // router / gate weight [E, H]
  kRouterBias,      // e_score_correction_bias [E]
  kUnknownExpert,   // lives under an experts module but matches no family: strict error
  kNotMoe,          // anything else: attention, norms, embeddings, dense MLPs, shared experts
};

struct RoutedName {
  TensorRole role = TensorRole::kNotMoe;
  std::string family;        // table entry that matched, e.g. "per_expert_proj"
  std::string layer_prefix;  // "model.layers.3.mlp" — the MoE block
  int64_t layer = -1;        // decoder layer index
  Projection projection = Projection::kW1;
  int64_t expert = -1;       // -1 = fused over all experts (leading dim E)
  std::string suffix;        // "weight", "weight_scale", "weight_scale_inv", "input_scale", ...
  std::string experts_module;  // module path used for ignore lists
};

RoutedName route_tensor_name(std::string_view name);

// Why a not-MoE tensor is left alone, when there is more to say than "not MoE" (KV-cache
// scales: `self_attn.k_scale` and ModelOpt's `self_attn.k_proj.k_scale`); empty otherwise.
std::string not_moe_note(std::string_view name);

// The families, for `moeq inspect` and docs: {name, example}.
struct NamingFamily {
  std::string name;
  std::string example;
};
const std::vector<NamingFamily>& naming_families();

}  // namespace moeq
