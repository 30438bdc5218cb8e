// A load's report as JSON: what `moeq load --json` prints and the C API's
// moeq_model_report_json returns (per layer: plugin and why, probes, every tensor's ledger entry,
// parameter coverage, the method's describe(), problems, waived, ledger counts).
#pragma once
#include <moeq/loader.hpp>

#include <boost/json.hpp>

#include <string>
#include <vector>

namespace moeq {

// One layer's report as a JSON object.
boost::json::object layer_report_json(const LayerReport& report);

// Every layer of the model, loaded and failed (LoadOptions::collect_errors), in layer order.
std::vector<const LayerReport*> layer_reports(const LoadedModel& model);

// True when every report loaded with nothing waived.
bool all_strict_clean(const std::vector<const LayerReport*>& reports);

// {"checkpoint": checkpoint, "layers": [...], "loaded": no layer failed, "clean": all strict clean}.
boost::json::object load_report_json(const std::string& checkpoint, const LoadedModel& model);

}  // namespace moeq
