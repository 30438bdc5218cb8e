#include <moeq/expert_name_router.hpp>

#include <charconv>
#include <optional>
#include <regex>

namespace moeq {

const char* projection_name(Projection p) {
  switch (p) {
    case Projection::kW1: return "w1";
    case Projection::kW2: return "w2";
    case Projection::kW3: return "w3";
    case Projection::kW13: return "w13";
  }
  return "?";
}

namespace {

// How a leaf name maps to a projection.
struct LeafMap {
  const char* leaf;
  Projection projection;
};

// One naming family. Capture groups: 1 = MoE block prefix, 2 = layer index,
// then `expert_group` (0 = fused), `leaf_group`, `suffix_group` (0 = fixed suffix "weight").
struct Family {
  const char* name;
  const char* example;
  std::regex pattern;
  int expert_group;
  int leaf_group;
  int suffix_group;
  std::vector<LeafMap> leaves;
  std::vector<std::pair<const char*, const char*>> suffix_renames;
};

const char* kBlock = R"(^((?:.*\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe|ffn|feed_forward)))";

std::regex rx(const std::string& tail) { return std::regex(std::string(kBlock) + tail, std::regex::optimize); }

const std::vector<Family>& families() {
  static const std::vector<Family> table = [] {
    std::vector<Family> t;
    t.push_back({"per_expert_proj", "model.layers.0.mlp.experts.3.gate_proj.weight_scale",
                 rx(R"(\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(\w+)$)"), 3, 4, 5,
                 {{"gate_proj", Projection::kW1}, {"up_proj", Projection::kW3}, {"down_proj", Projection::kW2}},
                 {}});
    // DeepSeek-V4 writes `.scale`; it is the same multiplier as weight_scale_inv.
    t.push_back({"per_expert_w", "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                 rx(R"(\.experts\.(\d+)\.(w1|w2|w3)\.(\w+)$)"), 3, 4, 5,
                 {{"w1", Projection::kW1}, {"w3", Projection::kW3}, {"w2", Projection::kW2}},
                 {{"scale", "weight_scale_inv"}}});
    t.push_back({"per_expert_fused_gate_up", "model.layers.0.mlp.experts.3.gate_up_proj.weight",
                 rx(R"(\.experts\.(\d+)\.(gate_up_proj|w13)\.(\w+)$)"), 3, 4, 5,
                 {{"gate_up_proj", Projection::kW13}, {"w13", Projection::kW13}}, {}});
    t.push_back({"granite_fused", "model.layers.0.block_sparse_moe.input_linear.weight_scale",
                 rx(R"(\.(input_linear|output_linear)\.(\w+)$)"), 0, 3, 4,
                 {{"input_linear", Projection::kW13}, {"output_linear", Projection::kW2}}, {}});
    // transformers-v5 fused parameters (no ".weight"), and ModelOpt's `<param>_<suffix>` siblings.
    t.push_back({"v5_fused", "model.layers.0.mlp.experts.gate_up_proj",
                 rx(R"(\.experts\.(gate_up_proj|down_proj)(?:_(weight_scale_inv|weight_scale|input_scale))?$)"),
                 0, 3, 4, {{"gate_up_proj", Projection::kW13}, {"down_proj", Projection::kW2}}, {}});
    return t;
  }();
  return table;
}

const std::regex& router_weight_rx() {
  static const std::regex r(std::string(kBlock) + R"(\.(?:gate|router\.layer|router)\.weight$)",
                            std::regex::optimize);
  return r;
}
const std::regex& router_bias_rx() {
  static const std::regex r(
      std::string(kBlock) + R"(\.gate\.(?:e_score_correction_bias|bias)$)", std::regex::optimize);
  return r;
}
const std::regex& experts_module_rx() {
  static const std::regex r(std::string(kBlock) + R"(\.(?:experts\.|input_linear\.|output_linear\.))",
                            std::regex::optimize);
  return r;
}

// A decimal index from the name; nullopt when it does not fit in int64 (a hostile name, found
// by fuzzing: std::stoll threw std::out_of_range out of the loader).
std::optional<int64_t> index_of(const std::ssub_match& digits) {
  int64_t v = 0;
  const char* first = &*digits.first;
  const char* last = first + digits.length();
  auto [end, ec] = std::from_chars(first, last, v);
  if (ec != std::errc() || end != last) return std::nullopt;
  return v;
}

}  // namespace

RoutedName route_tensor_name(std::string_view name_view) {
  const std::string name(name_view);
  std::smatch m;
  RoutedName r;
  for (const Family& f : families()) {
    if (!std::regex_match(name, m, f.pattern)) continue;
    const std::string leaf = m[f.leaf_group].str();
    const LeafMap* hit = nullptr;
    for (const LeafMap& l : f.leaves)
      if (leaf == l.leaf) hit = &l;
    if (hit == nullptr) continue;
    const std::optional<int64_t> layer = index_of(m[2]);
    const std::optional<int64_t> expert = f.expert_group ? index_of(m[f.expert_group]) : int64_t{-1};
    if (!layer || !expert) break;  // an index past int64: unknown under an experts module
    r.role = TensorRole::kExpert;
    r.family = f.name;
    r.layer_prefix = m[1].str();
    r.layer = *layer;
    r.projection = hit->projection;
    r.expert = *expert;
    r.suffix = (f.suffix_group && m[f.suffix_group].matched) ? m[f.suffix_group].str() : "weight";
    for (const auto& [from, to] : f.suffix_renames)
      if (r.suffix == from) r.suffix = to;
    r.experts_module = f.expert_group ? r.layer_prefix + ".experts" : r.layer_prefix + "." + leaf;
    if (f.expert_group == 0 && std::string(f.name) == "v5_fused")
      r.experts_module = r.layer_prefix + ".experts";
    return r;
  }
  if (std::regex_search(name, m, router_weight_rx())) {
    r.role = TensorRole::kRouterWeight;
  } else if (std::regex_search(name, m, router_bias_rx())) {
    r.role = TensorRole::kRouterBias;
  } else if (std::regex_search(name, m, experts_module_rx())) {
    r.role = TensorRole::kUnknownExpert;
  } else {
    return r;
  }
  r.family = "router";
  if (r.role == TensorRole::kUnknownExpert) r.family = "unknown";
  r.layer_prefix = m[1].str();
  if (const std::optional<int64_t> layer = index_of(m[2])) {
    r.layer = *layer;
  } else {  // a router of a layer that cannot exist is no router: report it as unknown
    r.role = TensorRole::kUnknownExpert;
    r.family = "unknown";
    r.layer = -1;
  }
  return r;
}

std::string not_moe_note(std::string_view name) {
  for (std::string_view s : {".k_scale", ".v_scale", ".q_scale", ".prob_scale", ".kv_scale"})
    if (name.ends_with(s)) return "KV-cache scale of an attention layer: not an expert tensor, skipped";
  return "";
}

const std::vector<NamingFamily>& naming_families() {
  static const std::vector<NamingFamily> out = [] {
    std::vector<NamingFamily> v;
    for (const Family& f : families()) v.push_back({f.name, f.example});
    return v;
  }();
  return out;
}

}  // namespace moeq
