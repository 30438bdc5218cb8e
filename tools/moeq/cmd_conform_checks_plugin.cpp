// `moeq conform` checks 1-4: the plugin as a whole (entry symbol, ABI negotiation, probe,
// create_weights under TP and EP).
#include "cmd_conform_check_kit.hpp"

#include <moeq/error.hpp>

#include <boost/dll/library_info.hpp>

#include <unistd.h>

#include <algorithm>
#include <numeric>
#include <cstdio>
#include <cstring>
#include <map>
#include <regex>

namespace moeq::cli::conform {

namespace {

// Grid entries of a TP shard of It rows (or columns) of a block-scaled dimension whose
// unsharded grid holds `was` entries over I (or over 2I as two halves, w1 and w3): for every
// block size consistent with `was`, blocks of gcd(block, It) where the shard is not a multiple
// of the block.
std::vector<int64_t> refined_grid_counts(int64_t was, int64_t I, int64_t It) {
  std::vector<int64_t> out;
  auto add = [&](int64_t n) {
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  };
  for (int64_t b = 1; b <= I && It > 0; ++b) {
    const int64_t blocks = (I + b - 1) / b;
    const int64_t shard = It % b == 0 ? It / b : It / std::gcd(b, It);
    if (blocks == was) add(shard);
    if (2 * blocks == was) add(2 * shard);
  }
  return out;
}

std::string join_counts(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t n : v) s += (s.empty() ? "" : " or ") + std::to_string(n);
  return s;
}

}  // namespace


// ============================================================ 1. the entry symbol
Outcome check_entry(Context& ctx) {
  std::vector<std::string> problems;
  ctx.stage("reading the dynamic symbol table");
  std::vector<std::string> symbols;
  try {
    boost::dll::library_info info(ctx.plugin_file);
    symbols = info.symbols();
  } catch (const std::exception& e) {
    return failed(std::string("not a shared object: ") + e.what());
  }
  std::vector<std::string> extra;
  bool has_entry = false;
  for (const std::string& s : symbols) {
    if (s == MOEQ_PLUGIN_ENTRY_SYMBOL)
      has_entry = true;
    else
      extra.push_back(s);
  }
  if (!has_entry) return failed("does not export " MOEQ_PLUGIN_ENTRY_SYMBOL);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 3; ++i) list += (i ? ", " : "") + extra[i];
    problems.push_back("exports " + std::to_string(extra.size()) + " symbols besides " MOEQ_PLUGIN_ENTRY_SYMBOL " (" +
                       list + (extra.size() > 3 ? ", ..." : "") +
                       "): build with moeq_add_plugin (hidden visibility and its version script)");
  }

  // Load and call the entry symbol three times, watching for output, threads and CUDA.
  ctx.stage("loading the file and calling " MOEQ_PLUGIN_ENTRY_SYMBOL);
  const int threads_before = thread_count();
  const bool cuda_before = libcuda_mapped();
  std::fflush(stdout);
  std::fflush(stderr);
  FILE* capture = std::tmpfile();
  const int saved_out = ::dup(1), saved_err = ::dup(2);
  if (capture) {
    ::dup2(::fileno(capture), 1);
    ::dup2(::fileno(capture), 2);
  }
  const moeq_plugin_descriptor* d[3] = {};
  std::string load_error;
  moeq_plugin_descriptor first{};
  try {
    d[0] = load_descriptor(ctx.plugin_file);
    if (d[0]) std::memcpy(&first, d[0], std::min(sizeof(first), d[0]->struct_size));
    d[1] = load_descriptor(ctx.plugin_file);
    d[2] = load_descriptor(ctx.plugin_file);
  } catch (const Error& e) {
    load_error = e.what();
  }
  std::fflush(stdout);
  std::fflush(stderr);
  ::dup2(saved_out, 1);
  ::dup2(saved_err, 2);
  ::close(saved_out);
  ::close(saved_err);
  long printed = 0;
  if (capture) {
    std::fseek(capture, 0, SEEK_END);
    printed = std::ftell(capture);
    std::fclose(capture);
  }
  if (!load_error.empty()) return failed(load_error);
  if (d[0] == nullptr) return failed(MOEQ_PLUGIN_ENTRY_SYMBOL " returned NULL");
  if (d[1] != d[0] || d[2] != d[0]) problems.push_back(MOEQ_PLUGIN_ENTRY_SYMBOL " returned different pointers across calls");
  if (std::memcmp(&first, d[2], std::min(sizeof(first), d[0]->struct_size)) != 0)
    problems.push_back("the descriptor changed between calls");
  if (printed > 0) problems.push_back("loading or " MOEQ_PLUGIN_ENTRY_SYMBOL " wrote " + std::to_string(printed) +
                                      " bytes to stdout/stderr (plugins log through the host)");
  if (const int t = thread_count(); t != threads_before)
    problems.push_back("loading or " MOEQ_PLUGIN_ENTRY_SYMBOL " started " + std::to_string(t - threads_before) + " threads");
  if (!cuda_before && libcuda_mapped()) problems.push_back("loading or " MOEQ_PLUGIN_ENTRY_SYMBOL " loaded libcuda");

  // The structure, with the version fields set to what this host speaks (check 2 judges those).
  const moeq_plugin_descriptor* desc = d[0];
  if (desc->struct_size < kDescriptorV1Size) {
    problems.push_back("descriptor struct_size " + std::to_string(desc->struct_size) + " is smaller than 1.0's " +
                       std::to_string(kDescriptorV1Size));
    return verdict(problems, "");
  }
  moeq_plugin_descriptor normalized = *desc;
  normalized.abi_major = MOEQ_ABI_MAJOR;
  normalized.min_host_minor = 0;
  if (std::string why = Registry::validate(&normalized); !why.empty()) problems.push_back(why);
  if (desc->name) ctx.info("name", desc->name);
  if (desc->version) ctx.info("version", desc->version);
  ctx.info("abi", std::to_string(desc->abi_major) + "." + std::to_string(desc->abi_minor) + " (needs host >= " +
                      std::to_string(desc->abi_major) + "." + std::to_string(desc->min_host_minor) + ")");
  static const std::regex semver(R"(^\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$)");
  if (desc->version && !std::regex_match(desc->version, semver))
    problems.push_back(std::string("version '") + desc->version + "' is not semver (MAJOR.MINOR.PATCH)");
  if (desc->num_schemes == 0) problems.push_back("claims no schemes (num_schemes is 0)");
  for (size_t i = 0; i < desc->num_schemes && desc->schemes; ++i)
    if (desc->schemes[i] && desc->schemes[i][0] == '\0') problems.push_back("scheme " + std::to_string(i) + " is empty");
  if (desc->build_info == nullptr) problems.push_back("build_info is NULL");
  return verdict(problems, "exports only " MOEQ_PLUGIN_ENTRY_SYMBOL "; the descriptor is pure and stable over 3 calls; " +
                               count(static_cast<int64_t>(desc->num_schemes), "scheme") + ", every required slot present");
}

