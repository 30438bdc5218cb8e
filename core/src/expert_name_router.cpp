#include <moeq/expert_name_router.hpp>

#include <charconv>
#include <optional>

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

// A checkpoint holds tens of thousands of tensor names and the loader routes every one before a
// layer starts, so the grammar below is matched by hand (std::regex took 2 to 3 µs a name). It
// is the grammar of these regular expressions, with their choices where several splits match:
//   block    ^((?:.*\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe|ffn|feed_forward))
//   family   block \.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(\w+)$   and the others below
//   router   block \.(?:gate|router\.layer|router)\.weight$, block \.gate\.(?:e_score_correction_bias|bias)$
//   unknown  block \.(?:experts\.|input_linear\.|output_linear\.)
// `.*` is greedy, so the last "layers." that lets the rest match is the block's; `.` takes no
// line terminator; `\w` is [A-Za-z0-9_]. tests/test_expert_name_router.cpp holds the regular
// expressions themselves and compares the two on generated and mutated names.

// How a leaf name maps to a projection.
struct LeafMap {
  std::string_view leaf;
  Projection projection;
};

enum class Tail {
  kPerExpert,   // .experts.<e>.<leaf>.<suffix>
  kModule,      // .<leaf>.<suffix>
  kFusedParam,  // .experts.<leaf>[_<suffix>]
};

struct Family {
  const char* name;
  const char* example;
  Tail tail;
  std::vector<LeafMap> leaves;
  std::vector<std::string_view> suffixes;  // kFusedParam: the allowed suffixes; else any \w+
  std::vector<std::pair<const char*, const char*>> suffix_renames;
};

const std::vector<Family>& families() {
  static const std::vector<Family> table = [] {
    std::vector<Family> t;
    t.push_back({"per_expert_proj", "model.layers.0.mlp.experts.3.gate_proj.weight_scale", Tail::kPerExpert,
                 {{"gate_proj", Projection::kW1}, {"up_proj", Projection::kW3}, {"down_proj", Projection::kW2}},
                 {}, {}});
    // DeepSeek-V4 writes `.scale`; it is the same multiplier as weight_scale_inv.
    t.push_back({"per_expert_w", "model.layers.0.block_sparse_moe.experts.3.w1.weight", Tail::kPerExpert,
                 {{"w1", Projection::kW1}, {"w3", Projection::kW3}, {"w2", Projection::kW2}},
                 {}, {{"scale", "weight_scale_inv"}}});
    t.push_back({"per_expert_fused_gate_up", "model.layers.0.mlp.experts.3.gate_up_proj.weight", Tail::kPerExpert,
                 {{"gate_up_proj", Projection::kW13}, {"w13", Projection::kW13}}, {}, {}});
    t.push_back({"granite_fused", "model.layers.0.block_sparse_moe.input_linear.weight_scale", Tail::kModule,
                 {{"input_linear", Projection::kW13}, {"output_linear", Projection::kW2}}, {}, {}});
    // transformers-v5 fused parameters (no ".weight"), and ModelOpt's `<param>_<suffix>` siblings.
    t.push_back({"v5_fused", "model.layers.0.mlp.experts.gate_up_proj", Tail::kFusedParam,
                 {{"gate_up_proj", Projection::kW13}, {"down_proj", Projection::kW2}},
                 {"weight_scale_inv", "weight_scale", "input_scale"}, {}});
    return t;
  }();
  return table;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool all_word(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_word(c)) return false;
  return true;
}
// Consumes a run of one or more digits from the front of `s`.
bool take_digits(std::string_view& s, std::string_view& digits) {
  std::size_t n = 0;
  while (n < s.size() && is_digit(s[n])) ++n;
  if (n == 0) return false;
  digits = s.substr(0, n);
  s.remove_prefix(n);
  return true;
}
bool take(std::string_view& s, std::string_view what) {
  if (!s.starts_with(what)) return false;
  s.remove_prefix(what.size());
  return true;
}

// One split of a name: the MoE block (group 1), its layer digits (group 2), and what follows.
struct Block {
  std::string_view prefix, layer, tail;
};

// Calls `fn` on each split of `name` as block + tail, the last "layers." first, until it
// returns true; returns whether one did.
template <class Fn>
bool for_each_block(std::string_view name, Fn&& fn) {
  static constexpr std::string_view kLayers = "layers.";
  static constexpr std::string_view kBlocks[] = {"mlp", "block_sparse_moe", "ffn", "feed_forward"};
  const std::size_t newline = name.find_first_of("\n\r");  // `.*` stops at a line terminator
  for (std::size_t p = name.rfind(kLayers); p != std::string_view::npos;
       p = p == 0 ? std::string_view::npos : name.rfind(kLayers, p - 1)) {
    if ((p != 0 && name[p - 1] != '.') || (newline != std::string_view::npos && newline < p)) continue;
    std::string_view rest = name.substr(p + kLayers.size()), layer;
    if (!take_digits(rest, layer) || !take(rest, ".")) continue;
    for (std::string_view b : kBlocks)
      if (rest.starts_with(b)) {
        const std::size_t end = name.size() - rest.size() + b.size();
        if (fn(Block{name.substr(0, end), layer, name.substr(end)})) return true;
      }
  }
  return false;
}

