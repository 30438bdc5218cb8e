// Reads compressed-tensors and DeepSeek/Qwen native fp8 quantization configs into an
// ExpertScheme (docs/PRODUCER_FORMATS.md §1, docs/MOE_SEMANTICS.md §2.1, §3.1).
#include "scheme.hpp"

#include <moeq/error.hpp>
#include <moeq/strings.hpp>

#include <boost/json.hpp>
#include <re2/re2.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace moeq::ct {
namespace json = boost::json;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string str_or(const json::object& o, const char* key, const std::string& fallback) {
  const json::value* v = o.if_contains(key);
  return (v && v->is_string()) ? std::string(v->as_string()) : fallback;
}

bool is_null(const json::value* v) { return v == nullptr || v->is_null(); }

std::optional<int64_t> as_int(const json::value& v) {
  if (v.is_int64()) return v.as_int64();
  if (v.is_uint64() && v.as_uint64() <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(v.as_uint64());
  // NOTE: range first: casting a double past int64 is undefined (found by fuzz_quant_config).
  if (v.is_double() && std::fabs(v.as_double()) < 9.2e18 &&
      v.as_double() == static_cast<double>(static_cast<int64_t>(v.as_double())))
    return static_cast<int64_t>(v.as_double());
  return std::nullopt;
}

// QuantizationArgs reduced to what the experts need (docs/PRODUCER_FORMATS.md §1.3).
struct Args {
  bool present = false;
  std::string type = "int";
  int64_t num_bits = 8;
  bool symmetric = true;
  bool dynamic = false;
  std::string strategy;
  int64_t group_size = 0;
  const json::value* block_structure = nullptr;
};

Args parse_args(const json::value* v, const std::string& where) {
  Args a;
  if (is_null(v)) return a;
  if (!v->is_object()) fail("compressed-tensors config: " + where + " must be an object or null");
  const json::object& o = v->as_object();
  a.present = true;
  a.type = lower(str_or(o, "type", "int"));
  if (const json::value* b = o.if_contains("num_bits"); !is_null(b)) {
    auto n = as_int(*b);
    if (!n) fail("compressed-tensors config: " + where + ".num_bits must be an integer, found " + json::serialize(*b));
    a.num_bits = *n;
  }
  if (const json::value* s = o.if_contains("symmetric"); s && s->is_bool()) a.symmetric = s->as_bool();
  if (const json::value* d = o.if_contains("dynamic"); d) {
    if (d->is_bool()) a.dynamic = d->as_bool();
    else if (d->is_string()) a.dynamic = d->as_string() != "false";  // "local" (NVFP4) counts as dynamic
  }
  const json::value* g = o.if_contains("group_size");
  if (!is_null(g)) {
    auto n = as_int(*g);
    if (!n) fail("compressed-tensors config: " + where + ".group_size must be an integer, found " + json::serialize(*g));
    a.group_size = *n;
  }
  a.strategy = lower(str_or(o, "strategy", ""));
  if (a.strategy.empty()) {  // inferred from group_size when absent (§1.4)
    if (is_null(g)) a.strategy = "tensor";
    else if (a.group_size == -1) a.strategy = "channel";
    else a.strategy = "group";
  }
  a.block_structure = o.if_contains("block_structure");
  if (is_null(a.block_structure)) a.block_structure = nullptr;
  return a;
}

std::string args_text(const Args& a) {
  if (!a.present) return "none";
  std::string s = a.type + std::to_string(a.num_bits) + " " + a.strategy;
  if (a.strategy == "group") s += " " + std::to_string(a.group_size);
  return s + (a.dynamic ? " dynamic" : " static") + (a.symmetric ? "" : " asymmetric");
}

// [bn, bk] from a JSON array or the legacy "128x128" string; both must be positive.
std::pair<int64_t, int64_t> parse_block(const json::value& v, const std::string& key) {
  int64_t n = 0, k = 0;
  bool ok = false;
  if (v.is_array() && v.as_array().size() == 2) {
    auto a = as_int(v.as_array()[0]), b = as_int(v.as_array()[1]);
    if (a && b) {
      n = *a;
      k = *b;
      ok = true;
    }
  } else if (v.is_string()) {
    static const RE2 rxc(R"((\d{1,9})\s*x\s*(\d{1,9}))");
    int64_t a = 0, b = 0;
    if (RE2::FullMatch(std::string(v.as_string()), rxc, &a, &b)) {
      n = a;
      k = b;
      ok = true;
    }
  }
  if (!ok) fail(key + " must be [rows, cols] (or \"RxC\"), found " + json::serialize(v));
  if (n <= 0 || k <= 0) fail(key + " must hold two positive block sizes, found " + json::serialize(v));
  return {n, k};
}

// Module names a config entry may name for this experts module: the module itself and the
// expert-0 linears of the usual leaf names (vLLM probes `<experts>.0.gate_proj` likewise).
std::vector<std::string> candidate_modules(const std::string& layer) {
  std::vector<std::string> c{layer};
  for (const char* leaf : {"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"})
    c.push_back(layer + ".0." + leaf);
  return c;
}

// A target or ignore entry: "re:<regex>" matched at the start of a module name (Python's
// re.match, as compressed-tensors does), a Linear class name (targets only), or an exact module
// name of the experts module or of a module below it.
// NOTE: RE2 runs in time linear in the name whatever the pattern, so no pattern can stall a
// load; it has no backreferences or lookaround, which are refused as invalid (no real config
// uses them). Compiled patterns are bounded in memory.
bool entry_matches(const std::string& entry, const std::string& layer, bool is_target) {
  if (entry.rfind("re:", 0) == 0) {
    RE2::Options o;
    o.set_log_errors(false);
    o.set_max_mem(int64_t{8} << 20);
    const RE2 r(entry.substr(3), o);
    if (!r.ok()) fail("quantization config: invalid regex '" + printable_name(entry) + "': " + r.error());
    for (const std::string& m : candidate_modules(layer))
      if (r.Match(m, 0, m.size(), RE2::ANCHOR_START, nullptr, 0)) return true;
    return false;
  }
  if (is_target && (entry == "Linear" || entry.ends_with("Linear"))) return true;
  return entry == layer || entry.rfind(layer + ".", 0) == 0;
}


// How a config group's target names a layer, most specific first (what vLLM's compressed-tensors
// scheme lookup prefers when several groups match: the layer's name, then a regex, then a
// module class).
enum class TargetMatch { kNone = 0, kClass = 1, kRegex = 2, kName = 3 };
const char* match_kind(TargetMatch m) {
  switch (m) {
    case TargetMatch::kName: return "by name";
    case TargetMatch::kRegex: return "by regex";
    case TargetMatch::kClass: return "by module class";
    case TargetMatch::kNone: break;
  }
  return "not";
}
TargetMatch target_match(const std::string& target, const std::string& layer) {
  if (!entry_matches(target, layer, true)) return TargetMatch::kNone;
  if (target.rfind("re:", 0) == 0) return TargetMatch::kRegex;
  if (target == layer || target.rfind(layer + ".", 0) == 0) return TargetMatch::kName;
  return TargetMatch::kClass;
}

std::string find_ignore(const json::object& o, const char* key, const std::string& layer) {
  const json::value* ig = o.if_contains(key);
  if (ig == nullptr || !ig->is_array()) return "";
  for (const json::value& e : ig->as_array())
    if (e.is_string() && entry_matches(std::string(e.as_string()), layer, false)) return std::string(e.as_string());
  return "";
}

bool is_float_dtype(const std::string& dt) { return dt == "BF16" || dt == "F16" || dt == "F32"; }

ExpertScheme unquantized(const std::string& kind, const std::string& why, const std::string& layer,
                         const std::string& weight_dtype) {
  if (!is_float_dtype(weight_dtype))
    fail("layer " + layer + " is unquantized by the config (" + why + ") but its expert weights are " + weight_dtype +
         "; unquantized experts must be BF16, F16 or F32");
  ExpertScheme s;
  s.config_kind = kind;
  s.unquantized_why = why;
  s.weights = WeightFormat::kFloat;
  s.float_dtype = *parse_dtype(weight_dtype);
  s.granularity = Granularity::kNone;
  s.act = ActMode::kNone;
  return s;
}

void expect_weight_dtype(const ExpertScheme& s, const std::string& what, const std::string& weight_dtype) {
  const bool fp8 = s.weights == WeightFormat::kFp8;
  const char* want = fp8 ? "F8_E4M3" : "I8";
  if (weight_dtype != want)
    fail(std::string("config says ") + (fp8 ? "FP8" : "INT8") + " but the expert weights are " + weight_dtype + " (" +
         what + " stores " + want + ")");
}

// Activation group and weight block columns must nest, so that a kernel K-tile of the smaller
// one lies inside one activation group and one weight block.
void check_group_nests(const ExpertScheme& s, const std::string& what) {
  if (s.granularity != Granularity::kBlock || s.act != ActMode::kDynamicGroup) return;
  if (s.block_k % s.act_group != 0 && s.act_group % s.block_k != 0)
    fail(what + ": input_activations group_size " + std::to_string(s.act_group) +
         " and the weight block's " + std::to_string(s.block_k) + " columns (block [" + std::to_string(s.block_n) +
         ", " + std::to_string(s.block_k) + "]) do not divide one another");
}

ExpertScheme from_compressed_tensors(const json::object& o, const std::string& layer, const std::string& wdt) {
  const json::value* groups = o.if_contains("config_groups");
  if (groups == nullptr || !groups->is_object())
    fail("compressed-tensors config has no config_groups object");
  if (std::string hit = find_ignore(o, "ignore", layer); !hit.empty())
    return unquantized("compressed-tensors", "listed in quantization_config.ignore ('" + hit + "')", layer, wdt);

  // NOTE: the group whose target names the layer most specifically wins (name, then regex, then
  // module class). Two groups that tie there are ambiguous: which one a runtime applies then
  // depends on its parser (vLLM's lets the later one win), so the load is refused naming both.
  const json::object* chosen = nullptr;
  std::string chosen_name, chosen_target;
  TargetMatch best = TargetMatch::kNone;
  for (const auto& [name, g] : groups->as_object()) {
    if (!g.is_object()) fail("config group '" + std::string(name) + "' is not an object");
    const json::object& go = g.as_object();
    const json::value* targets = go.if_contains("targets");
    if (targets == nullptr || !targets->is_array())
      fail("config group '" + std::string(name) + "' has no targets list");
    TargetMatch m = TargetMatch::kNone;
    std::string target;
    for (const json::value& t : targets->as_array()) {
      if (!t.is_string()) continue;
      const TargetMatch tm = target_match(std::string(t.as_string()), layer);
      if (tm > m) {
        m = tm;
        target = std::string(t.as_string());
      }
    }
    if (m == TargetMatch::kNone || m < best) continue;
    if (m == best)
      fail("quantization config is ambiguous for layer " + layer + ": config groups '" + chosen_name + "' (target '" +
           chosen_target + "') and '" + std::string(name) + "' (target '" + target + "') both match it " +
           match_kind(m) + "; expected exactly one group to match it most specifically");
    best = m;
    chosen = &go;
    chosen_name = std::string(name);
    chosen_target = target;
  }
  if (chosen != nullptr) {
    const json::object& go = *chosen;
    const std::string& name = chosen_name;
    const std::string what = "compressed-tensors group '" + std::string(name) + "'";
    ExpertScheme s;
    s.config_kind = "compressed-tensors";
    s.group_name = std::string(name);
    s.format = str_or(go, "format", str_or(o, "format", ""));
    const Args w = parse_args(go.if_contains("weights"), "weights");
    const Args a = parse_args(go.if_contains("input_activations"), "input_activations");
    if (!w.present) return unquantized("compressed-tensors", what + " quantizes no weights", layer, wdt);
    if (w.num_bits != 8 || (w.type != "float" && w.type != "int"))
      fail(what + ": weights are " + args_text(w) + "; this plugin runs 8-bit float or int weights");
    if (!w.symmetric) fail(what + ": weights are " + args_text(w) + "; only symmetric weights (no zero point)");
    if (w.dynamic) fail(what + ": weights are " + args_text(w) + "; weight scales must be static (stored)");
    s.weights = w.type == "float" ? WeightFormat::kFp8 : WeightFormat::kInt8;
    if (s.weights == WeightFormat::kInt8 && s.format == "pack-quantized")
      fail(what + ": int8 weights packed into int32 (format pack-quantized, weight_packed) are not supported; "
                  "this plugin takes I8 weights (int-quantized / naive-quantized)");

    if (w.strategy == "tensor") {
      s.granularity = Granularity::kTensor;
    } else if (w.strategy == "channel") {
      s.granularity = Granularity::kChannel;
    } else if (w.strategy == "block") {
      if (w.block_structure == nullptr) fail(what + ": weights strategy block needs weights.block_structure");
      s.granularity = Granularity::kBlock;
      std::tie(s.block_n, s.block_k) = parse_block(*w.block_structure, what + ": weights.block_structure");
    } else {
      fail(what + ": weights strategy '" + w.strategy + "' is not supported (tensor, channel and block are)");
    }
    if (s.weights == WeightFormat::kInt8 && s.granularity != Granularity::kChannel)
      fail(what + ": int8 weights must be per channel, found " + args_text(w));

    if (!a.present) {
      s.act = ActMode::kNone;
    } else {
      if (s.weights == WeightFormat::kInt8)
        fail(what + ": int8 weights with " + args_text(a) +
             " activations (W8A8 int8) are not supported; int8 runs weight-only (W8A16)");
      if (a.type != "float" || a.num_bits != 8)
        fail(what + ": input activations are " + args_text(a) + "; FP8 weights run with fp8 activations or none");
      if (!a.symmetric) fail(what + ": input activations are " + args_text(a) + "; only symmetric");
      if (a.strategy == "tensor") {
        s.act = a.dynamic ? ActMode::kDynamicTensor : ActMode::kStaticTensor;
      } else if (a.strategy == "token" && a.dynamic) {
        s.act = ActMode::kDynamicToken;
      } else if (a.strategy == "group" && a.dynamic) {
        if (a.group_size <= 0)
          fail(what + ": input_activations strategy group needs group_size > 0, found " + std::to_string(a.group_size));
        s.act = ActMode::kDynamicGroup;
        s.act_group = a.group_size;
      } else {
        fail(what + ": input activations " + args_text(a) +
             " are not supported (static tensor, dynamic tensor, dynamic token or dynamic group are)");
      }
    }
    check_group_nests(s, what);
    expect_weight_dtype(s, what, wdt);
    return s;
  }
  return unquantized("compressed-tensors", "no config group targets it", layer, wdt);
}

// DeepSeek-V3/R1 and Qwen3 "-FP8" releases (docs/MOE_SEMANTICS.md §3.1).
ExpertScheme from_native_fp8(const json::object& o, const std::string& layer, const std::string& wdt) {
  for (const char* key : {"ignored_layers", "modules_to_not_convert"})
    if (std::string hit = find_ignore(o, key, layer); !hit.empty())
      return unquantized("fp8", std::string("listed in quantization_config.") + key + " ('" + hit + "')", layer, wdt);
  const std::string fmt = lower(str_or(o, "fmt", "e4m3"));
  if (fmt != "e4m3") fail("fp8 config: fmt '" + fmt + "' is not supported (e4m3 is)");
  const json::value* as = o.if_contains("activation_scheme");
  if (as == nullptr || !as->is_string())
    fail("fp8 config: activation_scheme (\"dynamic\" or \"static\") is required");
  const std::string scheme = lower(std::string(as->as_string()));
  if (scheme != "dynamic" && scheme != "static")
    fail("fp8 config: activation_scheme must be \"dynamic\" or \"static\", found \"" + scheme + "\"");
  ExpertScheme s;
  s.config_kind = "fp8";
  s.weights = WeightFormat::kFp8;
  if (const json::value* b = o.if_contains("weight_block_size"); !is_null(b)) {
    s.granularity = Granularity::kBlock;
    std::tie(s.block_n, s.block_k) = parse_block(*b, "fp8 config: weight_block_size");
    if (scheme != "dynamic")
      fail("fp8 config: weight_block_size needs activation_scheme \"dynamic\", found \"" + scheme + "\"");
    s.act = ActMode::kDynamicGroup;  // 1 x bk groups
    s.act_group = s.block_k;
  } else {
    s.granularity = Granularity::kTensor;
    s.act = scheme == "static" ? ActMode::kStaticTensor : ActMode::kDynamicTensor;
  }
  expect_weight_dtype(s, "fp8 config", wdt);
  return s;
}

}  // namespace

