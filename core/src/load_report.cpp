// A load's report as JSON (load_report.hpp).
#include <moeq/load_report.hpp>

#include <algorithm>

namespace moeq {
namespace json = boost::json;

json::object layer_report_json(const LayerReport& r) {
  json::object o;
  o["layer"] = r.prefix;
  o["index"] = r.layer;
  o["family"] = r.family;
  o["experts_module"] = r.experts_module;
  o["weight_dtype"] = r.weight_dtype;
  o["plugin"] = r.plugin;
  o["plugin_why"] = r.plugin_why;
  json::array probes;
  for (const auto& p : r.probes)
    probes.push_back({{"plugin", p.plugin ? p.plugin->name : "?"}, {"score", p.score}, {"reason", p.reason}});
  o["probes"] = probes;
  json::array tensors;
  for (const auto& e : r.entries) {
    json::array shape;
    for (int64_t s : e.shape) shape.push_back(s);
    tensors.push_back({{"tensor", e.tensor}, {"state", ledger_state_name(e.state)}, {"routed_to", e.routed_to},
                       {"detail", e.detail}, {"dtype", e.dtype}, {"shape", shape}});
  }
  o["tensors"] = tensors;
  json::array params;
  for (const auto& c : r.params)
    params.push_back({{"name", c.name}, {"dtype", c.dtype}, {"numel", c.numel}, {"written", c.written},
                      {"defaulted", c.defaulted}, {"first_gap", c.first_gap}});
  o["params"] = params;
  try {
    o["method"] = json::parse(r.describe_json);
  } catch (const std::exception&) {
    o["method"] = r.describe_json;
  }
  json::array problems;
  for (const auto& p : r.problems) problems.push_back(json::string(p));
  o["problems"] = problems;
  json::array waived;
  for (const auto& w : r.waived) waived.push_back(json::string(w));
  o["waived"] = waived;
  o["loaded"] = r.ok();
  o["strict_clean"] = r.strict_clean();
  o["consumed"] = r.count(LedgerEntry::State::kConsumed);
  o["skipped"] = r.count(LedgerEntry::State::kSkipped);
  o["not_local"] = r.count(LedgerEntry::State::kNotLocal);
  o["unknown"] = r.count(LedgerEntry::State::kUnknown);
  o["errors"] = r.count(LedgerEntry::State::kError);
  o["expert_bytes"] = r.expert_bytes;
  o["expert_bytes_handed"] = r.expert_bytes_handed;
  o["bytes_copied"] = r.bytes_copied;
  return o;
}

std::vector<const LayerReport*> layer_reports(const LoadedModel& model) {
  std::vector<const LayerReport*> reps;
  for (const auto& l : model.layers) reps.push_back(&l->report);
  for (const auto& f : model.failed) reps.push_back(&f);
  std::stable_sort(reps.begin(), reps.end(), [](auto* a, auto* b) { return a->layer < b->layer; });
  return reps;
}

bool all_strict_clean(const std::vector<const LayerReport*>& reps) {
  return std::all_of(reps.begin(), reps.end(), [](const LayerReport* r) { return r->strict_clean(); });
}

json::object load_report_json(const std::string& checkpoint, const LoadedModel& model) {
  const std::vector<const LayerReport*> reps = layer_reports(model);
  json::array layers;
  for (const LayerReport* r : reps) layers.push_back(layer_report_json(*r));
  int64_t total = 0, handed = 0, copied = 0;
  for (const LayerReport* r : reps) {
    total += r->expert_bytes;
    handed += r->expert_bytes_handed;
    copied += r->bytes_copied;
  }
  return json::object{{"checkpoint", checkpoint},
                      {"layers", layers},
                      {"loaded", model.failed.empty()},
                      {"clean", all_strict_clean(reps)},
                      {"expert_bytes", total},
                      {"expert_bytes_handed", handed},
                      {"bytes_copied", copied}};
}

}  // namespace moeq