// ============================================================ 2. ABI negotiation
Outcome check_abi(Context& ctx) {
  ctx.stage("loading the file");
  const moeq_plugin_descriptor* d = nullptr;
  try {
    d = load_descriptor(ctx.plugin_file);
  } catch (const Error& e) {
    return not_applicable(std::string("cannot load (see check 1): ") + e.what());
  }
  if (d == nullptr) return not_applicable(MOEQ_PLUGIN_ENTRY_SYMBOL " returned NULL (see check 1)");
  const std::string host = std::to_string(MOEQ_ABI_MAJOR) + "." + std::to_string(MOEQ_ABI_MINOR);
  // (a) The plugin's own version fields.
  if (d->abi_major != MOEQ_ABI_MAJOR)
    return failed("declares ABI major " + std::to_string(d->abi_major) + "; this host speaks " + host +
                  ", so it refuses the plugin: \"" + Registry::validate(d) + "\"");
  if (d->struct_size < kDescriptorV1Size) return not_applicable("descriptor smaller than 1.0 (see check 1)");
  if (d->min_host_minor > MOEQ_ABI_MINOR)
    return failed("needs host ABI minor >= " + std::to_string(d->min_host_minor) + "; this host is " + host +
                  ", so it refuses the plugin: \"" + Registry::validate(d) + "\"");
  if (d->abi_minor < d->min_host_minor)
    return failed("built against minor " + std::to_string(d->abi_minor) + " but asks for a host of minor >= " +
                  std::to_string(d->min_host_minor) + ": min_host_minor can be at most abi_minor");
  std::vector<std::string> problems, done;
  // (b, c) Mutated copies: a newer major and a too-new minimum minor are refused, with reasons.
  moeq_plugin_descriptor copy = *d;
  copy.abi_major = MOEQ_ABI_MAJOR + 1;
  if (std::string why = Registry::validate(&copy); why.find("major") == std::string::npos)
    problems.push_back("the host does not refuse a copy of ABI major " + std::to_string(copy.abi_major) +
                       " with a reason naming the major (got \"" + why + "\")");
  copy = *d;
  copy.min_host_minor = MOEQ_ABI_MINOR + 1;
  if (std::string why = Registry::validate(&copy); why.find("minor") == std::string::npos)
    problems.push_back("the host does not refuse a copy needing host minor " + std::to_string(copy.min_host_minor) +
                       " with a reason naming the minor (got \"" + why + "\")");
  done.push_back("copies of major " + std::to_string(MOEQ_ABI_MAJOR + 1) + " and of minimum minor " +
                 std::to_string(MOEQ_ABI_MINOR + 1) + " refused with reasons");
  const std::string versions = "ABI " + std::to_string(d->abi_major) + "." + std::to_string(d->abi_minor) +
                               " (needs host >= 1." + std::to_string(d->min_host_minor) + ") accepted by this host " + host;
  if (std::string why = Registry::validate(d); !why.empty())
    return verdict(problems, versions + "; " + done.back() + "; size and slot cases not run: the host refuses the "
                                                             "plugin for another reason (see check 1)");
  // (d) A newer plugin: larger descriptor and table, trailing bytes, a newer minor: accepted, capped.
  struct PaddedApi {
    moeq_plugin_api api;
    void* future_slots[8];
  } padded_api{};
  std::memcpy(&padded_api.api, d->api, std::min(sizeof(moeq_plugin_api), d->api->struct_size));
  padded_api.api.struct_size = sizeof(PaddedApi);
  struct PaddedDescriptor {
    moeq_plugin_descriptor d;
    unsigned char tail[64];
  } padded{};
  padded.d = *d;
  std::memset(padded.tail, 0x5a, sizeof padded.tail);
  padded.d.struct_size = sizeof(PaddedDescriptor);
  padded.d.abi_minor = MOEQ_ABI_MINOR + 5;
  padded.d.api = &padded_api.api;
  if (std::string why = Registry::validate(&padded.d); !why.empty())
    problems.push_back("the host refuses a newer copy (minor " + std::to_string(padded.d.abi_minor) +
                       ", larger descriptor and table): " + why);
  done.push_back("a newer copy with larger structs accepted");

  // (e) The plugin accepts larger structs from the host, and works with its optional slots NULL.
  Prepared p = prepare(ctx, false, ProxyOptions{.null_optional_slots = true});
  if (p.not_ready) return *p.not_ready;
  ctx.stage("probing and creating methods with larger argument structs");
  for (const AcceptedLayer& a : p.accepted) {
    const ProbeAnswer exact = probe(*p.subject->plugin(), a.layer.query);
    const ProbeAnswer larger = probe(*p.subject->plugin(), a.layer.query, 64);
    if (!(exact == larger))
      problems.push_back("probe answers differently when probe_args is 64 bytes larger (" + a.fixture->name + ")");
  }
  for (const Fixture* f : p.fixtures) {
    const MoeConfig cfg = config_of(*f);
    const LayerQuery* q = first_query(p, f);
    struct PaddedGeometry {
      moeq_layer_geometry g;
      unsigned char tail[64];
    } pg{};
    pg.g = layer_geometry(cfg, {});
    pg.g.struct_size = sizeof(PaddedGeometry);
    std::memset(pg.tail, 0xa5, sizeof pg.tail);
    struct PaddedCreate {
      moeq_method_create_args a;
      unsigned char tail[64];
    } pc{};
    std::memset(pc.tail, 0xa5, sizeof pc.tail);
    pc.a.struct_size = sizeof(PaddedCreate);
    pc.a.quant_config_json = q->query.quant_config_json.c_str();
    pc.a.layer_name = q->query.layer_name.c_str();
    pc.a.weight_dtype = q->query.weight_dtype.c_str();
    pc.a.geometry = &pg.g;
    pc.a.device = {kDLCPU, 0};
    moeq_status_code code;
    std::string msg;
    if (host::take_status(p.subject->plugin()->api->method_create(&pc.a), code, msg))
      problems.push_back("method_create fails when its args and geometry are 64 bytes larger (" + f->name + "): " + msg);
    else
      p.subject->plugin()->api->method_destroy(pc.a.method);
  }
  done.push_back("larger host table, probe args, method_create args and geometry accepted");
  if (!p.fixtures.empty()) {
    std::string why;
    // A load that fails here is check 5's to judge; this only shows the host does not need them.
    if (first_loading(ctx, p, why)) done.push_back("loads with its optional slots NULL");
  }
  add_escapes(problems);
  std::string reason = versions;
  for (const std::string& s : done) reason += "; " + s;
  return verdict(problems, reason);
}