DType ExpertScheme::weight_dtype() const {
  switch (weights) {
    case WeightFormat::kFp8: return DType::F8_E4M3;
    case WeightFormat::kInt8: return DType::I8;
    case WeightFormat::kFloat: return float_dtype;
  }
  return DType::F8_E4M3;
}

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::kNone: return "none";
    case Granularity::kTensor: return "tensor";
    case Granularity::kChannel: return "channel";
    case Granularity::kBlock: return "block";
  }
  return "?";
}

std::string describe_weights(const ExpertScheme& s) {
  switch (s.weights) {
    case WeightFormat::kFloat: return std::string("unquantized ") + dtype_name(s.float_dtype);
    case WeightFormat::kInt8: return "int8 symmetric, per output channel";
    case WeightFormat::kFp8: break;
  }
  switch (s.granularity) {
    case Granularity::kTensor: return "fp8 e4m3fn, one scale per expert projection (w1, w3, w2 each)";
    case Granularity::kChannel: return "fp8 e4m3fn, one scale per output channel";
    case Granularity::kBlock:
      return "fp8 e4m3fn, " + std::to_string(s.block_n) + "x" + std::to_string(s.block_k) + " blocks";
    case Granularity::kNone: break;
  }
  return "fp8 e4m3fn";
}

std::string describe_activations(const ExpertScheme& s) {
  switch (s.act) {
    case ActMode::kNone: return "not quantized (weight-only)";
    case ActMode::kStaticTensor: return "fp8 static per tensor (input_scale; max over w1/w3 and experts)";
    case ActMode::kDynamicTensor: return "fp8 dynamic per tensor";
    case ActMode::kDynamicToken: return "fp8 dynamic per token";
    case ActMode::kDynamicGroup: return "fp8 dynamic per token per group of " + std::to_string(s.act_group);
  }
  return "?";
}

ExpertScheme resolve_scheme(const std::string& text, const std::string& source, const std::string& layer,
                            const std::string& wdt) {
  if (source == "hf_quant_config.json")
    fail("ModelOpt checkpoint (hf_quant_config.json): the modelopt plugin translates it");
  json::value root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    fail(std::string("quantization config is not valid JSON: ") + e.what());
  }
  if (root.is_null()) {
    if (!is_float_dtype(wdt))
      fail("the checkpoint has no quantization_config, but its expert weights are " + wdt +
           " (unquantized experts must be BF16, F16 or F32)");
    return unquantized("none", "no quantization_config", layer, wdt);
  }
  if (!root.is_object()) fail("quantization config is not a JSON object");
  const json::object& o = root.as_object();
  const std::string method = lower(str_or(o, "quant_method", ""));
  if (method == "compressed-tensors" || (method.empty() && o.contains("config_groups")))
    return from_compressed_tensors(o, layer, wdt);
  if (method == "fp8") return from_native_fp8(o, layer, wdt);
  fail("quant_method is '" + method + "', not compressed-tensors or fp8");
}

}  // namespace moeq::ct
