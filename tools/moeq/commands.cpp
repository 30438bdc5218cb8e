#include "commands.hpp"

#include <moeq/error.hpp>
#include <moeq/plugin_manifest.hpp>
#include <moeq/routed_forward.hpp>
#include <moeq_writer/producers.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <set>

namespace moeq::cli {
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

std::vector<float> random_tokens(int64_t m, int64_t h, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * h));
  for (float& v : x) v = bf16_to_float(float_to_bf16(d(rng)));
  return x;
}

void print_json(const json::value& v) { std::cout << json::serialize(v) << "\n"; }

// The expert weights' dtype a config implies, when there are no tensors to look at: I8 for an
// integer compressed-tensors scheme, F8_E4M3 for any other quantization config, else the
// config's torch_dtype (BF16 when it names none).
std::string dtype_implied_by_config(const std::string& quant_json, const json::value& config) {
  if (!quant_json.empty() && quant_json.front() == '{')  // serialized compactly by the caller
    return quant_json.find("\"type\":\"int\"") != std::string::npos ? "I8" : "F8_E4M3";
  const json::value* t = config.is_object() ? config.as_object().if_contains("torch_dtype") : nullptr;
  const std::string td = t && t->is_string() ? std::string(t->as_string()) : "";
  return td == "float16" ? "F16" : td == "float32" ? "F32" : "BF16";
}

}  // namespace

std::optional<double> declared_tolerance(const std::string& describe_json) {
  try {
    const json::value v = json::parse(describe_json);
    if (const auto* o = v.if_object())
      if (const auto* t = o->if_contains("rel_l2_tolerance"); t && t->is_number()) return t->to_number<double>();
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

RunResult run_layer(const LoadedModel& model, size_t li, int64_t m, uint64_t seed, const ref::ExpertWeights* w,
                    const ref::ExpertWeights* original) {
  const LoadedLayer& l = *model.layers.at(li);
  RunResult r;
  r.layer = l.report.prefix;
  r.plugin = l.report.plugin;
  r.tokens = m;
  const std::vector<float> x = random_tokens(m, model.config.hidden_size, seed + li);
  r.refusal = routing_refusal(model.config);
  const ref::Routing routing = route_layer(model, li, x, m);
  const bool on_input = model.config.resolved_routing.weight_on_input;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<float> out = apply_routed(model, li, x, m, routing);
  r.apply_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ref::MoeOptions act;
  ref::ExpertWeights own = model.dequantized(li, &act);
  const ref::ExpertWeights& weights = w ? *w : own;
  const std::vector<float> want = reference_routed(weights, x, m, routing, act, on_input);
  auto finite = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float f) { return std::isfinite(f); });
  };
  r.out_finite = finite(out);
  r.ref_finite = finite(want);
  r.err_quant_ref = ref::relative_l2(out, want);
  r.err_float = ref::relative_l2(out, reference_routed(original ? *original : weights, x, m, routing, {}, on_input));
  return r;
}

std::string routing_refusal(const MoeConfig& c) {
  const ResolvedRouting& r = c.resolved_routing;
  if (r.family == nullptr) return r.unknown_reason;
  if (*r.family->experts_unsupported != '\0') return r.family->experts_unsupported;
  return "";
}

std::string RunResult::verdict() const {
  if (!refusal.empty()) return "FAIL: " + refusal;
  if (!out_finite && !ref_finite)
    return "FAIL: apply and the float reference both give non-finite values (weights x scales overflow, or a "
           "weight is NaN)";
  if (!out_finite) return "FAIL: apply gives non-finite values where the float reference is finite";
  if (!ref_finite) return "FAIL: the float reference is non-finite (weights x scales overflow, or a weight is NaN)";
  if (!(err_quant_ref <= kRunTolerance)) return "FAIL: rel L2 vs ref above 1e-2";
  if (float_bound && !(err_float <= *float_bound)) return "FAIL: rel L2 vs the original weights above " + fmt_sci(*float_bound);
  return "ok";
}

