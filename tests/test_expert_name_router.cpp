// The naming-family table: every family, every suffix, routers, and what is not MoE.
#include <moeq/expert_name_router.hpp>

#include <doctest/doctest.h>

#include <charconv>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

using namespace moeq;

TEST_CASE("per-expert gate/up/down_proj route with any suffix") {
  RoutedName r = route_tensor_name("model.layers.12.mlp.experts.37.gate_proj.weight_scale");
  CHECK(r.role == TensorRole::kExpert);
  CHECK(r.family == "per_expert_proj");
  CHECK(r.layer == 12);
  CHECK(r.layer_prefix == "model.layers.12.mlp");
  CHECK(r.expert == 37);
  CHECK(r.projection == Projection::kW1);
  CHECK(r.suffix == "weight_scale");
  CHECK(r.experts_module == "model.layers.12.mlp.experts");
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.up_proj.weight").projection == Projection::kW3);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.down_proj.input_scale").projection == Projection::kW2);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.down_proj.weight_scale_inv").suffix == "weight_scale_inv");
}

TEST_CASE("Mixtral w1/w3/w2 names map gate, up and down") {
  RoutedName w1 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w1.weight");
  RoutedName w3 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w3.weight");
  RoutedName w2 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w2.weight");
  CHECK(w1.projection == Projection::kW1);
  CHECK(w3.projection == Projection::kW3);
  CHECK(w2.projection == Projection::kW2);
  CHECK(w1.family == "per_expert_w");
  CHECK(w1.expert == 5);
}

TEST_CASE("DeepSeek-V4 ffn.experts .scale is the weight_scale_inv multiplier") {
  RoutedName r = route_tensor_name("layers.4.ffn.experts.9.w2.scale");
  CHECK(r.role == TensorRole::kExpert);
  CHECK(r.layer == 4);
  CHECK(r.layer_prefix == "layers.4.ffn");
  CHECK(r.projection == Projection::kW2);
  CHECK(r.suffix == "weight_scale_inv");
}

TEST_CASE("granite fused weight_scale [E,2I,1] is routed like the fused weight") {
  RoutedName w = route_tensor_name("model.layers.2.block_sparse_moe.input_linear.weight");
  RoutedName s = route_tensor_name("model.layers.2.block_sparse_moe.input_linear.weight_scale");
  RoutedName d = route_tensor_name("model.layers.2.block_sparse_moe.output_linear.weight_scale");
  for (const RoutedName* r : {&w, &s}) {
    CHECK(r->role == TensorRole::kExpert);
    CHECK(r->family == "granite_fused");
    CHECK(r->projection == Projection::kW13);
    CHECK(r->expert == -1);
  }
  CHECK(s.suffix == "weight_scale");
  CHECK(d.projection == Projection::kW2);
  CHECK(d.suffix == "weight_scale");
}

TEST_CASE("transformers-v5 fused experts and ModelOpt sibling scales") {
  RoutedName gu = route_tensor_name("model.layers.1.mlp.experts.gate_up_proj");
  CHECK(gu.role == TensorRole::kExpert);
  CHECK(gu.projection == Projection::kW13);
  CHECK(gu.suffix == "weight");
  CHECK(gu.expert == -1);
  CHECK(gu.experts_module == "model.layers.1.mlp.experts");
  RoutedName dp = route_tensor_name("model.layers.1.mlp.experts.down_proj_weight_scale");
  CHECK(dp.projection == Projection::kW2);
  CHECK(dp.suffix == "weight_scale");
  // A name with an extra suffix after the fused parameter is not silently the weight (vLLM #57473).
  CHECK(route_tensor_name("model.layers.1.mlp.experts.gate_up_proj.weight.weight").role != TensorRole::kExpert);
}

TEST_CASE("per-expert fused gate_up_proj is split later like the all-expert one") {
  RoutedName r = route_tensor_name("model.layers.0.mlp.experts.6.gate_up_proj.weight");
  CHECK(r.projection == Projection::kW13);
  CHECK(r.expert == 6);
}

TEST_CASE("routers are found for every family") {
  CHECK(route_tensor_name("model.layers.0.mlp.gate.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.block_sparse_moe.gate.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.block_sparse_moe.router.layer.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.mlp.gate.e_score_correction_bias").role == TensorRole::kRouterBias);
  CHECK(route_tensor_name("layers.0.ffn.gate.bias").role == TensorRole::kRouterBias);
}

TEST_CASE("non-expert tensors are not MoE, not errors") {
  for (const char* n : {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.k_proj.k_scale", "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.0.mlp.shared_experts.gate_proj.weight",
                        "model.layers.0.mlp.shared_expert_gate.weight", "model.layers.0.input_layernorm.weight"}) {
    CAPTURE(n);
    CHECK(route_tensor_name(n).role == TensorRole::kNotMoe);
  }
}