// ============================================================ 3. probe
namespace {

struct ForeignConfig {
  const char* label;
  std::string json;
  const char* source;
  const char* dtype;
};

std::vector<ForeignConfig> foreign_configs() {
  std::string nested;
  for (int i = 0; i < 64; ++i) nested += "[";
  for (int i = 0; i < 64; ++i) nested += "]";
  return {
      {"no quantization config", "null", "none", "BF16"},
      {"gptq int4", R"({"quant_method":"gptq","bits":4,"group_size":128,"desc_act":false,"sym":true})", "config.json", "I32"},
      {"awq int4", R"({"quant_method":"awq","bits":4,"group_size":128,"zero_point":true,"version":"gemm"})", "config.json", "I32"},
      {"bitsandbytes nf4", R"({"quant_method":"bitsandbytes","load_in_4bit":true,"bnb_4bit_quant_type":"nf4"})", "config.json", "U8"},
      {"modelopt fp8 (hf_quant_config.json)",
       R"({"producer":{"name":"modelopt","version":"0.19.0"},"quantization":{"quant_algo":"FP8","kv_cache_quant_algo":null,"exclude_modules":["lm_head"]}})",
       "hf_quant_config.json", "F8_E4M3"},
      {"native fp8 block (DeepSeek style)",
       R"({"quant_method":"fp8","activation_scheme":"dynamic","fmt":"e4m3","weight_block_size":[128,128]})", "config.json", "F8_E4M3"},
      {"compressed-tensors without config_groups", R"({"quant_method":"compressed-tensors","format":"float-quantized"})",
       "config.json", "F8_E4M3"},
      {"an unknown quant_method", R"({"quant_method":"from_the_future","bits":3})", "config.json", "U8"},
      {"malformed JSON", R"({"quant_method": "compressed-tens)", "config.json", "F8_E4M3"},
      {"a JSON array", "[1, 2, 3]", "config.json", "F8_E4M3"},
      {"a JSON number", "42", "config.json", "F8_E4M3"},
      {"an empty string", "", "config.json", "F8_E4M3"},
      {"64 nested arrays", nested, "config.json", "F8_E4M3"},
  };
}

// One probe into a reason buffer of `capacity` followed by a canary.
struct CanaryProbe {
  ProbeAnswer answer;
  bool overflow = false;
  bool unterminated = false;
};
CanaryProbe probe_with_canary(const LoadedPlugin& plugin, const ProbeQuery& q, size_t capacity) {
  std::vector<char> buffer(capacity + 32, '\x5a');
  moeq_probe_args a{};
  a.struct_size = sizeof(a);
  a.quant_config_json = q.quant_config_json.c_str();
  a.quant_config_source = q.quant_config_source.c_str();
  a.layer_name = q.layer_name.c_str();
  a.weight_dtype = q.weight_dtype.c_str();
  a.reason = buffer.data();
  a.reason_capacity = capacity;
  CanaryProbe r;
  moeq_status_code code;
  if (host::take_status(plugin.api->probe(&a), code, r.answer.reason)) {
    r.answer.status = true;
  } else {
    r.answer.score = a.score;
    const char* end = static_cast<const char*>(std::memchr(buffer.data(), '\0', capacity));
    r.unterminated = capacity > 0 && end == nullptr;
    r.answer.reason.assign(buffer.data(), end ? static_cast<size_t>(end - buffer.data()) : capacity);
  }
  for (size_t i = capacity; i < buffer.size(); ++i) r.overflow |= buffer[i] != '\x5a';
  return r;
}

}  // namespace

