#pragma once
#include "session.hpp"
#include <moeq/load_report.hpp>

#include <moeq/reference.hpp>

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::cli {

// One MoE layer routed and run on random tokens, compared with the float reference.
struct RunResult {
  std::string layer;
  std::string plugin;
  int64_t tokens = 0;
  double err_quant_ref = 0;  // vs the reference that quantizes activations as the scheme does
  double err_float = 0;      // vs plain float math on the dequantized (or the original) weights
  double apply_ms = 0;
  bool out_finite = true;  // every element of apply's output is finite
  bool ref_finite = true;  // and of the float reference it is compared with
  // Why the layer can never be called ok (routing semantics unknown for its model_type, experts
  // moeq does not compute), or empty.
  std::string refusal;
  // With --online: err_float is against the original weights and must stay within this bound.
  std::optional<double> float_bound;
  bool within_tolerance() const {
    return refusal.empty() && out_finite && ref_finite && err_quant_ref <= kRunTolerance &&
           (!float_bound || err_float <= *float_bound);
  }
  // "ok", or "FAIL: " and why.
  std::string verdict() const;
  static constexpr double kRunTolerance = 1e-2;  // rel L2 of apply vs its quantizing reference
};

// Why `moeq run` never calls a layer of this config ok, or empty.
std::string routing_refusal(const MoeConfig& config);

// A JSON number, or null for NaN and infinities (which JSON cannot hold).
boost::json::value json_number(double v);
std::string fmt_sci(double v);  // "8.0e-02"

// `weights` overrides the plugin's own dequantized weights (the demo passes the writer's);
// `original`, when given, is what err_float compares with instead (the bf16 weights an online
// scheme quantized).
RunResult run_layer(const LoadedModel& model, size_t layer, int64_t tokens, uint64_t seed,
                    const ref::ExpertWeights* weights = nullptr, const ref::ExpertWeights* original = nullptr);

// The bound a method declares on apply vs its float reference ("rel_l2_tolerance" in its
// describe JSON), or nullopt when it declares none or the JSON is not an object.
std::optional<double> declared_tolerance(const std::string& describe_json);

// "strict load clean", "FAILED", or "loaded, not strict (N waived)" when --no-strict let
// violations through.
std::string verdict(const LayerReport& r);
void print_report(const LayerReport& r, bool verbose);
std::string fmt_shape(const std::vector<int64_t>& s);

int cmd_plugins(const CommonOptions& opt, const std::string& why);
// `moeq plugins --pin`: writes the SHA-256 allow-list of the plugins that load.
int cmd_pin_plugins(const CommonOptions& opt);
int cmd_inspect(const CommonOptions& opt, const std::string& dir);
int cmd_load(const CommonOptions& opt, const std::string& dir);
// `golden`: a golden file (moeq::GoldenFile) to hold every layer to instead of random tokens.
int cmd_run(const CommonOptions& opt, const std::string& dir, int64_t tokens, uint64_t seed,
            const std::string& golden = "");
int cmd_demo(const CommonOptions& opt, const std::string& keep_dir, int64_t tokens);

}  // namespace moeq::cli