TEST_CASE("a tensor under an experts module that matches no family is unknown") {
  RoutedName r = route_tensor_name("model.layers.0.mlp.experts.foo.weight");
  CHECK(r.role == TensorRole::kUnknownExpert);
  CHECK(r.layer == 0);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.3.gate_proj").role == TensorRole::kUnknownExpert);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.3.left_proj.weight").role == TensorRole::kUnknownExpert);
}

TEST_CASE("experts 1 and 10 are different experts") {
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.gate_proj.weight").expert == 1);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.10.gate_proj.weight").expert == 10);
}

// ---------------------------------------------------------------- against the regular expressions
// The router matches its grammar by hand; these are the regular expressions that define it (the
// router's own implementation before it was hand-written), and route_tensor_name must give what
// they give on every name: the families' examples, generated names over every block, family,
// leaf and suffix, nested and prefixed blocks, and random mutations of them (dropped, inserted
// and swapped characters, line breaks, indices past int64).
namespace {

struct RxFamily {
  const char* name;
  std::regex pattern;
  int expert_group, leaf_group, suffix_group;
  std::vector<std::pair<std::string, Projection>> leaves;
  std::vector<std::pair<std::string, std::string>> renames;
};

const char* kRxBlock = R"(^((?:.*\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe|ffn|feed_forward)))";
std::regex rx(const std::string& tail) { return std::regex(std::string(kRxBlock) + tail); }

std::optional<int64_t> rx_index(const std::ssub_match& d) {
  int64_t v = 0;
  const char* first = &*d.first;
  auto [end, ec] = std::from_chars(first, first + d.length(), v);
  if (ec != std::errc() || end != first + d.length()) return std::nullopt;
  return v;
}

RoutedName regex_route(const std::string& name) {
  static const std::vector<RxFamily> fams = [] {
    std::vector<RxFamily> t;
    t.push_back({"per_expert_proj", rx(R"(\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(\w+)$)"), 3, 4, 5,
                 {{"gate_proj", Projection::kW1}, {"up_proj", Projection::kW3}, {"down_proj", Projection::kW2}}, {}});
    t.push_back({"per_expert_w", rx(R"(\.experts\.(\d+)\.(w1|w2|w3)\.(\w+)$)"), 3, 4, 5,
                 {{"w1", Projection::kW1}, {"w3", Projection::kW3}, {"w2", Projection::kW2}},
                 {{"scale", "weight_scale_inv"}}});
    t.push_back({"per_expert_fused_gate_up", rx(R"(\.experts\.(\d+)\.(gate_up_proj|w13)\.(\w+)$)"), 3, 4, 5,
                 {{"gate_up_proj", Projection::kW13}, {"w13", Projection::kW13}}, {}});
    t.push_back({"granite_fused", rx(R"(\.(input_linear|output_linear)\.(\w+)$)"), 0, 3, 4,
                 {{"input_linear", Projection::kW13}, {"output_linear", Projection::kW2}}, {}});
    t.push_back({"v5_fused", rx(R"(\.experts\.(gate_up_proj|down_proj)(?:_(weight_scale_inv|weight_scale|input_scale))?$)"),
                 0, 3, 4, {{"gate_up_proj", Projection::kW13}, {"down_proj", Projection::kW2}}, {}});
    return t;
  }();
  static const std::regex router_w = rx(R"(\.(?:gate|router\.layer|router)\.weight$)");
  static const std::regex router_b = rx(R"(\.gate\.(?:e_score_correction_bias|bias)$)");
  static const std::regex module = rx(R"(\.(?:experts\.|input_linear\.|output_linear\.))");
  std::smatch m;
  RoutedName r;
  for (const RxFamily& f : fams) {
    if (!std::regex_match(name, m, f.pattern)) continue;
    const std::string leaf = m[f.leaf_group].str();
    const std::pair<std::string, Projection>* hit = nullptr;
    for (const auto& l : f.leaves)
      if (leaf == l.first) hit = &l;
    REQUIRE(hit != nullptr);
    const std::optional<int64_t> layer = rx_index(m[2]);
    const std::optional<int64_t> expert = f.expert_group ? rx_index(m[f.expert_group]) : int64_t{-1};
    if (!layer || !expert) break;
    r.role = TensorRole::kExpert;
    r.family = f.name;
    r.layer_prefix = m[1].str();
    r.layer = *layer;
    r.projection = hit->second;
    r.expert = *expert;
    r.suffix = (f.suffix_group && m[f.suffix_group].matched) ? m[f.suffix_group].str() : "weight";
    for (const auto& [from, to] : f.renames)
      if (r.suffix == from) r.suffix = to;
    r.experts_module = f.expert_group || std::string(f.name) == "v5_fused" ? r.layer_prefix + ".experts"
                                                                            : r.layer_prefix + "." + leaf;
    return r;
  }
  if (std::regex_search(name, m, router_w))
    r.role = TensorRole::kRouterWeight;
  else if (std::regex_search(name, m, router_b))
    r.role = TensorRole::kRouterBias;
  else if (std::regex_search(name, m, module))
    r.role = TensorRole::kUnknownExpert;
  else
    return r;
  r.family = r.role == TensorRole::kUnknownExpert ? "unknown" : "router";
  r.layer_prefix = m[1].str();
  if (const std::optional<int64_t> layer = rx_index(m[2])) {
    r.layer = *layer;
  } else {
    r.role = TensorRole::kUnknownExpert;
    r.family = "unknown";
    r.layer = -1;
  }
  return r;
}

std::string describe(const RoutedName& r) {
  return std::to_string(static_cast<int>(r.role)) + "|" + r.family + "|" + r.layer_prefix + "|" +
         std::to_string(r.layer) + "|" + std::to_string(static_cast<int>(r.projection)) + "|" +
         std::to_string(r.expert) + "|" + r.suffix + "|" + r.experts_module;
}

}  // namespace