std::string fmt_sci(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

json::value json_number(double v) { return std::isfinite(v) ? json::value(v) : json::value(nullptr); }

int cmd_pin_plugins(const CommonOptions& opt) {
  // Gather with every check but the manifest (the one about to be rewritten), then pin what
  // loaded: MOEQ_PLUGIN_MANIFEST when set, else each directory's own plugins.lock (only the
  // --plugin-dir directory when one is given).
  PluginTrust trust = PluginTrust::from_environment();
  trust.enforce_manifest = false;
  Registry reg(host::api(), trust);
  std::optional<fs::path> given;
  if (!opt.plugin_dir.empty()) given = opt.plugin_dir;
  const std::vector<fs::path> dirs = given ? std::vector<fs::path>{*given} : Registry::search_path(given);
  for (const fs::path& d : dirs)
    if (fs::exists(d) || given) reg.load_directory(d);
  std::map<fs::path, std::vector<std::pair<fs::path, std::string>>> by_manifest;
  for (const auto& p : reg.plugins()) {
    const fs::path manifest =
        trust.manifest.empty() ? fs::absolute(p->file).lexically_normal().parent_path() / kPluginManifestName
                               : trust.manifest;
    by_manifest[manifest].push_back({p->file, sha256_file_hex(p->file)});
  }
  // A manifest may list plugins of other directories too (MOEQ_PLUGIN_MANIFEST is shared): those
  // entries are kept; the directories pinned now get exactly the plugins that loaded.
  std::set<fs::path> pinned_dirs;
  for (const fs::path& d : dirs) pinned_dirs.insert(fs::weakly_canonical(d));
  std::map<fs::path, size_t> kept_of;
  for (auto& [manifest, entries] : by_manifest) {
    std::error_code ec;
    if (!fs::exists(manifest, ec)) continue;
    // An unreadable manifest is an error (PluginManifest::read names the line): rewriting it would
    // drop the other directories' pins without a word. Remove it to start afresh.
    const PluginManifest old = PluginManifest::read(manifest);
    for (const auto& [plugin, digest] : old.entries())
      if (!pinned_dirs.count(fs::weakly_canonical(plugin).parent_path())) {
        entries.push_back({plugin, digest});
        ++kept_of[manifest];
      }
  }
  json::array written;
  for (const auto& [manifest, entries] : by_manifest) {
    write_plugin_manifest(manifest, entries);
    json::array files;
    for (const auto& [file, digest] : entries) files.push_back({{"file", file.string()}, {"sha256", digest}});
    written.push_back({{"manifest", manifest.string()}, {"plugins", files}, {"kept_from_other_directories", kept_of[manifest]}});
  }
  json::array refusals;
  for (const auto& r : reg.refusals()) refusals.push_back({{"file", r.file.string()}, {"reason", r.reason}});
  if (opt.json) {
    print_json(json::object{{"pinned", written}, {"not_pinned", refusals}});
  } else {
    for (const auto& w : written) {
      const auto& o = w.as_object();
      const int64_t kept = o.at("kept_from_other_directories").to_number<int64_t>();
      std::cout << "pinned " << o.at("plugins").as_array().size() - kept << " plugin(s) in "
                << o.at("manifest").as_string().c_str();
      if (kept > 0) std::cout << " (kept its " << kept << " entries of other directories)";
      std::cout << "\n";
      for (const auto& f : o.at("plugins").as_array())
        std::cout << "  " << f.at("sha256").as_string().c_str() << "  " << f.at("file").as_string().c_str() << "\n";
    }
    if (written.empty()) std::cout << "no plugin loaded: nothing pinned\n";
    for (const auto& r : reg.refusals()) std::cout << "not pinned " << r.file.string() << ": " << r.reason << "\n";
  }
  return written.empty() ? 1 : 0;
}

int cmd_plugins(const CommonOptions& opt, const std::string& why) {
  Session s(opt);
  Registry& reg = s.registry();
  json::object o;
  json::array plugins, refusals, missing;
  for (const auto& p : reg.plugins()) {
    json::array schemes;
    for (size_t i = 0; i < p->descriptor->num_schemes; ++i) schemes.push_back(json::string(p->descriptor->schemes[i]));
    plugins.push_back({{"name", p->name}, {"version", p->version}, {"file", p->file.string()},
                       {"abi", std::to_string(p->descriptor->abi_major) + "." + std::to_string(p->descriptor->abi_minor)},
                       {"schemes", schemes}});
  }
  for (const auto& r : reg.refusals()) refusals.push_back({{"file", r.file.string()}, {"reason", r.reason}});
  for (const auto& m : reg.missing_dependencies()) missing.push_back(json::string(m));
  o["plugins"] = plugins;
  o["refusals"] = refusals;
  o["missing_dependencies"] = missing;
  bool why_failed = false;
  if (!why.empty()) {
    ProbeQuery q;
    fs::path p(why);
    json::array answers;
    bool has_weights = false;
    std::error_code ec;
    if (fs::is_directory(p, ec))
      for (fs::directory_iterator it(p, ec), end; !ec && it != end && !has_weights; it.increment(ec))
        has_weights = it->path().extension() == ".safetensors";
    if (has_weights) {
      Checkpoint ck = Checkpoint::open(p);
      LoadOptions lo;
      lo.collect_errors = true;
      LoadedModel model = load_model(ck, reg, lo);
      std::vector<const LayerReport*> reps;
      for (const auto& l : model.layers) reps.push_back(&l->report);
      for (const auto& f : model.failed) reps.push_back(&f);
      std::sort(reps.begin(), reps.end(), [](auto* a, auto* b) { return a->layer < b->layer; });
      for (const LayerReport* r : reps) {
        for (const auto& pr : r->probes)
          answers.push_back({{"layer", r->prefix}, {"plugin", pr.plugin ? pr.plugin->name : "?"}, {"score", pr.score},
                             {"reason", pr.reason}, {"chosen", pr.plugin && pr.plugin->name == r->plugin}});
        // A layer no plugin takes (or that fails before any probe) is a failure of --why: its
        // problems are the answer.
        if (r->plugin.empty()) {
          why_failed = true;
          if (r->probes.empty())
            for (const std::string& problem : r->problems)
              answers.push_back({{"layer", r->prefix}, {"plugin", "(none)"}, {"score", 0}, {"reason", problem},
                                 {"chosen", false}});
        }
      }
    } else {
      fs::path cfg = fs::is_directory(p) ? p / "config.json" : p;
      fs::path hf = cfg.parent_path() / "hf_quant_config.json";
      const json::value v = read_json_file(cfg);
      if (fs::exists(hf)) {
        q.quant_config_json = json::serialize(read_json_file(hf));
        q.quant_config_source = "hf_quant_config.json";
      } else {
        const json::value* qc = v.is_object() ? v.as_object().if_contains("quantization_config") : nullptr;
        q.quant_config_json = qc ? json::serialize(*qc) : "null";
        q.quant_config_source = qc ? "config.json" : "none";
      }
      q.layer_name = "model.layers.0.mlp.experts";
      // No tensors to read: the expert weights' dtype is what the config implies.
      q.weight_dtype = dtype_implied_by_config(q.quant_config_json, v);
      o["weight_dtype_assumed"] = q.weight_dtype;
      for (const auto& pr : reg.probe_all(q))
        answers.push_back({{"layer", q.layer_name}, {"plugin", pr.plugin ? pr.plugin->name : "?"}, {"score", pr.score},
                           {"reason", pr.reason}, {"chosen", false}});
    }
    o["why"] = answers;
  }
  // Nothing loaded is a failure: every checkpoint would then fail to load; so is a checkpoint
  // layer that no plugin takes.
  const int status = reg.plugins().empty() || why_failed ? 1 : 0;
  if (opt.json) {
    print_json(o);
    return status;
  }
  std::cout << "plugins:\n";
  for (const auto& p : reg.plugins()) {
    std::cout << "  " << p->name << " " << p->version << "  (" << p->file.string() << ")\n";
    for (size_t i = 0; i < p->descriptor->num_schemes; ++i) std::cout << "      " << p->descriptor->schemes[i] << "\n";
  }
  if (reg.plugins().empty()) std::cout << "  (none loaded)\n";
  for (const auto& r : reg.refusals()) std::cout << "refused " << r.file.string() << ": " << r.reason << "\n";
  for (const auto& m : reg.missing_dependencies()) std::cout << "missing dependency: " << m << "\n";
  if (o.contains("why")) {
    std::cout << "probe answers for " << why;
    if (o.contains("weight_dtype_assumed"))
      std::cout << " (no tensors read: expert weights taken to be " << o["weight_dtype_assumed"].as_string().c_str()
                << ", as the config implies)";
    std::cout << ":\n";
    for (const auto& a : o["why"].as_array()) {
      const auto& e = a.as_object();
      std::cout << "  " << e.at("layer").as_string().c_str() << "  " << e.at("plugin").as_string().c_str()
                << ": score " << e.at("score").as_int64() << (e.at("chosen").as_bool() ? " (chosen)" : "") << " — "
                << e.at("reason").as_string().c_str() << "\n";
    }
  }
  return status;
}

int cmd_inspect(const CommonOptions& opt, const std::string& dir) {
  Session s(opt);
  Checkpoint ck = Checkpoint::open(dir);
  LoadOptions lo = opt.load_options();
  lo.collect_errors = true;
  LoadedModel model = load_model(ck, s.registry(), lo);
  const std::vector<const LayerReport*> reps = layer_reports(model);
  const MoeConfig& c = model.config;
  // What the probes saw: with --online, the user's scheme, not the checkpoint's config.
  const QuantConfigSource quant = effective_quant_config(ck, opt.online);
  json::array unread;
  for (const auto& f : ck.unread_files()) unread.push_back(json::string(f.filename().string()));
  if (opt.json) {
    json::object o{{"checkpoint", dir}, {"model_type", c.model_type}, {"num_experts", c.num_experts},
                   {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size}, {"top_k", c.top_k},
                   {"renormalize", c.routing.renormalize}, {"renormalize_source", c.renormalize_source},
                   {"quant_config_source", quant.source}, {"unread_files", unread}};
    json::array fields;
    for (const RoutingField& f : c.resolved_routing.fields)
      fields.push_back({{"name", f.name}, {"value", f.value}, {"source", f.source}});
    o["routing"] = json::object{{"known", c.resolved_routing.family != nullptr},
                                {"family", c.resolved_routing.family ? c.resolved_routing.family->model_type : ""},
                                {"fields", fields},
                                {"summary", routing_summary(c.resolved_routing)},
                                {"run_refuses", routing_refusal(c)}};
    try {
      o["quant_config"] = json::parse(quant.json);
    } catch (const std::exception&) {
    }
    json::array layers;
    for (auto* r : reps) layers.push_back(layer_report_json(*r));
    o["layers"] = layers;
    json::array nm;
    for (const auto& n : model.not_moe) nm.push_back({{"tensor", n}, {"note", not_moe_note(n)}});
    o["not_moe"] = nm;
    o["loaded"] = model.failed.empty();
    o["clean"] = all_strict_clean(reps);
    print_json(o);
    return model.failed.empty() ? 0 : 1;
  }
  std::cout << "checkpoint " << dir << ": " << (c.model_type.empty() ? "(no model_type)" : c.model_type) << ", "
            << c.num_experts << " experts, top-" << c.top_k << ", H " << c.hidden_size << ", I " << c.intermediate_size
            << "; quantization config from " << quant.source << "\n";
  std::cout << "routing: top-" << c.top_k << (c.routing.renormalize ? ", renormalized" : ", not renormalized");
  if (c.resolved_routing.family == nullptr) {
    std::cout << "; " << c.resolved_routing.unknown_reason << " (moeq run never calls its layers ok)\n";
  } else {
    std::cout << " (" << c.resolved_routing.family->model_type << " row)\n";
    for (const RoutingField& f : c.resolved_routing.fields)
      std::cout << "    " << f.name << ": " << f.value << "  [" << f.source << "]\n";
    if (const std::string why = routing_refusal(c); !why.empty()) std::cout << "    moeq run refuses: " << why << "\n";
  }
  for (const auto& f : ck.unread_files())
    std::cout << "not read: " << f.filename().string() << " (a .safetensors file "
              << (fs::exists(ck.dir() / "model.safetensors.index.json") ? "the index does not name"
                                                                         : "beside model.safetensors")
              << ")\n";
  for (auto* r : reps) print_report(*r, true);
  std::cout << "not MoE (reported, not loaded by moeq): " << model.not_moe.size() << " tensors\n";
  for (const auto& n : model.not_moe) {
    const std::string note = not_moe_note(n);
    std::cout << "    " << n << (note.empty() ? "" : "  — " + note) << "\n";
  }
  return model.failed.empty() ? 0 : 1;
}

int cmd_load(const CommonOptions& opt, const std::string& dir) {
  Session s(opt);
  Checkpoint ck = Checkpoint::open(dir);
  LoadOptions lo = opt.load_options();
  lo.collect_errors = true;
  LoadedModel model = load_model(ck, s.registry(), lo);
  const std::vector<const LayerReport*> reps = layer_reports(model);
  if (opt.json) {
    print_json(load_report_json(dir, model));
    return model.failed.empty() ? 0 : 1;
  }
  std::printf("%-40s %-20s %9s %8s %9s %8s %7s  %s\n", "layer", "plugin", "consumed", "skipped", "not-local",
              "unknown", "errors", "verdict");
  for (auto* r : reps) {
    std::printf("%-40s %-20s %9ld %8ld %9ld %8ld %7ld  %s\n", r->prefix.c_str(), r->plugin.c_str(),
                long(r->count(LedgerEntry::State::kConsumed)), long(r->count(LedgerEntry::State::kSkipped)),
                long(r->count(LedgerEntry::State::kNotLocal)), long(r->count(LedgerEntry::State::kUnknown)),
                long(r->count(LedgerEntry::State::kError)), verdict(*r).c_str());
    for (const auto& p : r->problems) std::printf("    problem: %s\n", p.c_str());
    for (const auto& w : r->waived) std::printf("    waived (--no-strict): %s\n", w.c_str());
  }
  int64_t total = 0, handed = 0, copied = 0;
  for (auto* r : reps) {
    total += r->expert_bytes;
    handed += r->expert_bytes_handed;
    copied += r->bytes_copied;
  }
  if (total > 0)
    std::printf("expert bytes: %.1f MiB in the checkpoint; handed to the plugin (this rank's experts, all it may "
                "read) %.1f MiB (%.0f %%); copied into parameters from host memory %.1f MiB (%.0f %%)\n",
                total / 1048576.0, handed / 1048576.0, 100.0 * handed / total, copied / 1048576.0, 100.0 * copied / total);
  return model.failed.empty() ? 0 : 1;
}

namespace {

// The dtype a layer's method computes with: the online scheme's when one quantizes at load.
std::string computed_dtype(const LayerReport& r, const std::string& online) {
  if (online.empty()) return r.weight_dtype;
  return online == "int8" ? "I8" : "F8_E4M3";
}

struct GoldenRow {
  std::string layer, plugin, verdict;
  int64_t tokens = 0;
  double err = 0, bound = 0, weight_err = -1, weight_bound = 0;
  std::string worst_weight;  // "expert 3 w1"
  int64_t routing_mismatches = -1;  // tokens whose expert set differs from the golden's; -1: not in the file
  bool ok = false;
};

// One layer held to a framework's forward: the golden hidden states routed with moeq's routing
// and applied, against the golden output; the golden's routing; the dequantized weights against
// the golden's original weights.
GoldenRow golden_layer(const LoadedModel& model, size_t li, const GoldenFile& g, const CommonOptions& opt) {
  const LoadedLayer& l = *model.layers.at(li);
  GoldenRow row;
  row.layer = l.report.prefix;
  row.plugin = l.report.plugin;
  const int64_t L = l.report.layer, H = model.config.hidden_size, k = model.config.top_k;
  const std::string dtype = computed_dtype(l.report, opt.online);
  row.bound = golden_tolerance(dtype, opt.device != "cpu");
  row.weight_bound = golden_tolerance(dtype, false);
  if (const std::string why = routing_refusal(model.config); !why.empty()) {
    row.verdict = "FAIL: " + why;
    return row;
  }
  if (!g.has(L, "input") || !g.has(L, "output")) {
    row.verdict = "FAIL: " + g.path().string() + " holds no layers." + std::to_string(L) + ".input/output";
    return row;
  }
  const int64_t T = g.tokens(L);
  row.tokens = T;
  const std::vector<float> x = g.floats(L, "input", {T, H});
  const std::vector<float> want = g.floats(L, "output", {T, H});
  const ref::Routing routing = route_layer(model, li, x, T);
  if (g.has(L, "topk_ids")) {
    const std::vector<int32_t> ids = g.ints(L, "topk_ids", {T, k});
    row.routing_mismatches = 0;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> a(routing.ids.begin() + t * k, routing.ids.begin() + (t + 1) * k);
      std::vector<int32_t> b(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      row.routing_mismatches += a != b ? 1 : 0;
    }
  }
  const std::vector<float> out = apply_routed(model, li, x, T, routing);
  row.err = ref::relative_l2(out, want);
  bool has_weights = true;
  for (const char* p : {"w1", "w3", "w2"})
    has_weights = has_weights && g.has(L, "experts." + std::to_string(l.geometry.first_local_expert) + "." + p);
  if (has_weights) {
    const ref::ExpertWeights orig = golden_original_weights(g, model, li);
    const ref::ExpertWeights mine = model.dequantized(li, nullptr);
    const int64_t n1 = orig.intermediate * orig.hidden;
    row.weight_err = 0;
    for (int64_t e = 0; e < orig.num_experts; ++e)
      for (int p = 0; p < 3; ++p) {
        const float* a = (p < 2 ? mine.w13.data() + e * 2 * n1 + p * n1 : mine.w2.data() + e * n1);
        const float* b = (p < 2 ? orig.w13.data() + e * 2 * n1 + p * n1 : orig.w2.data() + e * n1);
        const double err = ref::relative_l2(std::span<const float>(a, n1), std::span<const float>(b, n1));
        if (err > row.weight_err || !std::isfinite(err)) {
          row.weight_err = err;
          row.worst_weight = "expert " + std::to_string(orig.first_expert + e) + " " + (p == 0 ? "w1" : p == 1 ? "w3" : "w2");
        }
      }
  }
  if (row.routing_mismatches > 0)
    row.verdict = "FAIL: " + std::to_string(row.routing_mismatches) + " of " + std::to_string(T) +
                  " tokens routed to other experts than the golden's" +
                  (l.router_scale != nullptr ? " (this checkpoint's router is F8_E4M3: its producer quantized it)" : "");
  else if (!(row.err <= row.bound))
    row.verdict = "FAIL: rel L2 vs golden above " + fmt_sci(row.bound);
  else if (row.weight_err >= 0 && !(row.weight_err <= row.weight_bound))
    row.verdict = "FAIL: dequantized " + row.worst_weight + " is " + fmt_sci(row.weight_err) +
                  " from the original weights (bound " + fmt_sci(row.weight_bound) + ")";
  else
    row.verdict = "ok";
  row.ok = row.verdict == "ok";
  return row;
}

int cmd_run_golden(const CommonOptions& opt, const std::string& dir, const std::string& golden) {
  if (opt.tp != 1 || opt.ep != 1)
    fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "moeq run --golden compares the whole layer's output: use --tp 1 --ep 1");
  Session s(opt);
  Checkpoint ck = Checkpoint::open(dir);
  const GoldenFile g = GoldenFile::open(golden);
  LoadedModel model = load_model(ck, s.registry(), opt.load_options());
  bool ok = true;
  json::array rows;
  if (!opt.json)
    std::printf("%-32s %-20s %6s %13s %9s %9s %13s  %s\n", "layer", "plugin", "tokens", "rel L2 golden", "bound",
                "routing", "weights", "verdict");
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const GoldenRow r = golden_layer(model, i, g, opt);
    ok = ok && r.ok;
    const std::string routing = r.routing_mismatches < 0 ? "-" : r.routing_mismatches == 0 ? "same" : std::to_string(r.routing_mismatches) + " differ";
    if (opt.json)
      rows.push_back({{"layer", r.layer}, {"plugin", r.plugin}, {"tokens", r.tokens},
                      {"rel_l2_vs_golden", json_number(r.err)}, {"bound", r.bound},
                      {"routing_mismatched_tokens", r.routing_mismatches < 0 ? json::value(nullptr) : json::value(r.routing_mismatches)},
                      {"worst_weight_rel_l2", r.weight_err < 0 ? json::value(nullptr) : json_number(r.weight_err)},
                      {"worst_weight", r.worst_weight}, {"weight_bound", r.weight_bound}, {"ok", r.ok}, {"verdict", r.verdict}});
    else
      std::printf("%-32s %-20s %6ld %13.3e %9.0e %9s %13s  %s\n", r.layer.c_str(), r.plugin.c_str(), long(r.tokens), r.err,
                  r.bound, routing.c_str(), r.weight_err < 0 ? "-" : fmt_sci(r.weight_err).c_str(), r.verdict.c_str());
  }
  if (opt.json)
    print_json(json::object{{"checkpoint", dir}, {"golden", golden}, {"layers", rows}, {"within_tolerance", ok}});
  else
    std::printf("\nrel L2 golden: apply on the golden's hidden states, routed by moeq, against the framework's output from "
                "the original weights (bound: fp8 8e-2, int8 2e-2, unquantized 1e-5 on the CPU, 5e-3 on a device).\n"
                "routing: tokens whose experts differ from the golden's; weights: the worst expert projection's rel L2 "
                "of moeq's dequantized weights against the golden's originals.\n");
  return ok ? 0 : 1;
}

}  // namespace