Outcome check_probe(Context& ctx) {
  Prepared p = prepare(ctx, false);
  if (p.not_ready) return *p.not_ready;
  const LoadedPlugin& plugin = *p.subject->plugin();
  std::vector<LabeledQuery> queries = fixture_queries(ctx);
  for (const ForeignConfig& f : foreign_configs())
    queries.push_back({f.label, {f.json, f.source, "model.layers.0.mlp.experts", f.dtype}});
  std::vector<std::string> problems;
  int accepted = 0, declined = 0;
  const bool cuda_before = libcuda_mapped();
  for (const LabeledQuery& q : queries) {
    ctx.stage("probing " + q.label);
    const HostCalls before = host_calls();
    const CanaryProbe one = probe_with_canary(plugin, q.query, 512);
    const CanaryProbe two = probe_with_canary(plugin, q.query, 512);
    const HostCalls calls = host_calls() - before;
    const int64_t statuses = (one.answer.status ? 1 : 0) + (two.answer.status ? 1 : 0);
    const int64_t impure = calls.total() - std::min(calls[HostSlot::kStatusCreate], statuses);
    const std::string who = "probe of " + q.label;
    if (impure > 0) problems.push_back(who + " called the host (" + calls.list() + "); probe must be pure");
    if (!(one.answer == two.answer))
      problems.push_back(who + " is not deterministic: score " + std::to_string(one.answer.score) + " \"" +
                         one.answer.reason + "\", then " + std::to_string(two.answer.score) + " \"" + two.answer.reason + "\"");
    if (one.overflow) problems.push_back(who + " wrote past reason_capacity");
    if (one.unterminated) problems.push_back(who + " left the reason without a NUL terminator");
    if (!one.answer.status && one.answer.score < 0)
      problems.push_back(who + " returned a negative score " + std::to_string(one.answer.score));
    const bool declines = one.answer.status || one.answer.score == 0;
    if (declines && one.answer.reason.empty()) problems.push_back(who + " declines without a reason");
    (declines ? declined : accepted) += 1;
    const CanaryProbe small = probe_with_canary(plugin, q.query, 8);
    if (small.overflow) problems.push_back(who + " wrote past a reason_capacity of 8");
  }
  if (!cuda_before && libcuda_mapped()) problems.push_back("probe loaded libcuda (no CUDA in probe)");
  add_escapes(problems);
  return verdict(problems, std::to_string(queries.size()) + " configs probed twice each: " + std::to_string(accepted) +
                               " accepted, " + std::to_string(declined) +
                               " declined with reasons; deterministic, no host calls, no CUDA, reason buffers respected");
}