// The tail's parts under a family: leaf, expert digits (empty when fused), suffix (empty when
// the name has none); false when the tail is not the family's.
struct TailParts {
  const LeafMap* leaf = nullptr;
  std::string_view expert, suffix;
};
bool match_tail(const Family& f, std::string_view t, TailParts& out) {
  auto leaf_then = [&](std::string_view& s, char sep, bool end_ok) -> bool {
    for (const LeafMap& l : f.leaves) {
      if (!s.starts_with(l.leaf)) continue;
      const std::string_view after = s.substr(l.leaf.size());
      if ((end_ok && after.empty()) || (!after.empty() && after[0] == sep)) {
        out.leaf = &l;
        s = after.empty() ? after : after.substr(1);
        return true;
      }
    }
    return false;
  };
  switch (f.tail) {
    case Tail::kPerExpert:
      if (!take(t, ".experts.") || !take_digits(t, out.expert) || !take(t, ".") || !leaf_then(t, '.', false)) return false;
      out.suffix = t;
      return all_word(t);
    case Tail::kModule:
      if (!take(t, ".") || !leaf_then(t, '.', false)) return false;
      out.suffix = t;
      return all_word(t);
    case Tail::kFusedParam:
      if (!take(t, ".experts.") || !leaf_then(t, '_', true)) return false;
      if (t.empty()) return true;  // no suffix: the parameter itself
      for (std::string_view s : f.suffixes)
        if (t == s) {
          out.suffix = t;
          return true;
        }
      return false;
  }
  return false;
}

// A decimal index from the name; nullopt when it does not fit in int64 (a hostile name, found
// by fuzzing: std::stoll threw std::out_of_range out of the loader).
std::optional<int64_t> index_of(std::string_view digits) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return v;
}

}  // namespace

RoutedName route_tensor_name(std::string_view name) {
  RoutedName r;
  for (const Family& f : families()) {
    TailParts parts;
    Block block;
    if (!for_each_block(name, [&](const Block& b) {
          parts = {};
          if (!match_tail(f, b.tail, parts)) return false;
          block = b;
          return true;
        }))
      continue;
    const std::optional<int64_t> layer = index_of(block.layer);
    const std::optional<int64_t> expert = f.tail == Tail::kPerExpert ? index_of(parts.expert) : int64_t{-1};
    if (!layer || !expert) break;  // an index past int64: unknown under an experts module
    r.role = TensorRole::kExpert;
    r.family = f.name;
    r.layer_prefix = std::string(block.prefix);
    r.layer = *layer;
    r.projection = parts.leaf->projection;
    r.expert = *expert;
    r.suffix = parts.suffix.empty() ? "weight" : std::string(parts.suffix);
    for (const auto& [from, to] : f.suffix_renames)
      if (r.suffix == from) r.suffix = to;
    r.experts_module = f.tail == Tail::kModule ? r.layer_prefix + "." + std::string(parts.leaf->leaf)
                                               : r.layer_prefix + ".experts";
    return r;
  }
  Block block;
  auto exact = [&](std::initializer_list<std::string_view> tails) {
    return for_each_block(name, [&](const Block& b) {
      for (std::string_view t : tails)
        if (b.tail == t) {
          block = b;
          return true;
        }
      return false;
    });
  };
  if (exact({".gate.weight", ".router.layer.weight", ".router.weight"})) {
    r.role = TensorRole::kRouterWeight;
  } else if (exact({".gate.e_score_correction_bias", ".gate.bias"})) {
    r.role = TensorRole::kRouterBias;
  } else if (for_each_block(name, [&](const Block& b) {
               for (std::string_view t : {".experts.", ".input_linear.", ".output_linear."})
                 if (b.tail.starts_with(t)) {
                   block = b;
                   return true;
                 }
               return false;
             })) {
    r.role = TensorRole::kUnknownExpert;
  } else {
    return r;
  }
  r.family = "router";
  if (r.role == TensorRole::kUnknownExpert) r.family = "unknown";
  r.layer_prefix = std::string(block.prefix);
  if (const std::optional<int64_t> layer = index_of(block.layer)) {
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