int cmd_run(const CommonOptions& opt, const std::string& dir, int64_t tokens, uint64_t seed, const std::string& golden) {
  if (!golden.empty()) return cmd_run_golden(opt, dir, golden);
  Session s(opt);
  Checkpoint ck = Checkpoint::open(dir);
  LoadedModel model = load_model(ck, s.registry(), opt.load_options());
  // --online: the float column is against the original weights (the checkpoint loaded as it is,
  // on the CPU), held to the bound the online scheme declares.
  std::optional<LoadedModel> plain;
  if (!opt.online.empty()) {
    LoadOptions lo = opt.load_options();
    lo.online_scheme.clear();
    lo.device = {kDLCPU, 0};
    plain = load_model(ck, s.registry(), lo);
  }
  json::array rows;
  if (!opt.json)
    std::printf("%-40s %-20s %7s %14s %14s %10s  %s\n", "layer", "plugin", "tokens", "rel L2 vs ref",
                plain ? "rel L2 vs orig" : "rel L2 vs f32", "apply ms", "verdict");
  bool ok = true;
  size_t not_strict = 0;
  for (size_t i = 0; i < model.layers.size(); ++i) {
    std::optional<ref::ExpertWeights> original;
    if (plain) original = plain->dequantized(i, nullptr);
    RunResult r = run_layer(model, i, tokens, seed, nullptr, original ? &*original : nullptr);
    if (plain) {
      const std::optional<double> bound = declared_tolerance(model.layers[i]->report.describe_json);
      if (!bound) fail("moeq run --online " + opt.online + ": the method declares no rel_l2_tolerance");
      r.float_bound = *bound;
    }
    ok = ok && r.within_tolerance();
    const size_t waived = model.layers[i]->report.waived.size();
    not_strict += waived > 0 ? 1 : 0;
    if (opt.json)
      rows.push_back({{"layer", r.layer}, {"plugin", r.plugin}, {"tokens", r.tokens},
                      {"rel_l2_vs_quant_reference", json_number(r.err_quant_ref)},
                      {plain ? "rel_l2_vs_original" : "rel_l2_vs_float", json_number(r.err_float)},
                      {"bound_vs_original", r.float_bound ? json::value(*r.float_bound) : json::value(nullptr)},
                      {"apply_ms", r.apply_ms},
                      {"output_finite", r.out_finite}, {"reference_finite", r.ref_finite},
                      {"within_tolerance", r.within_tolerance()}, {"verdict", r.verdict()}, {"waived", waived}});
    else
      std::printf("%-40s %-20s %7ld %14.3e %14.3e %10.2f  %s%s\n", r.layer.c_str(), r.plugin.c_str(), long(r.tokens),
                  r.err_quant_ref, r.err_float, r.apply_ms, r.verdict().c_str(), waived ? " (not strict)" : "");
  }
  if (!opt.json && plain)
    std::printf("\nrel L2 vs orig: against the checkpoint's own (unquantized) weights, held to the bound the online "
                "scheme declares.\n");
  if (!opt.json && not_strict > 0)
    std::printf("\n%zu layer(s) loaded only because of --no-strict (the warnings above say what): their unwritten "
                "parameter elements stay as allocated (zero), and the reference reads the same parameters, so the "
                "figures above do not show it.\n",
                not_strict);
  if (opt.json) print_json(json::object{{"checkpoint", dir}, {"layers", rows}, {"within_tolerance", ok}});
  return ok ? 0 : 1;
}

