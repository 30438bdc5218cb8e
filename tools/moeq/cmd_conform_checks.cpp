// The ten checks of `moeq conform`, in the order they run (docs/PLUGIN_GUIDE.md §10).
#include "cmd_conform_check_kit.hpp"

namespace moeq::cli::conform {

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kPass: return "pass";
    case Verdict::kFail: return "fail";
    case Verdict::kNotApplicable: return "n/a";
  }
  return "?";
}

const std::vector<CheckDef>& all_checks() {
  static const std::vector<CheckDef> checks = {
      {1, "entry symbol", "exports exactly the entry symbol; descriptor pure, stable and well-formed", &check_entry},
      {2, "abi negotiation", "versions accepted; newer major / minor refused with reasons; larger structs and NULL optional slots tolerated", &check_abi},
      {3, "probe", "pure (no host calls, no CUDA), deterministic, declines with reasons, reason buffer respected", &check_probe},
      {4, "create_weights", "declared shapes and dtypes follow the geometry under TP and EP", &check_create_weights},
      {5, "weight_loader", "every tensor consumed or skipped with a reason, every element written, order-independent, idempotent", &check_weight_loader},
      {6, "error paths", "bad shapes, dtypes, names and arguments give statuses, never exceptions or aborts", &check_errors},
      {7, "accuracy", "CPU apply vs the core float reference (own dequantization and the writer's masters)", &check_accuracy},
      {8, "apply", "apply calls no host service and is reentrant across methods; apply_info (1.2) pure and well-formed", &check_apply},
      {9, "concurrency", "probes and method loads from several threads agree with serial runs", &check_concurrency},
      {10, "no leaks", "every status and method made is destroyed", &check_leaks},
  };
  return checks;
}

}  // namespace moeq::cli::conform