// ============================================================ 4. create_weights
namespace {
struct Declared {
  std::string dtype;
  std::vector<int64_t> shape;
};

}  // namespace

Outcome check_create_weights(Context& ctx) {
  Prepared p = prepare(ctx, true);
  if (p.not_ready) return *p.not_ready;
  const Fixture& f = *p.fixtures.front();
  const LayerQuery& q = *first_query(p, &f);
  const MoeConfig cfg = config_of(f);
  const int64_t E = cfg.num_experts, H = cfg.hidden_size, I = cfg.intermediate_size;
  std::vector<Placement> placements = {{0, 1, 0, 1}};
  if (I % 2 == 0) placements.insert(placements.end(), {{0, 2, 0, 1}, {1, 2, 0, 1}});
  if (E >= 2) placements.insert(placements.end(), {{0, 1, 0, 2}, {0, 1, 1, 2}});
  if (E >= 3 && E % 3 != 0) placements.push_back({0, 1, 2, 3});  // a rank without the remainder
  if (E >= 2 && I % 2 == 0) placements.push_back({1, 2, 1, 2});
  std::vector<std::string> problems, notes;
  std::map<std::string, Declared> base;
  bool tp_shrinks = false, any_tp = false;
  for (const Placement& pl : placements) {
    ctx.stage("create_weights at " + placement_str(pl));
    const moeq_layer_geometry g = layer_geometry(cfg, pl);
    FreshMethod m(*p.subject->plugin(), q.query, g, q.prefix);
    const bool is_base = pl.tp_size == 1 && pl.ep_size == 1;
    if (!m.error().empty()) {
      if (is_base) return failed("at TP=1 EP=1 on " + f.name + ": " + m.error());
      notes.push_back(placement_str(pl) + " refused: " + m.error());
      continue;
    }
    std::map<std::string, Declared> decl;
    for (const auto& rec : m.layer().params) decl[rec->name] = {dtype_name(rec->dtype), rec->shape};
    const std::string at = " at " + placement_str(pl);
    if (is_base) {
      if (decl.empty()) return failed("create_weights declares no parameters");
      for (const auto& [name, d] : decl)
        for (int64_t s : d.shape)
          if (s <= 0) problems.push_back("parameter '" + name + "' " + shape_str(d.shape) + " has an empty dimension");
      base = std::move(decl);
      continue;
    }
    if (pl.tp_size > 1) any_tp = true;
    for (const auto& [name, b] : base)
      if (!decl.count(name)) problems.push_back("parameter '" + name + "' is not declared" + at);
    for (const auto& [name, d] : decl) {
      auto it = base.find(name);
      if (it == base.end()) {
        problems.push_back("parameter '" + name + "' is declared" + at + " but not at TP=1 EP=1");
        continue;
      }
      const Declared& b = it->second;
      const std::string who = "parameter '" + name + "' " + shape_str(d.shape) + at;
      if (d.dtype != b.dtype) problems.push_back(who + " is " + d.dtype + " but " + b.dtype + " at TP=1 EP=1");
      if (d.shape.size() != b.shape.size()) {
        problems.push_back(who + " has another rank than at TP=1 EP=1 " + shape_str(b.shape));
        continue;
      }
      for (size_t k = 0; k < d.shape.size(); ++k) {
        const int64_t was = b.shape[k], now = d.shape[k];
        // What this dimension may be here. A size equal to several of E, I, 2I, H is ambiguous
        // (H == I in some checkpoints): any of their rules passes.
        const int64_t It = g.intermediate_size_per_partition;
        std::vector<int64_t> allowed;
        std::vector<std::string> said;
        const std::string dim = "dim " + std::to_string(k) + " ";
        if (k == 0) {
          allowed.push_back(was == E ? g.num_local_experts : was);
          said.push_back(was == E ? "dim 0 is num_experts = " + std::to_string(E) + " at EP=1, so here it must be the " +
                                        std::to_string(g.num_local_experts) + " local experts"
                                  : "dim 0 is " + std::to_string(was) + " at EP=1 and no placement changes it");
        } else {
          if (was == 2 * I) {
            allowed.push_back(pl.tp_size > 1 ? 2 * It : was);
            said.push_back(dim + "is 2I = " + std::to_string(was) + " at TP=1, so here it must be 2I/tp = " +
                           std::to_string(2 * It));
          }
          if (was == I) {
            allowed.push_back(pl.tp_size > 1 ? It : was);
            said.push_back(dim + "is I = " + std::to_string(was) + " at TP=1, so here it must be I/tp = " + std::to_string(It));
          }
          if (was == H) {
            allowed.push_back(H);
            said.push_back(dim + "is H = " + std::to_string(H) + ", which no placement shards");
          }
        }
        bool ok = std::find(allowed.begin(), allowed.end(), now) != allowed.end();
        if (allowed.empty()) {
          // Another dimension (a scale grid): it may shrink with the TP shard, or be the refined
          // grid of a shard that starts inside a checkpoint block (blocks of gcd(block, I/tp),
          // README "What loads today"), never anything else.
          ok = pl.tp_size > 1 ? now <= was && now >= (was + pl.tp_size - 1) / pl.tp_size : now == was;
          said.push_back(dim + "is " + std::to_string(was) + " at TP=1 EP=1 and may only shrink with the TP shard");
          if (!ok && pl.tp_size > 1) {
            const std::vector<int64_t> refined = refined_grid_counts(was, I, It);
            ok = std::find(refined.begin(), refined.end(), now) != refined.end();
            said.push_back("be the refined grid of a shard that starts inside a block (" +
                           (refined.empty() ? std::string("none fits") : join_counts(refined)) + ")");
          }
        }
        if (ok) {
          if (k > 0 && now != was) tp_shrinks = true;
          continue;
        }
        std::string expect_text = said.front();
        for (size_t n = 1; n < said.size(); ++n) expect_text += ", or " + said[n];
        problems.push_back(who + ": " + expect_text + "; found " + std::to_string(now));
      }
    }
  }
  if (any_tp && !tp_shrinks && problems.empty())
    problems.push_back("no parameter shrinks at TP=2: every parameter keeps its TP=1 shape, so every rank would hold "
                       "every weight");
  add_escapes(problems);
  std::string params;
  for (const auto& [name, d] : base) params += (params.empty() ? "" : ", ") + name + " " + shape_str(d.shape) + " " + d.dtype;
  std::vector<std::string> details = {"TP=1 EP=1: " + params};
  details.insert(details.end(), notes.begin(), notes.end());
  return verdict(problems,
                 std::to_string(base.size()) + " parameters follow the geometry over " + std::to_string(placements.size()) +
                     " placements (TP 1/2, EP 1/2/3 with a remainder rank): dim 0 = local experts, I and 2I divided by tp, "
                     "H whole" + (notes.empty() ? "" : "; " + std::to_string(notes.size()) + " placements refused with reasons"),
                 details);
}

}  // namespace moeq::cli::conform