int cmd_demo(const CommonOptions& opt, const std::string& keep_dir, int64_t tokens) {
  fs::path root;
  if (!keep_dir.empty()) {
    root = keep_dir;
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec || !fs::is_directory(root))
      fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
           "moeq demo --keep " + keep_dir + ": expected a directory to write into, found " +
               (fs::exists(root) ? "a file that is not a directory" : "none, and it cannot be created: " + ec.message()));
  } else {
    std::string tmpl = (fs::temp_directory_path() / "moeq-demo-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) fail("cannot create a temporary directory");
    root = tmpl;
  }
  // The temporary directory goes whatever happens below (a failed load throws).
  struct RemoveTemp {
    fs::path dir;
    ~RemoveTemp() {
      std::error_code ec;
      if (!dir.empty()) fs::remove_all(dir, ec);
    }
  } remove_temp{keep_dir.empty() ? root : fs::path()};
  Session s(opt);
  struct Row {
    std::string name;
    RunResult run;
    LayerReport report;
    size_t layers = 0;
    std::string online;   // the scheme, for a bf16 checkpoint quantized on load
    double bound = 0;     // its declared bound vs the original bf16 weights
  };
  std::vector<Row> rows;
  // The demo's geometry: 8 experts, H = 256, I = 128.
  auto demo_spec = [](writer::Layout layout, int layers) {
    writer::MoeSpec spec;
    spec.layout = layout;
    spec.num_layers = layers;
    spec.num_experts = 8;
    spec.hidden = 256;
    spec.intermediate = 128;
    return spec;
  };
  for (writer::Layout layout : {writer::Layout::kGraniteFused, writer::Layout::kPerExpert}) {
    const writer::MoeSpec spec = demo_spec(layout, 2);
    const fs::path dir = root / (layout == writer::Layout::kGraniteFused ? "granitemoe-fp8-dynamic" : "qwen3moe-fp8-dynamic");
    writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir, spec);
    Checkpoint ck = Checkpoint::open(dir);
    LoadedModel model = load_model(ck, s.registry(), opt.load_options());  // strict: throws if not clean
    for (size_t i = 0; i < model.layers.size(); ++i) {
      // The reference uses the writer's own dequantized masters, not the plugin's reading.
      Row r;
      r.name = writer::layout_name(layout);
      r.run = run_layer(model, i, tokens, 7, &w.layers.at(i).dequantized);
      r.report = model.layers[i]->report;
      r.layers = model.layers.size();
      rows.push_back(std::move(r));
    }
  }
  // A bf16 checkpoint quantized on load by each online scheme: the float column is then against
  // the original bf16 weights, held to the bound the scheme declares.
  {
    const fs::path dir = root / "qwen3moe-bf16";
    writer::WrittenCheckpoint w = writer::write_unquantized(dir, demo_spec(writer::Layout::kPerExpert, 1));
    Checkpoint ck = Checkpoint::open(dir);
    for (const char* scheme : {"int8", "fp8-tensor", "fp8-channel", "fp8-block"}) {
      LoadOptions lo = opt.load_options();
      lo.online_scheme = scheme;
      LoadedModel model = load_model(ck, s.registry(), lo);
      Row r;
      r.name = std::string("qwen3_moe bf16, --online ") + scheme;
      r.run = run_layer(model, 0, tokens, 7, nullptr, &w.layers.at(0).dequantized);
      r.report = model.layers[0]->report;
      r.layers = model.layers.size();
      r.online = scheme;
      const std::optional<double> bound = declared_tolerance(r.report.describe_json);
      if (!bound) fail("moeq demo: online_quant's " + std::string(scheme) + " method declares no rel_l2_tolerance");
      r.bound = *bound;
      rows.push_back(std::move(r));
    }
  }
  bool ok = true;
  json::array out;
  if (!opt.json) {
    if (keep_dir.empty())
      std::printf("moeq demo: checkpoints written under %s (removed at the end; --keep DIR keeps them)\n\n",
                  root.c_str());
    else
      std::printf("moeq demo: checkpoints written under %s\n\n", root.c_str());
    std::printf("%-36s %-30s %-20s %-12s %9s %12s %14s %9s\n", "layout", "layer", "plugin", "strict load", "tensors",
                "rel L2 (ref)", "rel L2 (float)", "verdict");
  }
  for (const Row& r : rows) {
    const bool pass =
        r.report.strict_clean() && r.run.within_tolerance() && (r.online.empty() || r.run.err_float <= r.bound);
    ok = ok && pass;
    const long consumed = long(r.report.count(LedgerEntry::State::kConsumed));
    if (opt.json)
      out.push_back({{"layout", r.name}, {"layer", r.run.layer}, {"plugin", r.run.plugin},
                     {"strict_load_clean", r.report.strict_clean()}, {"tensors_consumed", consumed},
                     {"tokens", r.run.tokens}, {"rel_l2_vs_quant_reference", json_number(r.run.err_quant_ref)},
                     {"rel_l2_vs_float", json_number(r.run.err_float)},
                     {"online", r.online.empty() ? json::value(nullptr) : json::value(r.online)},
                     {"bound_vs_original", r.online.empty() ? json::value(nullptr) : json::value(r.bound)},
                     {"pass", pass}});
    else
      std::printf("%-36s %-30s %-20s %-12s %9ld %12.2e %14.2e %9s\n", r.name.c_str(), r.run.layer.c_str(),
                  r.run.plugin.c_str(), r.report.strict_clean() ? "clean" : "NOT CLEAN", consumed, r.run.err_quant_ref,
                  r.run.err_float, pass ? "PASS" : "FAIL");
  }
  if (opt.json) {
    print_json(json::object{{"dir", root.string()}, {"kept", !keep_dir.empty()}, {"rows", out}, {"pass", ok}});
  } else {
    std::printf("\nrel L2 (ref): vs the float reference that quantizes activations per token as the scheme does "
                "(must be <= 1e-2).\nrel L2 (float): vs plain float math on the dequantized weights (the scheme's own "
                "quantization error, for information); on the --online rows, vs the original bf16 weights, held to "
                "the bound each scheme declares (int8 2e-2, fp8 8e-2).\n");
  }
  return ok ? 0 : 1;
}

}  // namespace moeq::cli