TEST_CASE("the hand-written router gives what the family regular expressions give, on generated and mutated names") {
  std::mt19937 rng(20261206);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  const std::vector<std::string> prefixes = {"", "model.", "language_model.model.", "x.", ".", "model.layers.1.mlp.",
                                             "a.layers.7.ffn.b.", "layers.", "model.layers.", "m\n.", "m\r."};
  const std::vector<std::string> blocks = {"mlp", "block_sparse_moe", "ffn", "feed_forward", "mlpx", "ff", "moe"};
  const std::vector<std::string> layers = {"0", "3", "47", "00", "", "9223372036854775807", "9223372036854775808", "1a"};
  const std::vector<std::string> tails = {
      ".experts.{e}.gate_proj.{s}", ".experts.{e}.up_proj.{s}", ".experts.{e}.down_proj.{s}", ".experts.{e}.w1.{s}",
      ".experts.{e}.w2.{s}", ".experts.{e}.w3.{s}", ".experts.{e}.w13.{s}", ".experts.{e}.gate_up_proj.{s}",
      ".input_linear.{s}", ".output_linear.{s}", ".experts.gate_up_proj", ".experts.down_proj",
      ".experts.gate_up_proj_weight_scale", ".experts.down_proj_weight_scale_inv", ".experts.down_proj_input_scale",
      ".experts.down_proj_bias", ".gate.weight", ".router.weight", ".router.layer.weight", ".gate.bias",
      ".gate.e_score_correction_bias", ".experts.{e}.gate_proj", ".experts.{e}.lora.{s}", ".shared_expert.gate_proj.weight",
      ".experts.{e}.gate_proj.{s}.extra", ".gate_proj.weight", ""};
  const std::vector<std::string> experts = {"0", "5", "127", "", "99999999999999999999", "3x"};
  const std::vector<std::string> suffixes = {"weight", "weight_scale", "weight_scale_inv", "input_scale", "scale",
                                             "weight_packed", "w-1", "", "qweight"};
  auto generate = [&] {
    std::string tail = pick(tails);
    for (const auto& [key, from] : {std::pair<std::string, const std::vector<std::string>*>{"{e}", &experts},
                                    {"{s}", &suffixes}})
      if (const std::size_t at = tail.find(key); at != std::string::npos) tail.replace(at, key.size(), pick(*from));
    return pick(prefixes) + "layers." + pick(layers) + "." + pick(blocks) + tail;
  };
  const std::string alphabet = "._\n\rabcdefglmnoprstuwxyz0123456789";
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < edits && !s.empty(); ++i) {
      const std::size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0: s.erase(at, 1); break;
        case 1: s.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
        default: s[at] = alphabet[rng() % alphabet.size()];
      }
    }
    return s;
  };
  std::vector<std::string> names;
  for (const NamingFamily& f : naming_families()) names.push_back(f.example);
  for (int i = 0; i < 6000; ++i) {
    const std::string n = generate();
    names.push_back(n);
    names.push_back(mutate(n));
  }
  int experts_seen = 0, routers_seen = 0, unknown_seen = 0, differ = 0;
  for (const std::string& n : names) {
    const RoutedName want = regex_route(n), got = route_tensor_name(n);
    experts_seen += want.role == TensorRole::kExpert;
    routers_seen += want.role == TensorRole::kRouterWeight || want.role == TensorRole::kRouterBias;
    unknown_seen += want.role == TensorRole::kUnknownExpert;
    if (describe(want) != describe(got) && differ++ < 10) {
      CAPTURE(n);
      CHECK(describe(got) == describe(want));
    }
  }
  CHECK(differ == 0);
  // Every kind of outcome was exercised.
  CHECK(experts_seen > 500);
  CHECK(routers_seen > 100);
  CHECK(unknown_seen > 100);
}
